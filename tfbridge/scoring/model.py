"""The exported model as every scorer loads and feeds it, whatever hosts it: Spark's Python workers
(`spark_infer`), the export stage's parity gate, the report's checks, a user's own process.

Imports neither Spark nor TensorFlow. Inputs follow the model manifest: each raw column (the user's
name) feeds the graph input the manifest maps it to; numbers as float32 (`model_numbers`, the feature
stage's rule: null, NaN and ±inf -> NaN; beyond float32's range a DataError), strings as Python str
(`model_text`, the feature stage's rule: null -> "", the same value; Unicode NFC; NUL an error);
onnxruntime would mangle `bytes`; dates and times as float64 epoch seconds (`model_timestamps`: dates at
midnight UTC, naive times as UTC, text by the column's datetime format). A missing number or timestamp
reaches the model only in columns whose feature steps impute it; anywhere else a batch with one stops with
MissingValues naming the column. A number outside what the column's steps take (RawColumn.above: box_cox > 0, log1p > -1)
stops with a DataError naming the column, as it stopped the feature stage.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tfbridge.contracts import DataError, ModelManifest, RawColumn, model_numbers, model_timestamps
from tfbridge.contracts.columns import model_text
from tfbridge.contracts.layout import MANIFEST
from tfbridge.storage import Location

_INTEGERS = ("tinyint", "smallint", "int", "bigint")
_NUMERIC = (*_INTEGERS, "float", "double", "boolean")
_TEMPORAL = ("date", "timestamp", "timestamp_ntz", "string")  # Spark's types a timestamp input takes


@dataclasses.dataclass(frozen=True)
class ScoringModel:
    """The exported model as the scorer uses it, read on the driver and checked against its manifest."""

    directory: Location  # the model directory: manifest.json and the attempts it names
    manifest: ModelManifest
    onnx_bytes: bytes | None  # None: no ONNX export, the SavedModel path is used

    @classmethod
    def load(cls, model_dir: "str | Path | Location") -> "ScoringModel":
        """Reads the manifest and the graph (from local disk or a store); DataError naming the file when one is
        missing, replaced or damaged."""
        directory = Location.of(model_dir)
        manifest_path = directory / MANIFEST
        manifest = ModelManifest.read(manifest_path)
        if manifest.onnx is None:
            manifest.saved_model_dir(directory)  # every file there, as the manifest records it
            return cls(directory, manifest, None)
        graph = directory / manifest.onnx.path
        try:
            onnx_bytes = graph.read_bytes()
        except FileNotFoundError as e:
            raise DataError(f"{graph} is missing, but {manifest_path} records an ONNX graph: copy the whole "
                            f"model directory, or export again") from e
        found = hashlib.sha256(onnx_bytes).hexdigest()
        if found != manifest.onnx.sha256:
            raise DataError(f"{graph} has sha256 {found}, not the {manifest.onnx.sha256} that "
                            f"{manifest_path} records: the file was replaced or damaged; export the model again")
        if not manifest.onnx.proven:
            raise DataError(f"{graph} was never checked against the SavedModel in its present state (the "
                            f"export's parity check proved another graph): run `tfbridge export` (or `tfbridge run`, "
                            f"which checks it again) before scoring with it")
        return cls(directory, manifest, onnx_bytes)

    @property
    def key(self) -> str:
        if self.onnx_bytes is not None:
            return self.manifest.onnx.sha256
        return f"{self.directory.hadoop_uri()}#{self.manifest.attempt}"  # a retrained model is another

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
        read them ("3", "true"); a number input takes any number or boolean; a timestamp input dates,
        timestamps (with or without a zone) and text.
        """
        found = {f.name: f.dataType.simpleString() for f in schema.fields}
        for name, column in self.manifest.inputs.items():
            if name not in found:
                raise DataError(f"{where}: column '{name}' is missing; the model takes {self.input_names}")
            if column.dtype == "string":
                ok, expected = found[name] in ("string", "boolean", *_INTEGERS), "strings, integers or booleans"
            elif column.dtype == "timestamp":
                ok, expected = found[name] in _TEMPORAL, "dates, timestamps or text"
            else:
                ok, expected = found[name] in _NUMERIC or found[name].startswith("decimal"), "a number"
            if not ok:
                raise DataError(f"{where}: column '{name}' has type {found[name]}; the model expects {expected}")

    def session(self, threads: int | None = None):
        """An onnxruntime session on this machine (outside Spark), its text ops checked."""
        from tfbridge.scoring.session import make_session

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
    """Nulls (or NaN, ±inf) in a column whose feature steps do not impute: the model cannot score those rows."""

    MARKER = "has missing values the model cannot score"

    def __init__(self, column: str, count: int, rows: int, where: str = "in one batch"):
        super().__init__(f"column '{column}' {self.MARKER}: {count:,} of {rows:,} rows {where} are null or NaN "
                         f"(±inf counts as missing), and its feature steps have no impute step. Fill or drop them "
                         f"before scoring, or make {{impute: ...}} the column's first step and train again")


def feeds(batch: pd.DataFrame, inputs: dict[str, RawColumn]) -> dict[str, np.ndarray]:
    """A pandas batch keyed by graph input name as the graph's feeds (see module doc).

    Strings as `_text_feed` reads them (a null string is "", as in the feature stage); numbers as
    `_number_feed` reads them; dates, times or text as `_timestamp_feed` reads them.
    """
    out = {}
    for name, raw in inputs.items():
        column = batch[name]
        if raw.dtype == "string":
            values = _text_feed(pa.array(column, type=pa.string(), from_pandas=True), raw)
        elif raw.dtype == "timestamp":
            values = _timestamp_feed(pa.array(column, from_pandas=True), raw)
        else:
            values = _number_feed(pd.to_numeric(column).to_numpy(dtype=np.float64, na_value=np.nan), raw)
        out[name] = values
    return out


def _text_feed(values, raw: RawColumn) -> np.ndarray:
    """A string column (Arrow) as the graph's feed: `model_text` (null is "", Unicode NFC, NUL a DataError), as
    Python str."""
    return model_text(values, raw.name, "in one batch").to_numpy(zero_copy_only=False)


def _number_feed(values: np.ndarray, raw: RawColumn) -> np.ndarray:
    """A number column (float64, NaN where null) as the graph's float32 feed, by the feature stage's rules:
    `model_numbers` (±inf is missing, beyond float32's range a DataError), MissingValues where the column's
    steps do not impute, and a DataError for a value its steps cannot take (RawColumn.above)."""
    fed = _imputable(model_numbers(values, raw.name, "in one batch"), raw)
    if raw.above is not None and (fed <= raw.above).any():  # NaN compares False
        i = int(np.nanargmin(fed))
        raise DataError(f"column '{raw.name}' has the value {float(values[i])!r} in one batch; its feature steps "
                        f"take only values > {raw.above:g} (as float32), as the feature stage required of the "
                        f"training data: fix or drop those rows")
    return fed


def _timestamp_feed(values, raw: RawColumn) -> np.ndarray:
    """Dates, times or text (Arrow) as the graph's float64 epoch seconds, by the feature stage's rule
    (`model_timestamps`), MissingValues where the column's steps do not impute."""
    return _imputable(model_timestamps(values, raw.name, "in one batch", raw.datetime_format), raw)


def _imputable(fed: np.ndarray, raw: RawColumn) -> np.ndarray:
    """`fed`, unless it has a missing value (NaN) where the column's steps do not impute: MissingValues."""
    missing = np.isnan(fed)
    if not raw.nullable and missing.any():
        raise MissingValues(raw.name, int(missing.sum()), len(fed))
    return fed


def arrow_feeds(arrays, inputs: dict[str, RawColumn]) -> dict[str, np.ndarray]:
    """Arrow arrays (by graph input name) as the graph's feeds, converted once per column with Arrow compute.

    Numbers (any width, decimals, booleans) go through float64 (Arrow's direct decimal cast rounds -3.5 to
    -3.5000002; integers above 2**53 round, as the feature stage rounds them) to `_number_feed`. Strings
    take integers and booleans as Spark prints them ("3", "true"), then `_text_feed` (a null string is "").
    Spark's dates and timestamps arrive as Arrow date32 and timestamp[us, tz] (timestamp[us] without a zone):
    `_timestamp_feed` reads them, and text, as epoch seconds.
    """
    out = {}
    for name, raw in inputs.items():
        array = arrays[name]
        if raw.dtype == "timestamp":
            out[name] = _timestamp_feed(array, raw)
            continue
        if raw.dtype == "string":
            if not pa.types.is_string(array.type) and not pa.types.is_large_string(array.type):
                array = pc.cast(array, pa.string())
            out[name] = _text_feed(array, raw)
            continue
        out[name] = _number_feed(pc.cast(array, pa.float64(), safe=False).to_numpy(zero_copy_only=False), raw)
    return out
