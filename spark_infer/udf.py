"""What Spark's Python workers run to score raw columns with the exported model: the ONNX graph over Arrow
(`mapInArrow` for `score`, an Arrow UDF for `scoring_udf`), or the SavedModel in a pandas UDF as fallback.

The driver reads the model once (manifest, ONNX bytes) and broadcasts the
bytes; each Python worker builds ONE onnxruntime session per model and keeps
it for its life (a module-level cache, as `predict_batch_udf` does), with
intra-op threads set to the cores a task owns and thread spinning off, so
concurrent tasks do not oversubscribe the host. No TensorFlow is imported on
the ONNX path.

The model is read, checked and fed by `tfbridge.scoring`, as every other scorer
reads, checks and feeds it.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from spark_infer import testing
from tfbridge.contracts import ModelManifest
from tfbridge.scoring import ScoringModel, arrow_feeds, feeds, graph_inputs

_SESSIONS: dict[str, object] = {}  # per Python worker: model key -> session (or loaded SavedModel)


def onnx_session(key: str, model_bytes: bytes, threads: int, use_gpu: bool, text_ops: bool):
    """This worker's session for the model: built on first use, then reused for every batch and task."""
    session = _SESSIONS.get(key)
    if session is None:
        from tfbridge.scoring.session import make_session

        session = make_session(model_bytes, threads, text_ops, use_gpu)
        _SESSIONS[key] = session
    return session


def saved_model_signature(key: str, path: str):
    """This worker's loaded SavedModel (the fallback: TensorFlow inside the UDF)."""
    signature = _SESSIONS.get(key)
    if signature is None:
        import tensorflow as tf

        signature = tf.saved_model.load(path).signatures["serving_default"]
        _SESSIONS[key] = signature
    return signature


def result_type(manifest: ModelManifest) -> str:
    if manifest.task == "regression":
        return "double"
    label = "string" if manifest.classes and isinstance(manifest.classes[0], str) else "bigint"
    return f"struct<label:{label},probabilities:array<double>>"


def predictor(model: ScoringModel):
    """The pandas UDF for a model without an ONNX graph: the SavedModel's signature, TensorFlow in the worker.
    Iterator[pd.DataFrame] -> Iterator[pd.Series] (or of frames)."""
    inputs, task, key = graph_inputs(model.manifest), model.manifest.task, model.key
    # A local copy (on the driver's disk): the SavedModel fallback scores where that disk is, e.g. local[*]; a
    # cluster scores the ONNX graph, which travels inside the UDF.
    saved_model = str(model.manifest.saved_model_dir(model.directory))

    def run(batch: pd.DataFrame) -> dict[str, np.ndarray]:
        import tensorflow as tf

        signature = saved_model_signature(key, saved_model)
        data = feeds(batch, inputs)
        result = signature(**{k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in data.items()})
        return {k: v.numpy() for k, v in result.items()}

    def predict_value(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        for batch in batches:
            testing.fail_once_if_asked()
            yield pd.Series(run(batch)["prediction"].astype(np.float64))

    def predict_class(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            testing.fail_once_if_asked()
            out = run(batch)
            labels = [v.decode() if isinstance(v, bytes) else v for v in out["label"].tolist()]
            yield pd.DataFrame({"label": labels, "probabilities": list(out["probabilities"].astype(np.float64))})

    # Spark reads the UDF's form (iterator of frames in, series or frame out) off these type hints.
    return predict_value if task == "regression" else predict_class


def _arrow_outputs(out: dict[str, np.ndarray], task: str) -> list:
    """The graph's outputs as Arrow arrays: the prediction (double), or the label and the class probabilities."""
    if task == "regression":
        return [pa.array(out["prediction"].astype(np.float64))]
    p = np.ascontiguousarray(out["probabilities"], dtype=np.float64)
    offsets = pa.array(np.arange(0, p.size + 1, max(p.shape[1], 1), dtype=np.int32))
    labels = out["label"]
    return [pa.array(labels.tolist() if labels.dtype == object else labels),
            pa.ListArray.from_arrays(offsets, pa.array(p.reshape(-1)))]


def _onnx_runner(model: ScoringModel, model_bytes, threads: int, use_gpu: bool):
    """feeds -> the graph's outputs, in this worker's cached session."""
    key, text_ops, outputs = model.key, model.text_ops, list(model.manifest.outputs)

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = onnx_session(key, model_bytes.value, threads, use_gpu, text_ops)
        return dict(zip(outputs, session.run(outputs, feeds)))

    return run


def arrow_predictor(model: ScoringModel, model_bytes, threads: int, use_gpu: bool, positions: dict[str, int],
                    added: list[str]):
    """The function `DataFrame.mapInArrow` runs: each RecordBatch of the input comes back whole, with the
    prediction columns (named `added`) appended. `positions`: each raw input column's index in the batch."""
    inputs, task = graph_inputs(model.manifest), model.manifest.task
    run = _onnx_runner(model, model_bytes, threads, use_gpu)

    def score_batches(batches):
        for batch in batches:
            testing.fail_once_if_asked()
            out = run(arrow_feeds({name: batch.column(positions[raw.name]) for name, raw in inputs.items()}, inputs))
            out = testing.skewed_if_asked(out)
            yield pa.RecordBatch.from_arrays([*batch.columns, *_arrow_outputs(out, task)],
                                             names=[*batch.schema.names, *added])

    return score_batches


def arrow_udf_predictor(model: ScoringModel, model_bytes, threads: int, use_gpu: bool):
    """The function an Arrow UDF runs over `model_inputs(model)`: batches of that struct in, the prediction
    (or a struct of label and probabilities) out."""
    inputs, task = graph_inputs(model.manifest), model.manifest.task
    run = _onnx_runner(model, model_bytes, threads, use_gpu)

    def score_arrays(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
        for struct in batches:
            testing.fail_once_if_asked()
            arrays = _arrow_outputs(run(arrow_feeds({name: struct.field(name) for name in inputs}, inputs)), task)
            yield arrays[0] if task == "regression" else pa.StructArray.from_arrays(
                arrays, names=["label", "probabilities"])

    return score_arrays


def output_fields(manifest: ModelManifest, output_col: str):
    """The Spark fields the predictions add: a double, or the label and an array of class probabilities."""
    from pyspark.sql import types as T

    if manifest.task == "regression":
        return [T.StructField(output_col, T.DoubleType())]
    label = T.StringType() if manifest.classes and isinstance(manifest.classes[0], str) else T.LongType()
    return [T.StructField(output_col, label), T.StructField(f"{output_col}_probabilities", T.ArrayType(T.DoubleType()))]
