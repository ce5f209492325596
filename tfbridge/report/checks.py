"""The hand-off checks a finished run reports, measured on the user's own table.

- ONNX vs SavedModel: raw rows of the eval split (the feature stage's split of the config's data) through both
  graphs, the largest difference per output.
- Spark vs onnxruntime: rows of the scores Spark wrote (each holds its input columns and its predictions)
  scored again here by onnxruntime, the largest difference per output, joined row by row.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.dataset as pads

from tfbridge.contracts import PipelineConfig

CHECK_ROWS = 2_000


@dataclasses.dataclass(frozen=True)
class HandOff:
    """One hand-off compared on `rows` rows: the largest |a - b| per output (labels: the share that differ)."""

    name: str
    rows: int
    max_abs_diff: dict[str, float]


def _largest_differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    out = {}
    for name, left in a.items():
        right = np.asarray(b[name])
        if np.asarray(left).dtype.kind in "OSU":
            out[name] = float(np.mean([str(x) != str(y) for x, y in zip(left, right)])) if len(left) else 0.0
        else:
            diff = np.abs(np.asarray(left, np.float64) - np.asarray(right, np.float64))
            out[name] = float(diff.max()) if diff.size else 0.0
    return out


def hand_offs(config: PipelineConfig) -> list[HandOff]:
    """Both checks, with the model read (and its files checked) once; none before an ONNX graph is exported."""
    from spark_infer import load_model

    if not config.layout.model_manifest_path.exists():
        return []
    model = load_model(config.layout.model_dir)
    if model.onnx_bytes is None:
        return []
    return [h for h in (onnx_vs_saved_model(config, model), spark_vs_onnxruntime(config, model)) if h]


def onnx_vs_saved_model(config: PipelineConfig, model) -> HandOff:
    """Eval rows (train rows when the run keeps no eval split) through model.onnx (onnxruntime) and the SavedModel
    (TensorFlow)."""
    import tensorflow as tf

    from tft_features.pipeline import split_rows

    rows = split_rows(config, "eval" if config.split.eval_fraction > 0 else "train", CHECK_ROWS)
    feeds = model.feeds(rows)
    onnx_out = model.predict(rows)
    serve = tf.saved_model.load(str(config.layout.saved_model_dir)).signatures["serving_default"]
    tf_out = serve(**{k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in feeds.items()})
    tf_out = {k: _decoded(v.numpy()) for k, v in tf_out.items()}
    return HandOff("ONNX vs SavedModel (eval rows)", rows.num_rows,
                   _largest_differences({k: _decoded(v) for k, v in onnx_out.items()}, tf_out))


def spark_vs_onnxruntime(config: PipelineConfig, model) -> HandOff | None:
    """The first scored rows again through onnxruntime here; None before scoring."""
    scores = config.layout.scores_dir
    if not scores.is_dir():
        return None
    table = pads.dataset(str(scores), format="parquet").head(CHECK_ROWS)
    ours = model.predict(table)
    if model.manifest.task == "regression":
        spark = {"prediction": table.column("prediction").to_numpy()}
    else:
        spark = {"label": np.asarray(table.column("prediction").to_pylist(), object),
                 "probabilities": np.stack(table.column("prediction_probabilities").to_pylist())}
    return HandOff("Spark vs onnxruntime (scored rows)", table.num_rows,
                   _largest_differences(spark, {k: _decoded(v) for k, v in ours.items() if k in spark}))


def _decoded(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "OS":
        return np.asarray([v.decode() if isinstance(v, bytes) else v for v in values.tolist()], object)
    return values
