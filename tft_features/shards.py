"""The transformed rows as shard files, Parquet (the default) or gzipped tf.Example TFRecords, named only once complete.

`WriteShards` runs where the rows come out of TFT's transform and writes each bundle's rows to its own
files, `<split>-<bundle>-NNNNN.<suffix>`, under the stage's attempt (on local disk or a store, through
`tfbridge.storage`), and reports each file with its rows and sha256 once the bundle is complete; `name_shards`
lists the reported files in shard order for the manifest, at least MIN_SHARDS per split so that training workers
can share every split out by file. Files of a failed and retried bundle are never named, so never read (and are
deleted). Nothing is renamed: object stores cannot.

A Parquet shard has one column per transformed feature, the statistics left out: a number or an id is a
plain column, a vector a fixed-size list, token ids a list (`columnar_schema`). It is what training reads
as columns and what a person opens with `pandas.read_parquet`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf
from apache_beam.transforms.window import GlobalWindows
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.coders import example_coder

from tfbridge.contracts import STAT_OUTPUT_PREFIX, DataError, ShardFile
from tfbridge.contracts.layout import TRANSFORMED_SUFFIXES
from tfbridge.storage import Location

log = logging.getLogger(__name__)

MIN_SHARDS = 8
# Level 1: half the write time of zlib's default level 6, about the same size on these records.
_GZIP = tf.io.TFRecordOptions(compression_type="GZIP", compression_level=1)
# Rows per Parquet row group: the unit training reads and shuffles within. A shard buffers one group.
ROW_GROUP_ROWS = 16384
_VALUE_TYPES = {schema_pb2.FLOAT: pa.float32(), schema_pb2.INT: pa.int64(), schema_pb2.BYTES: pa.large_binary()}


def feature_schema(schema: schema_pb2.Schema) -> schema_pb2.Schema:
    """The transformed schema without the statistics: what goes into the shard files."""
    features = schema_pb2.Schema()
    features.CopyFrom(schema)
    del features.feature[:]
    features.feature.extend(f for f in schema.feature if not f.name.startswith(STAT_OUTPUT_PREFIX))
    return features


def columnar_schema(schema: schema_pb2.Schema) -> pa.Schema:
    """The Parquet shards' columns: a fixed-shape feature of one value is a plain column, of several a
    fixed-size list (row-major, as tf.Example holds it), and a feature of varying length a list."""
    fields = []
    for feature in feature_schema(schema).feature:
        value_type = _VALUE_TYPES[feature.type]
        # Items declared non-null: Parquet then stores no definition level per value (one-hot vectors read
        # 2.7x faster).
        item = pa.field("element", value_type, nullable=False)
        if not feature.HasField("shape"):
            fields.append(pa.field(feature.name, pa.large_list(item)))
        elif not feature.shape.dim:
            fields.append(pa.field(feature.name, value_type, nullable=False))
        else:
            size = math.prod(d.size for d in feature.shape.dim)
            fields.append(pa.field(feature.name, pa.list_(item, size), nullable=False))
    return pa.schema(fields)


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """The Parquet columns worth a dictionary: ids (few distinct values). Floats are stored plain: a dictionary
    rarely pays for them, and reading it back cost more than the values (one-hot vectors 2x)."""
    columns = []
    for field in schema:
        nested = pa.types.is_large_list(field.type) or pa.types.is_fixed_size_list(field.type)
        value_type = field.type.value_type if nested else field.type
        if pa.types.is_integer(value_type):
            columns.append(f"{field.name}.list.element" if nested else field.name)
    return columns


def to_columns(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """TFT's transformed RecordBatch (a list column per output, statistics too) in the shards' columns."""
    columns = []
    for field in schema:
        column = batch.column(field.name)
        if pa.types.is_large_list(field.type):
            columns.append(column.cast(field.type))
            continue
        values = column.flatten()
        fixed = pa.types.is_fixed_size_list(field.type)
        size = field.type.list_size if fixed else 1
        if len(values) != size * batch.num_rows:
            raise DataError(f"transformed feature '{field.name}' has {len(values)} values in {batch.num_rows} rows, "
                            f"its schema says {size} per row")
        columns.append(pa.FixedSizeListArray.from_arrays(values, type=field.type) if fixed else values)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class _HashingSink:
    """A file being written (a stream of `tfbridge.storage`) that computes its sha256 on the way: a shard on a
    store is never read back to be checked into its manifest."""

    def __init__(self, location: Location):
        self._stream, self._digest = location.open_output(), hashlib.sha256()
        self.closed = False

    def write(self, data) -> int:
        self._digest.update(data)
        return self._stream.write(data)

    def tell(self) -> int:
        return self._stream.tell()

    def flush(self) -> None:
        pass

    def close(self) -> str:
        if not self.closed:
            self._stream.close()
            self.closed = True
        return self._digest.hexdigest()


class _ParquetShard:
    """One Parquet file being written: rows buffered up to a row group, written a group at a time."""

    def __init__(self, location: Location, schema: pa.Schema):
        self._sink = _HashingSink(location)
        self._writer = pq.ParquetWriter(self._sink, schema, use_dictionary=_dictionary_columns(schema))
        self._schema = schema
        self._buffered, self._buffered_rows = [], 0

    def write(self, rows: pa.RecordBatch) -> None:
        self._buffered.append(to_columns(rows, self._schema))
        self._buffered_rows += rows.num_rows
        if self._buffered_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._buffered:
            self._writer.write_table(pa.Table.from_batches(self._buffered, self._schema),
                                     row_group_size=self._buffered_rows)
        self._buffered, self._buffered_rows = [], 0

    def close(self) -> str:
        """Ends the file; returns its sha256."""
        self._flush()
        self._writer.close()
        return self._sink.close()


class _TFRecordShard:
    """One gzipped TFRecord file of tf.Examples being written (tfx_bsl encodes, TF's writer gzips): on local disk
    only (config refuses TFRecords for an output on a store)."""

    def __init__(self, location: Location, encoder: example_coder.RecordBatchToExamplesEncoder, columns: list[str]):
        self._location = location
        location.parent.mkdir()
        self._writer = tf.io.TFRecordWriter(str(location.local), options=_GZIP)
        self._encoder, self._columns = encoder, columns

    def write(self, rows: pa.RecordBatch) -> None:
        for example in self._encoder.encode(rows.select(self._columns)):
            self._writer.write(example)

    def close(self) -> str:
        self._writer.close()
        return self._location.sha256()


def write_empty_shard(location: Location, schema: schema_pb2.Schema, output_format: str) -> str:
    """A file of the format with no rows (and, for Parquet, the shards' columns); returns its sha256."""
    if output_format == "parquet":
        shard = _ParquetShard(location, columnar_schema(schema))
    else:
        shard = _TFRecordShard(location, None, [])
    return shard.close()


class WriteShards(beam.DoFn):
    """Writes the transformed rows of each bundle to its own shard files, in the transform's stage.

    Writing where the rows come out of the transform keeps them in memory
    once: dealing them to fixed shards through a GroupByKey pickled every
    transformed row and cost more than the transform (measured: 1M rows of
    the `wide` benchmark config, 26.5 s -> 19.4 s for the feature stage). Each
    batch is cut into `shards` contiguous slices (no copy); a thread per core
    converts and writes them (pyarrow's Parquet writer, or tfx_bsl's encoder
    and TF's gzip, all release the GIL) while the transform computes the next
    batch. A bundle's files carry its id and are reported, with their row
    counts, only in finish_bundle, once complete: `name_shards` gives the
    reported ones their final names, so files of a failed and retried bundle
    are never used.
    """

    def __init__(self, schema: schema_pb2.Schema, directory: str, split: str, shards: int, output_format: str):
        self._schema = feature_schema(schema)
        self._directory, self._split, self._shards, self._format = directory, split, shards, output_format
        self._open, self._pool = None, None
        self._bundle, self._files, self._pending, self._next = "", {}, [], 0

    def setup(self):
        if self._format == "parquet":
            columns = columnar_schema(self._schema)
            self._open = lambda path: _ParquetShard(path, columns)
        else:
            encoder = example_coder.RecordBatchToExamplesEncoder(self._schema)
            names = [f.name for f in self._schema.feature]
            self._open = lambda path: _TFRecordShard(path, encoder, names)
        self._pool = ThreadPoolExecutor(min(self._shards, os.cpu_count() or 1), thread_name_prefix="write-shards")

    def start_bundle(self):
        self._bundle, self._files, self._pending = uuid.uuid4().hex[:12], {}, []

    def process(self, element):
        batch, _ = element
        if not batch.num_rows:
            return
        self._wait()  # a file takes one slice at a time; at most one batch is held here
        size = -(-batch.num_rows // self._shards)
        for i, start in enumerate(range(0, batch.num_rows, size)):
            shard = (self._next + i) % self._shards
            self._pending.append(self._pool.submit(self._write, shard, batch.slice(start, size)))
        self._next = (self._next + 1) % self._shards  # small batches spread over the files too

    def finish_bundle(self):
        self._wait()
        files, self._files = self._files, {}
        for location, file, rows in files.values():
            sha256 = file.close()
            yield GlobalWindows.windowed_value((location.name, rows, sha256))

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown()

    def _wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()  # re-raises a writer's error in the bundle that wrote it

    def _write(self, shard: int, rows: pa.RecordBatch) -> None:
        if shard not in self._files:
            suffix = TRANSFORMED_SUFFIXES[self._format]
            location = Location.of(self._directory) / f"{self._split}-{self._bundle}-{shard:05d}.{suffix}"
            self._files[shard] = [location, self._open(location), 0]
        entry = self._files[shard]
        entry[1].write(rows)
        entry[2] += rows.num_rows


def name_shards(written: list[tuple[str, int, str]], directory: Location, split: str, schema: schema_pb2.Schema,
                output_format: str) -> tuple[ShardFile, ...]:
    """The split's files in shard order, from the files of completed bundles ((name, rows, sha256) each) in
    `directory`, with empty ones where it had fewer than MIN_SHARDS (fewer rows or bundles than that), so that
    every split can be shared out by file."""
    files = [ShardFile(name, int(rows), sha256) for name, rows, sha256 in sorted(written)]
    suffix = TRANSFORMED_SUFFIXES[output_format]
    for shard in range(len(files), MIN_SHARDS):
        name = f"{split}-empty-{shard:05d}.{suffix}"
        files.append(ShardFile(name, 0, write_empty_shard(directory / name, schema, output_format)))
    log.info("features: %s: %d %s files (%d written, %d empty)", split, len(files), output_format, len(written),
             len(files) - len(written))
    return tuple(files)
