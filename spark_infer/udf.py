"""Pandas UDFs that score raw columns with the exported model: one ONNX graph, or the SavedModel as fallback.

The driver reads the model once (manifest, ONNX bytes) and broadcasts the
bytes; each Python worker builds ONE onnxruntime session per model and keeps
it for its life (a module-level cache, as `predict_batch_udf` does), with
intra-op threads set to the cores a task owns and thread spinning off, so
concurrent tasks do not oversubscribe the host. No TensorFlow is imported on
the ONNX path.

Inputs follow the model manifest: numbers as float32 (null -> NaN), strings
as Python str (null -> ""); onnxruntime would mangle `bytes`. Missing values
reach the model only in columns whose feature steps impute them; anywhere
else a batch with one stops the job with MissingValues naming the column.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from tfbridge.contracts import DataError, ModelFiles, ModelManifest

_SESSIONS: dict[str, object] = {}  # per Python worker: model key -> session (or loaded SavedModel)
_NUMERIC = ("tinyint", "smallint", "int", "bigint", "float", "double")


@dataclasses.dataclass(frozen=True)
class ScoringModel:
    """The exported model as the scorer uses it, read on the driver."""

    directory: Path
    manifest: ModelManifest
    onnx_bytes: bytes | None  # None: no ONNX export, the SavedModel path is used

    @classmethod
    def load(cls, model_dir: str | Path) -> "ScoringModel":
        files = ModelFiles(Path(model_dir))
        manifest = ModelManifest.read(files.manifest)
        onnx_bytes = files.onnx.read_bytes() if manifest.onnx and files.onnx.exists() else None
        return cls(files.directory, manifest, onnx_bytes)

    @property
    def key(self) -> str:
        return self.manifest.onnx["sha256"] if self.onnx_bytes is not None else str(self.directory.resolve())

    @property
    def input_names(self) -> list[str]:
        return list(self.manifest.inputs)

    def check_schema(self, schema, where: str) -> None:
        """Every input column present with a type that converts without loss of meaning."""
        found = {f.name: f.dataType.simpleString() for f in schema.fields}
        for name, spec in self.manifest.inputs.items():
            if name not in found:
                raise DataError(f"{where}: column '{name}' is missing; the model takes {self.input_names}")
            expected = "string" if spec["dtype"] == "string" else "a number"
            ok = found[name] == "string" if spec["dtype"] == "string" else (
                found[name] in _NUMERIC or found[name].startswith("decimal"))
            if not ok:
                raise DataError(f"{where}: column '{name}' has type {found[name]}; the model expects {expected}")


class MissingValues(DataError):
    """Nulls (or NaN) in a column whose feature steps do not impute: the model cannot score those rows."""

    MARKER = "has missing values the model cannot score"

    def __init__(self, column: str, count: int, rows: int, where: str = "in one batch"):
        super().__init__(f"column '{column}' {self.MARKER}: {count:,} of {rows:,} rows {where} are null or NaN, "
                         f"and its feature steps have no impute step. Fill or drop them before scoring, or make "
                         f"{{impute: ...}} the column's first step and train again")


def feeds(batch: pd.DataFrame, inputs) -> dict[str, np.ndarray]:
    """A pandas batch as the model's inputs (see module doc); MissingValues for nulls the model cannot take."""
    out = {}
    for name, spec in inputs.items():
        column = batch[name]
        if spec["dtype"] == "string":
            missing = column.isna()
            values = column.to_numpy(dtype=object)
            if missing.any():
                values = np.where(missing.to_numpy(), "", values)
        else:
            values = pd.to_numeric(column).to_numpy(dtype=np.float32, na_value=np.nan)
            missing = np.isnan(values)
        if not spec["nullable"] and missing.any():
            raise MissingValues(name, int(missing.sum()), len(batch))
        out[name] = values
    return out


def onnx_session(key: str, model_bytes: bytes, threads: int, use_gpu: bool, extensions: bool):
    """This worker's session for the model: built on first use, then reused for every batch and task."""
    session = _SESSIONS.get(key)
    if session is None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if extensions:
            import onnxruntime_extensions

            options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
        providers = ["CPUExecutionProvider"]
        if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(model_bytes, options, providers=providers)
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


FAULT_ONCE_ENV = "TFBRIDGE_SCORE_FAULT_ONCE"


def _maybe_fail_once() -> None:
    """Fault injection for the retry test: with TFBRIDGE_SCORE_FAULT_ONCE=<path>, the first batch of the
    first worker to create <path> kills that Python worker (as a crash would), once."""
    marker = os.environ.get(FAULT_ONCE_ENV)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    os._exit(3)


def result_type(manifest: ModelManifest) -> str:
    if manifest.task == "regression":
        return "double"
    label = "string" if manifest.classes and isinstance(manifest.classes[0], str) else "bigint"
    return f"struct<label:{label},probabilities:array<double>>"


def predictor(model: ScoringModel, model_bytes, threads: int, use_gpu: bool):
    """The function a Spark pandas UDF runs: Iterator[pd.DataFrame] -> Iterator[pd.Series] (or of frames)."""
    inputs, task, key = dict(model.manifest.inputs), model.manifest.task, model.key
    outputs = list(model.manifest.outputs)
    extensions = bool(model.manifest.onnx and model.manifest.onnx.get("custom_ops_library"))
    saved_model = str(ModelFiles(model.directory).saved_model)

    def run(batch: pd.DataFrame) -> dict[str, np.ndarray]:
        data = feeds(batch, inputs)
        if model_bytes is not None:
            session = onnx_session(key, model_bytes.value, threads, use_gpu, extensions)
            return dict(zip(outputs, session.run(outputs, data)))
        import tensorflow as tf

        signature = saved_model_signature(key, saved_model)
        result = signature(**{k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in data.items()})
        return {k: v.numpy() for k, v in result.items()}

    def predict_value(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        for batch in batches:
            _maybe_fail_once()
            yield pd.Series(run(batch)["prediction"].astype(np.float64))

    def predict_class(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            _maybe_fail_once()
            out = run(batch)
            labels = [v.decode() if isinstance(v, bytes) else v for v in out["label"].tolist()]
            yield pd.DataFrame({"label": labels, "probabilities": list(out["probabilities"].astype(np.float64))})

    # Spark reads the UDF's form (iterator of frames in, series or frame out) off these type hints.
    return predict_value if task == "regression" else predict_class
