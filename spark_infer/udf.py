"""What Spark's Python workers run to score raw columns with the exported model: the ONNX graph over Arrow
(`mapInArrow` for `score`, an Arrow UDF for `scoring_udf`), or the SavedModel in a pandas UDF as fallback.

The driver reads the model once (manifest, ONNX bytes) and broadcasts the
bytes; each Python worker builds ONE onnxruntime session per model and keeps
it for its life (a module-level cache, as `predict_batch_udf` does), with
intra-op threads set to the cores a task owns and thread spinning off, so
concurrent tasks do not oversubscribe the host. No TensorFlow is imported on
the ONNX path.

Inputs follow the model manifest: each raw column (the user's name) feeds the
graph input the manifest maps it to; numbers as float32 (null -> NaN),
strings as Python str (null -> "", the same value); onnxruntime would mangle
`bytes`. A missing number reaches the model only in columns whose feature
steps impute it; anywhere else a batch with one stops the job with
MissingValues naming the column.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from spark_infer import testing
from tfbridge.contracts import DataError, ModelFiles, ModelManifest, RawColumn, file_sha256

_SESSIONS: dict[str, object] = {}  # per Python worker: model key -> session (or loaded SavedModel)
_INTEGERS = ("tinyint", "smallint", "int", "bigint")
_NUMERIC = (*_INTEGERS, "float", "double", "boolean")


@dataclasses.dataclass(frozen=True)
class ScoringModel:
    """The exported model as the scorer uses it, read on the driver and checked against its manifest."""

    directory: Path
    manifest: ModelManifest
    onnx_bytes: bytes | None  # None: no ONNX export, the SavedModel path is used

    @classmethod
    def load(cls, model_dir: str | Path) -> "ScoringModel":
        """Reads the manifest and the graph; DataError naming the file when one is missing, replaced or damaged."""
        files = ModelFiles(Path(model_dir))
        manifest = ModelManifest.read(files.manifest)
        if manifest.onnx is None:
            verify_files(files, manifest.checksums)
            return cls(files.directory, manifest, None)
        try:
            onnx_bytes = files.onnx.read_bytes()
        except FileNotFoundError as e:
            raise DataError(f"{files.onnx} is missing, but {files.manifest} records an ONNX graph: copy the whole "
                            f"model directory, or export again") from e
        found = hashlib.sha256(onnx_bytes).hexdigest()
        if found != manifest.onnx.sha256:
            raise DataError(f"{files.onnx} has sha256 {found}, not the {manifest.onnx.sha256} that "
                            f"{files.manifest} records: the file was replaced or damaged; export the model again")
        return cls(files.directory, manifest, onnx_bytes)

    @property
    def key(self) -> str:
        return self.manifest.onnx.sha256 if self.onnx_bytes is not None else str(self.directory.resolve())

    @property
    def input_names(self) -> list[str]:
        """The raw columns the model reads, by the user's names."""
        return list(self.manifest.inputs)

    @property
    def text_ops(self) -> bool:
        return bool(self.manifest.onnx and self.manifest.onnx.custom_ops_library)

    def check_schema(self, schema, where: str) -> None:
        """Every input column present with a type that converts without loss of meaning.

        A string input (a category or text) also takes integers and booleans, read as the feature stage
        read them ("3", "true"); a number input takes any number or boolean.
        """
        found = {f.name: f.dataType.simpleString() for f in schema.fields}
        for name, column in self.manifest.inputs.items():
            if name not in found:
                raise DataError(f"{where}: column '{name}' is missing; the model takes {self.input_names}")
            if column.dtype == "string":
                ok, expected = found[name] in ("string", "boolean", *_INTEGERS), "strings, integers or booleans"
            else:
                ok, expected = found[name] in _NUMERIC or found[name].startswith("decimal"), "a number"
            if not ok:
                raise DataError(f"{where}: column '{name}' has type {found[name]}; the model expects {expected}")

    def session(self, threads: int | None = None):
        """An onnxruntime session on this machine (outside Spark), its text ops checked."""
        from spark_infer.session import make_session

        if self.onnx_bytes is None:
            raise DataError(f"{self.directory} has no ONNX graph (model.onnx); score it with Spark, which runs "
                            f"the SavedModel")
        return make_session(self.onnx_bytes, threads, self.text_ops)

    def feeds(self, batch) -> dict[str, np.ndarray]:
        """A pandas DataFrame or pyarrow Table of raw rows (the user's column names) as the graph's inputs."""
        if not isinstance(batch, pd.DataFrame):
            batch = batch.to_pandas()
        frame = pd.DataFrame({self.manifest.input_names[name]: _as_model_type(batch[name], column.dtype)
                              for name, column in self.manifest.inputs.items()})
        return feeds(frame, graph_inputs(self.manifest))

    @functools.cached_property
    def _local_session(self):
        return self.session()

    def predict(self, batch) -> dict[str, np.ndarray]:
        """The graph's outputs (`prediction`, or `label` and `probabilities`) for a pandas/Arrow batch; one
        session per loaded model, built on the first call."""
        outputs = list(self.manifest.outputs)
        return dict(zip(outputs, self._local_session.run(outputs, self.feeds(batch))))


def verify_files(files: ModelFiles, checksums) -> None:
    """Every file the manifest lists under the model directory is there with its recorded sha256."""
    for relative, digest in checksums.items():
        path = files.directory / relative
        if not path.is_file():
            raise DataError(f"{path} is missing; {files.manifest} lists it: copy the whole model directory")
        if file_sha256(path) != digest:
            raise DataError(f"{path} does not match the sha256 that {files.manifest} records: the file was "
                            f"replaced or damaged; train or copy the model again")


def graph_inputs(manifest: ModelManifest) -> dict[str, RawColumn]:
    """The raw columns the model reads, by graph input name."""
    return {manifest.input_names[name]: column for name, column in manifest.inputs.items()}


def _as_model_type(column: pd.Series, dtype: str) -> pd.Series:
    """A pandas column as the model's type, as the feature stage and Spark convert it (ints "3", bools "true")."""
    if dtype != "string" or pd.api.types.is_string_dtype(column) and column.dtype != object:
        return column
    if pd.api.types.is_bool_dtype(column):
        return column.map({True: "true", False: "false"})
    if column.dtype != object:
        return column.astype("Int64").astype("string")
    return column.map(lambda value: _as_text(value, column.name))


def _as_text(value, column: str):
    """One value of a mixed (object) column as the text the feature stage read: "3", "true", or None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    if float(value) != int(value):
        raise DataError(f"column '{column}' holds {value!r}; a category takes strings, integers or booleans")
    return str(int(value))


class MissingValues(DataError):
    """Nulls (or NaN) in a column whose feature steps do not impute: the model cannot score those rows."""

    MARKER = "has missing values the model cannot score"

    def __init__(self, column: str, count: int, rows: int, where: str = "in one batch"):
        super().__init__(f"column '{column}' {self.MARKER}: {count:,} of {rows:,} rows {where} are null or NaN, "
                         f"and its feature steps have no impute step. Fill or drop them before scoring, or make "
                         f"{{impute: ...}} the column's first step and train again")


def feeds(batch: pd.DataFrame, inputs: dict[str, RawColumn]) -> dict[str, np.ndarray]:
    """A pandas batch keyed by graph input name as the graph's feeds (see module doc).

    A null string is "" (one meaning for both, as in the feature stage); a null or NaN number is NaN,
    and MissingValues where the column's steps do not impute it.
    """
    out = {}
    for name, raw in inputs.items():
        column = batch[name]
        if raw.dtype == "string":
            missing = column.isna()
            values = column.to_numpy(dtype=object)
            if missing.any():
                values = np.where(missing.to_numpy(), "", values)
        else:
            values = pd.to_numeric(column).to_numpy(dtype=np.float32, na_value=np.nan)
            missing = np.isnan(values)
            if not raw.nullable and missing.any():
                raise MissingValues(raw.name, int(missing.sum()), len(batch))
        out[name] = values
    return out


def onnx_session(key: str, model_bytes: bytes, threads: int, use_gpu: bool, text_ops: bool):
    """This worker's session for the model: built on first use, then reused for every batch and task."""
    session = _SESSIONS.get(key)
    if session is None:
        from spark_infer.session import make_session

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
    saved_model = str(ModelFiles(model.directory).saved_model)

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


def arrow_feeds(arrays, inputs: dict[str, RawColumn]) -> dict[str, np.ndarray]:
    """Arrow arrays (by graph input name) as the graph's feeds, converted once per column with Arrow compute.

    Numbers (any width, decimals, booleans) go through float64 to float32 (Arrow's direct decimal cast rounds
    -3.5 to -3.5000002); a null is NaN, and MissingValues where the column's steps do not impute it. Strings
    take integers and booleans as Spark prints them ("3", "true"); a null string is "".
    """
    out = {}
    for name, raw in inputs.items():
        array = arrays[name]
        if raw.dtype == "string":
            if not pa.types.is_string(array.type) and not pa.types.is_large_string(array.type):
                array = pc.cast(array, pa.string())
            out[name] = pc.fill_null(array, "").to_numpy(zero_copy_only=False)
            continue
        values = pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float32)
        if not raw.nullable:
            missing = int(np.isnan(values).sum())
            if missing:
                raise MissingValues(raw.name, missing, len(values))
        out[name] = values
    return out


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
