"""Raw data in: checking it against the plan, then reading it as Arrow RecordBatches for TFT.

The check runs on the driver with pyarrow, before the Beam job and before any
output exists: Parquet footers give the schema of every file, then one
streaming scan of only the configured columns counts rows and missing values
and reads every number as the models will (`model_numbers`: ±inf is missing, a
value beyond float32's range stops the run), then against its steps' domain
(box_cox: > 0, log1p: > -1). Every error names the file, the column and what
was expected.

The Beam side reads Parquet a row group per element (a runner splits the work
by row group) and CSV with pyarrow per file, both through `tfbridge.storage`
(local disk or a store, the same clients on every runner), and turns each table into a RecordBatch
of list-typed columns, the form TFXIO's tensor adapters decode: a column read
as FixedLen [1], or VarLen when its first step imputes (a missing value is an
empty list). The TensorAdapterConfig comes from the same schema, so TFT sees
exactly the columns and types the check approved.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from typing import TYPE_CHECKING, Mapping

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.tfxio import tensor_adapter, tensor_representation_util

from tfbridge.contracts import CSV_NULL_VALUES, DataError, DataSource, RawColumn, model_numbers, model_timestamps
from tfbridge.contracts.columns import model_text, refuse_nul
from tfbridge.storage import Location, StorageError

if TYPE_CHECKING:
    from tft_features.steps import RawDomain

# A timestamp reaches TFT as int64 whole seconds (FeatureKind.TIMESTAMP); the signatures take float64 (RawColumn).
_ARROW_TYPES = {"float": pa.float32(), "int": pa.int64(), "string": pa.large_binary(), "timestamp": pa.int64()}
_TFMD_TYPES = {"float": schema_pb2.FLOAT, "int": schema_pb2.INT, "string": schema_pb2.BYTES,
               "timestamp": schema_pb2.INT}
_SPLIT_BUCKETS = 10_000
# Rows per element the read hands on. A Parquet row group (pyarrow writes up to 1M rows in one) or a CSV file is read
# whole, but a distributed runner serializes each element between its workers: on Flink, 250K-row elements of a
# wide table (30 MB each) ran its TaskManager out of heap. 16K rows keep an element at a few MB.
_BATCH_ROWS = 16_384
_DATE_HINT = "; a date or time column is read by calendar, cyclical or since (see README, \"Dates and times\")"
_READS = {"float": "numbers", "string": "strings, integers or booleans", "timestamp": "dates, times or text"}

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RawData:
    """The checked input: its files, the columns to read and the row count."""

    source: DataSource
    files: tuple[str, ...]
    columns: tuple[RawColumn, ...]
    rows: int

    def tfmd_schema(self) -> schema_pb2.Schema:
        schema = schema_pb2.Schema()
        for col in self.columns:
            feature = schema.feature.add(name=col.graph_name, type=_TFMD_TYPES[col.dtype])
            if not col.nullable:
                feature.shape.dim.add(size=1)
                feature.presence.min_fraction = 1.0
        return schema

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(c.graph_name, pa.large_list(_ARROW_TYPES[c.dtype])) for c in self.columns])

    def tensor_adapter_config(self) -> tensor_adapter.TensorAdapterConfig:
        representations = tensor_representation_util.InferTensorRepresentationsFromSchema(self.tfmd_schema())
        return tensor_adapter.TensorAdapterConfig(self.arrow_schema(), representations)


def kind_of(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_date(arrow_type) or pa.types.is_timestamp(arrow_type):
        return "timestamp"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float"
    if pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        return "int"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_dictionary(arrow_type):
        return "string"
    return None


def parquet_file(path: str) -> pq.ParquetFile:
    """A Parquet file on local disk or a store (`tfbridge.storage`), read a row group at a time."""
    return pq.ParquetFile(Location.of(path).open_input())


def _csv_input(path: str):
    return Location.of(path).open_input()


def unreadable(path: str, kind: str, error: Exception) -> Exception:
    """A file that could not be read: DataError when the data is at fault, StorageError when its file system is (a
    store that failed to answer mid-read: pyarrow's I/O errors on a remote file)."""
    if isinstance(error, StorageError):
        return error
    if isinstance(error, OSError) and not isinstance(error, pa.ArrowInvalid) and not Location.of(path).is_local:
        return StorageError(f"{path}: {error}")
    return DataError(f"cannot read {kind} file {path}: {error}")


def file_schema(source: DataSource, path: str) -> pa.Schema:
    try:
        if source.format == "parquet":
            return parquet_file(path).schema_arrow
        with pacsv.open_csv(_csv_input(path), parse_options=CSV_PARSE) as reader:
            return reader.schema
    except (OSError, pa.ArrowException) as e:
        raise unreadable(path, source.format.upper(), e) from e


def resolve_columns(source: DataSource, wanted: dict[str, tuple[str, bool]], label: str,
                    why: dict[str, str], datetime_formats: Mapping[str, str | None] | None = None,
                    ) -> tuple[tuple[str, ...], tuple[RawColumn, ...]]:
    """Matches the plan's columns against every file's schema.

    `wanted` maps column -> (read_as, nullable) with read_as "float", "string" or
    "timestamp"; `why` says which step needs each column, for the messages;
    `datetime_formats` how a timestamp column's text reads (config.datetime_formats).
    The label keeps its own type ("float", "int" or "string").
    """
    datetime_formats = datetime_formats or {}
    files = tuple(source.files())
    if not files:
        raise DataError(f"no {source.format} files match data.path '{source.path}'")
    columns: dict[str, RawColumn] = {}
    for path in files:
        schema = file_schema(source, path)
        for name in [*wanted, label]:
            if name not in schema.names:
                raise DataError(f"column '{name}' ({why.get(name, 'the label')}) is missing from {path}; "
                                f"it has {schema.names}")
            arrow_type = schema.field(name).type
            found = kind_of(arrow_type)
            if found is None or found == "timestamp" and name == label:
                what = "the label" if name == label else why[name]
                raise DataError(f"column '{name}' in {path} has type {arrow_type}; expected numbers, booleans or "
                                f"strings ({what})")
            if name == label:
                columns.setdefault(name, RawColumn(name, found, False))
                continue
            read_as, nullable = wanted[name]
            if read_as == "float" and found == "string" and source.format == "csv":
                read_csv(path, (RawColumn(name, "float", True),))  # raises, naming the row and the value
            if read_as == "string" and found == "float" and source.format == "parquet":
                # "3.0" or "3"? Spark and Arrow print floats differently: no category may depend on it.
                raise DataError(f"column '{name}' in {path} has type {arrow_type}; categories and text are read "
                                f"from strings, integers or booleans ({why[name]}): cast the column first")
            if not _reads(read_as, found, source.format == "csv"):
                raise DataError(f"column '{name}' in {path} has type {arrow_type}; expected {_READS[read_as]} "
                                f"({why[name]}){_DATE_HINT if found == 'timestamp' else ''}")
            columns[name] = RawColumn(name, read_as, nullable, datetime_format=datetime_formats.get(name))
    return files, tuple(columns[n] for n in [*wanted, label])


def _reads(read_as: str, found: str, csv: bool) -> bool:
    """Whether a column of `found` kind (kind_of) reads as `read_as`: numbers from numbers; text from anything but
    Parquet dates (a Parquet float is refused before); dates and times from dates, times or text (model_timestamps
    parses it). A CSV field reads as text or as a date whatever it looks like (20240131 with format %Y%m%d)."""
    return {"float": found in ("float", "int"), "string": csv or found != "timestamp",
            "timestamp": csv or found in ("timestamp", "string")}[read_as]


def _csv_types(columns: tuple[RawColumn, ...]) -> dict[str, pa.DataType]:
    """Numbers as float64 or int64; text and timestamps as text (model_timestamps parses it, as every scorer does)."""
    return {c.name: (pa.float64() if c.dtype == "float" else pa.int64() if c.dtype == "int" else pa.string())
            for c in columns}


# CSV as RFC 4180 writes it, as the scorer's Spark reader reads it (multiLine, escape '"'): a quoted field may
# hold the delimiter, doubled quotes and line breaks.
CSV_PARSE = pacsv.ParseOptions(newlines_in_values=True)


def read_csv(path: str, columns: tuple[RawColumn, ...]) -> pa.Table:
    """One CSV file with the planned types; a value that does not parse names its column and row."""
    try:
        return pacsv.read_csv(_csv_input(path), parse_options=CSV_PARSE, convert_options=pacsv.ConvertOptions(
            column_types=_csv_types(columns), include_columns=[c.name for c in columns],
            null_values=list(CSV_NULL_VALUES), strings_can_be_null=False))
    except pa.ArrowInvalid as e:
        message = str(e)
        match = re.search(r"CSV column #(\d+)", message)
        header = pacsv.open_csv(_csv_input(path), parse_options=CSV_PARSE).schema.names
        column = header[int(match.group(1))] if match else "?"
        raise DataError(f"{path}: column '{column}': {message.splitlines()[0]}; "
                        f"expected {'numbers' if column in _numeric_names(columns) else 'text'}") from e


def _numeric_names(columns) -> set[str]:
    return {c.name for c in columns if c.dtype in ("float", "int")}


def _missing_mask(array: pa.ChunkedArray | pa.Array) -> pa.Array:
    missing = pc.is_null(array, nan_is_null=True) if pa.types.is_floating(array.type) else pc.is_null(array)
    return missing.combine_chunks() if isinstance(missing, pa.ChunkedArray) else missing


def _as_float64(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Numbers of any Arrow type (integers, decimals, booleans, floats) as float64, NaN where null. Integers
    above 2**53 round, as Spark's and the CSV readers' doubles do: Arrow's safe cast would refuse them."""
    return pc.cast(values, pa.float64(), safe=False).to_numpy(zero_copy_only=False)


def check_data(source: DataSource, files: tuple[str, ...], columns: tuple[RawColumn, ...],
               domains: Mapping[str, RawDomain], why: dict[str, str]) -> int:
    """One streaming pass on the driver: row count, missing values, the numbers as the models read them
    (`model_numbers`), and each column's domain (`domains`, steps.RawDomain) on those float32 values."""
    names = [c.name for c in columns]
    # Missing is an error where nothing imputes it; a null string is "" (see to_list_batch), the label excepted.
    checked = {c.name for c in columns if not c.nullable and (c.dtype != "string" or c.name not in why)}
    missing = dict.fromkeys(names, 0)
    first_missing: dict[str, str] = {}
    rows = 0
    for path in files:
        for table in _tables(source, path, columns):
            rows += table.num_rows
            for col in columns:
                values = table.column(col.name)
                if col.dtype == "float":
                    numbers = model_numbers(_as_float64(values), col.name, f"in {path}")
                    count = int(np.isnan(numbers).sum())
                    if col.name in domains:
                        _check_domain(numbers, values, col.name, domains[col.name], path)
                elif col.dtype == "timestamp":
                    count = int(np.isnan(model_timestamps(values, col.name, f"in {path}", col.datetime_format)).sum())
                else:
                    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
                        refuse_nul(values, col.name, f"in {path}")
                    count = values.null_count
                if count and col.name in checked:
                    missing[col.name] += count
                    first_missing.setdefault(col.name, path)
    if rows == 0:
        raise DataError(f"data.path '{source.path}' has no rows")
    for name, count in missing.items():
        if count and name not in why:
            raise DataError(f"the label '{name}' has {count} missing values (null or NaN) out of {rows} rows "
                            f"(±inf counts as missing), first in {first_missing[name]}; a model cannot learn from "
                            f"them: drop those rows")
        if count:
            what = f"({why[name]})"
            raise DataError(
                f"column '{name}' {what} has {count} missing values (null or NaN) out of {rows} rows (±inf counts "
                f"as missing), first in {first_missing[name]}; add an impute step as its first transform, "
                f"e.g. {{impute: median}}, or clean the data")
    return rows


def _check_domain(numbers: np.ndarray, values: pa.ChunkedArray, name: str, domain: RawDomain, path: str) -> None:
    """Every present value (float32, as the steps get it) above domain.above; else the smallest one, as read."""
    if not (numbers <= domain.above).any():  # NaN (missing) compares False
        return
    i = int(np.nanargmin(numbers))
    read = values[i].as_py()
    shown = f"{read}" if float(numbers[i]) == read else f"{read} ({numbers[i]:g} in float32, as the model reads it)"
    raise DataError(f"column '{name}' in {path} has the value {shown}; {domain.needs}")


def _tables(source: DataSource, path: str, columns: tuple[RawColumn, ...]):
    names = [c.name for c in columns]
    if source.format == "csv":
        yield read_csv(path, columns)
        return
    try:
        parquet = parquet_file(path)
        for batch in parquet.iter_batches(columns=names, batch_size=65536):
            yield pa.Table.from_batches([batch])
    except (OSError, pa.ArrowException) as e:
        raise unreadable(path, "Parquet", e) from e


def inspect(source: DataSource, wanted: dict[str, tuple[str, bool]], label: str,
            domains: Mapping[str, RawDomain], why: dict[str, str],
            datetime_formats: Mapping[str, str | None] | None = None) -> RawData:
    """Schema match and data check; returns what the Beam job will read. A column's domain goes into its
    RawColumn (`above`), and so into the manifests, for the scorers to check their input the same way."""
    files, columns = resolve_columns(source, wanted, label, why, datetime_formats)
    columns = tuple(dataclasses.replace(c, above=domains[c.name].above) if c.name in domains else c for c in columns)
    rows = check_data(source, files, columns, domains, why)
    return RawData(source, files, columns, rows)


def to_list_batch(table: pa.Table, columns: tuple[RawColumn, ...], schema: pa.Schema) -> pa.RecordBatch:
    """A table of flat columns as the list-typed RecordBatch the tensor adapters decode."""
    arrays = []
    n = table.num_rows
    for col in columns:
        values = table.column(col.name).combine_chunks()
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        if col.dtype == "string":
            values = as_text(values, col.name)
        elif col.dtype == "float":
            # Through float64, as Spark converts them (Arrow's direct cast to float32 gives -3.5000002 for the
            # decimal -3.5, and refuses integers above 2**24), then as every engine reads them: ±inf missing.
            values = pa.array(model_numbers(_as_float64(values), col.name, "in the data"))
        elif col.dtype == "timestamp":  # whole epoch seconds (NaN: missing), to int64 below
            values = pa.array(model_timestamps(values, col.name, "in the data", col.datetime_format))
        if col.nullable:
            present = pc.invert(pc.equal(values, "") if col.dtype == "string" else _missing_mask(values))
            offsets = np.zeros(n + 1, np.int64)
            np.cumsum(present.to_numpy(zero_copy_only=False), out=offsets[1:])
            values = values.filter(present)
        else:
            offsets = np.arange(n + 1, dtype=np.int64)
        values = pc.cast(values, _ARROW_TYPES[col.dtype])
        arrays.append(pa.LargeListArray.from_arrays(pa.array(offsets), values))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def as_text(values: pa.Array, column: str) -> pa.Array:
    """A column read as text: integers and booleans printed as Spark prints them ("3", "true"), null as "",
    in Unicode NFC (`model_text`, as every scorer reads it).

    One meaning for an empty string everywhere: a null string and "" are the
    same value, missing where the column's first step imputes, else the empty
    text (no tokens) or the category "".
    """
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = pc.cast(values, pa.string())
    return model_text(values, column, "in the data")


class ReadProgress:
    """Rows read so far by this process's in-process runner, of the rows to read (the input is read twice,
    for the analysis and for the transform): what `tfbridge` shows as the stage's progress bar (a
    distributed runner reads elsewhere, and this stays at 0)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.rows, self.total = 0, None

    def start(self, total: int) -> None:
        with self._lock:
            self.rows, self.total = 0, total

    def add(self, rows: int) -> None:
        with self._lock:
            self.rows += rows

    def snapshot(self) -> tuple[int, int | None]:
        with self._lock:
            return self.rows, self.total


READ_PROGRESS = ReadProgress()


def read_tables(source: DataSource, files, columns: tuple[RawColumn, ...]):
    """The checked columns of each file as Arrow tables, in file order, as the Beam job reads them."""
    names = [c.name for c in columns]
    for path in files:
        if source.format == "parquet":
            for batch in parquet_file(path).iter_batches(columns=names):
                yield pa.Table.from_batches([batch])
        else:
            yield read_csv(path, columns)


def eval_rows(table: pa.Table, eval_fraction: float) -> np.ndarray:
    """Which rows go to the eval split: a hash of the row's raw values, so reruns and runners agree.

    The values are those of every column the run reads (the label, the features and the columns their steps
    use), hashed in the order of their names: the order a config lists its features in, or a reader returns
    its columns in, moves no row; a run that reads another set of columns splits the rows anew."""
    if eval_fraction <= 0:
        return np.zeros(table.num_rows, bool)
    by_name = table.select(sorted(table.column_names))
    hashes = pd.util.hash_pandas_object(by_name.to_pandas(), index=False).to_numpy()
    return (hashes % _SPLIT_BUCKETS) < round(eval_fraction * _SPLIT_BUCKETS)


class ReadRawData(beam.PTransform):
    """Raw rows as list-typed RecordBatches, split into tagged outputs 'train' and 'eval'.

    `for_analysis`: the second read of the same input, for TFT's analysis only: it makes the train split
    alone (eval rows are dropped unconverted). Rows are counted from the shards the transform commits, not
    here: a runner's counters may include the work of failed and retried bundles."""

    def __init__(self, raw: RawData, eval_fraction: float, for_analysis: bool = False):
        super().__init__()
        self._raw = raw
        self._eval_fraction = eval_fraction
        self._for_analysis = for_analysis

    def expand(self, pipeline):
        raw = self._raw
        names = [c.name for c in raw.columns]
        if raw.source.format == "parquet":
            # One table per row group: runners split the work by row group. Read through tfbridge.storage, not
            # Beam's file systems: the same clients and credentials as every other stage, on any runner.
            # The Reshuffle deals the row groups out to the runner's workers: a distributed runner runs a
            # Create as one bundle, and without it one worker read everything (seen on Flink).
            groups = [(path, group) for path in raw.files for group in range(parquet_file(path).num_row_groups)]
            tables = (pipeline
                      | "RowGroups" >> beam.Create(groups)
                      | "Distribute" >> beam.Reshuffle()
                      | "ReadParquet" >> beam.Map(_read_row_group, names))
        else:
            tables = (pipeline
                      | "CsvFiles" >> beam.Create(list(raw.files))
                      | "Distribute" >> beam.Reshuffle()
                      | "ReadCsv" >> beam.Map(read_csv, raw.columns))
        return tables | "ToRecordBatches" >> beam.ParDo(
            _SplitToRecordBatches(raw.columns, raw.arrow_schema(), self._eval_fraction, raw.rows, self._for_analysis)
        ).with_outputs("eval", main="train")


def _read_row_group(where: tuple[str, int], names: list[str]) -> pa.Table:
    path, group = where
    try:
        return parquet_file(path).read_row_group(group, columns=names)
    except (OSError, pa.ArrowException) as e:
        raise unreadable(path, "Parquet", e) from e


class _SplitToRecordBatches(beam.DoFn):
    """Assigns each row of a raw table to a split and converts both parts to list-typed RecordBatches of at most
    _BATCH_ROWS rows."""

    def __init__(self, columns, schema, eval_fraction, total_rows, for_analysis: bool):
        self._columns, self._schema, self._eval_fraction = columns, schema, eval_fraction
        self._total_rows, self._for_analysis = total_rows, for_analysis
        self._seen = 0

    def process(self, table: pa.Table):
        self._seen += table.num_rows
        READ_PROGRESS.add(table.num_rows)
        log.info("features: read %s of %s rows for the %s (this worker)", f"{self._seen:,}", f"{self._total_rows:,}",
                 "analysis" if self._for_analysis else "transform")
        is_eval = eval_rows(table, self._eval_fraction)
        splits = (("train", ~is_eval),) if self._for_analysis else (("train", ~is_eval), ("eval", is_eval))
        for split, mask in splits:
            count = int(mask.sum())
            if not count:
                continue
            part = table.filter(pa.array(mask)) if count < table.num_rows else table
            for start in range(0, part.num_rows, _BATCH_ROWS):
                batch = to_list_batch(part.slice(start, _BATCH_ROWS), self._columns, self._schema)
                yield batch if split == "train" else beam.pvalue.TaggedOutput("eval", batch)
