"""The trained model's commit, whatever fitted it (a network or trees): TFT's transform layer and the model behind
one raw-features SavedModel, its eval-split quality next to the linear baseline's, and the eval predictions, sent
to a new attempt under the output's model/ and committed by the model manifest, written last."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tf_train import baseline
from tf_train import data as training_data
from tf_train import metrics as quality
from tf_train import model as training_model
from tf_train.launcher import KEEP_ATTEMPTS_ENV
from tfbridge.contracts import ModelManifest, PipelineConfig, fingerprints, named_attempts, write_json_atomic
from tfbridge.contracts.layout import EVAL_PREDICTIONS, METRICS, SAVED_MODEL
from tfbridge.storage.attempts import commit

log = logging.getLogger(__name__)

PREDICTION_ROWS = 50_000  # eval rows kept with their predictions, for the report's plots


def commit_trained(config: PipelineConfig, data: training_data.TrainingData, model, chief: bool, fitting: dict,
                   history, eval_loss_of, versions: dict,
                   artifacts: dict[str, bytes] | None = None) -> tuple[dict, Path] | None:
    """The trained `model` (raw outputs from model inputs, a network or trees) behind TFT's transform layer as the
    raw-features SavedModel; on the chief also metrics.json and the eval predictions, sent to a new attempt under
    model/ and committed by the model manifest: (metrics, attempt), with `artifacts` (file name: bytes) beside
    them. Other workers save (the save runs collectives) and get None."""
    layout = config.layout
    module = training_model.RawFeaturesModel(str(data.manifest.transform_dir(layout.features_dir)), data.manifest,
                                             data.features, model, data.label)
    with tempfile.TemporaryDirectory(prefix="tfbridge-export-") as local:
        # TensorFlow writes no object store: the model is saved here, then sent to its attempt (chief only).
        local = Path(local)
        training_model.save_raw_features_model(module, str(local / SAVED_MODEL))
        if not chief:
            return None
        metrics = {"task": data.label.task, **evaluate(model, data, local / EVAL_PREDICTIONS),
                   "fitting": {**fitting, "eval_loss": eval_loss_of()}, "history": history()}
        write_json_atomic(metrics, local / METRICS)
        for name, content in (artifacts or {}).items():
            (local / name).write_bytes(content)
        attempt = commit(layout.model_dir, local, lambda sums, attempt: ModelManifest(
            inputs=data.manifest.model_inputs,
            input_names=training_model.graph_inputs(data.manifest),
            outputs=training_model.output_names(data.label),
            label=data.manifest.label,
            task=data.label.task,
            classes=data.label.classes,
            label_transform=data.label.transform,
            versions={**data.manifest.versions, **versions},
            checksums=sums,
            fingerprint=fingerprints.model_fingerprint(config, data.manifest.fingerprint),
            attempt=attempt,
        ).write(layout.model_manifest_path), named=lambda: named_attempts(layout.model_manifest_path),
                         keep=kept_attempts())
    return metrics, attempt


def kept_attempts() -> tuple[str, ...]:
    """The attempts under model/ this process's commit must not remove (KEEP_ATTEMPTS_ENV)."""
    return tuple(name for name in os.environ.get(KEEP_ATTEMPTS_ENV, "").split(",") if name)


def evaluate(model, data: training_data.TrainingData, predictions_path: Path) -> dict:
    """Quality on every row of the eval split in label units, the model's and the linear baseline's (empty when
    the split is), and up to PREDICTION_ROWS of those rows with both predictions written to `predictions_path`."""
    predictions_path.unlink(missing_ok=True)
    if not data.eval_files or not int(data.manifest.rows.get("eval", 0)):
        return {"eval": {}}
    label = data.label
    fitted = baseline.fit_baseline(data)
    outputs, baseline_outputs, labels = [], [], []
    for batch in training_data.eval_dataset(data):
        inputs, raw_label = batch
        out = training_model.predictions(model(inputs, training=False), label)
        outputs.append({k: v.numpy() for k, v in out.items()})
        baseline_outputs.append(baseline.baseline_outputs(fitted, baseline.design_matrix([batch], data)[0], data))
        labels.append(raw_label.numpy())
    y = np.concatenate(labels)
    ours = np.concatenate([o["prediction" if label.task == "regression" else "probabilities"] for o in outputs])
    theirs = np.concatenate([o["prediction" if label.task == "regression" else "probabilities"]
                             for o in baseline_outputs])
    if label.task == "regression":
        metrics = quality.regression_metrics(y, ours)
        baseline_metrics = quality.regression_metrics(y, theirs)
        rows = {"label": y.astype(np.float64), "prediction": ours.astype(np.float64),
                "baseline_prediction": theirs.astype(np.float64)}
    else:
        index = {c: i for i, c in enumerate(label.classes)}
        keys = [v.decode() for v in y] if label.dtype == "string" else [int(v) for v in y]
        y_index = np.array([index.get(k, -1) for k in keys])
        known = y_index >= 0
        if not known.all():
            log.warning("train: %d eval rows have a label unseen in training; left out of the metrics",
                        int((~known).sum()))
        y_index, ours, theirs = y_index[known], ours[known], theirs[known]
        metrics = quality.classification_metrics(y_index, ours)
        baseline_metrics = quality.classification_metrics(y_index, theirs)
        rows = {"label_index": y_index, "probabilities": list(ours.astype(np.float64)),
                "baseline_probabilities": list(theirs.astype(np.float64))}
    pq.write_table(pa.table(rows).slice(0, PREDICTION_ROWS), predictions_path)
    return {"eval": metrics, "baseline": {"model": type(fitted).__name__, **baseline_metrics}}
