"""Reading the feature stage's shard files as tf.data datasets: Parquet or gzipped tf.Example TFRecords.

Both readers give the same thing: dicts of tensors keyed by transformed feature name (the label too), a
number or id as [batch], a vector as [batch, width], token ids as [batch, tokens] padded with PAD_ID (the
Parquet reader) or as a SparseTensor (the TFRecord reader; `tf_train.data.model_inputs` makes it dense).

A train shard's rows 0, k, 2k, ... (k = validation_every) are its validation rows, by position in the file,
in both formats: the same rows for any number of workers. `stream` gives one shard's training rows forever
in seeded random order; `batches` gives rows once, in file order.

Parquet is read a row group at a time with pyarrow, never a whole file (from local disk or straight from a store): each epoch visits a shard's row
groups in a seeded random order and shuffles each group's rows (16,384 per group as the feature stage
writes them). TFRecords shuffle in a 4,096-row buffer per shard and are parsed after batching.
"""

from __future__ import annotations

import abc
import itertools
from typing import Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from tfbridge.contracts import FeatureKind
from tfbridge.storage import Location

PAD_ID = -1  # token_ids pad value in the model's dense [batch, tokens] input
SHUFFLE_BUFFER = 4096  # TFRecord rows
STEPS_PER_BLOCK = 8  # Parquet: per-replica batches the reader makes at once


def tf_dtype(dtype: str) -> tf.DType:
    """The TF dtype of a contract dtype ("float", "int", "string", "timestamp": float64 epoch seconds)."""
    return {"float": tf.float32, "int": tf.int64, "string": tf.string, "timestamp": tf.float64}[dtype]


class ShardReader(abc.ABC):
    """What a training run reads of the shards: `columns` (feature -> its kind and width, as stored), the label."""

    def __init__(self, columns: Mapping[str, tuple[FeatureKind, int | None]], label: str, label_dtype: str,
                 validation_every: int):
        self.columns, self.label, self.label_dtype, self.every = dict(columns), label, label_dtype, validation_every

    @abc.abstractmethod
    def train_batches(self, files: list[str], seeds: list[int], sizes: list[int]) -> tf.data.Dataset:
        """Forever: one sub-batch of sizes[i] training rows of each files[i] (shuffled with seeds[i]), together."""

    @abc.abstractmethod
    def batches(self, files, batch_size: int, validation: bool = False) -> tf.data.Dataset:
        """Every row of `files` once (or only their validation rows), in file order, in batches."""

    @abc.abstractmethod
    def labels(self, files) -> np.ndarray:
        """The label of every row of `files`, in file order."""


class TFRecordReader(ShardReader):
    def _spec(self, label_only: bool = False) -> dict:
        spec = {self.label: tf.io.FixedLenFeature([], tf_dtype(self.label_dtype))}
        for name, (kind, width) in ({} if label_only else self.columns).items():
            if kind == FeatureKind.TOKEN_IDS:
                spec[name] = tf.io.VarLenFeature(tf.int64)
            elif kind == FeatureKind.VECTOR:
                spec[name] = tf.io.FixedLenFeature([width], tf.float32)
            else:
                spec[name] = tf.io.FixedLenFeature([], tf.int64 if kind == FeatureKind.IDS else tf.float32)
        return spec

    def _parse(self, serialized):
        return tf.io.parse_example(serialized, self._spec())

    def rows(self, file: str, validation: bool = False) -> tf.data.Dataset:
        """A train shard's serialized rows: the ones training fits on, or (validation=True) the held-out ones."""
        rows = tf.data.TFRecordDataset(file, compression_type="GZIP")
        every = self.every
        if not every:
            return rows if not validation else rows.take(0)
        if validation:
            return rows.shard(every, 0)
        # Rows in blocks of a multiple of `every`, each less its rows 0, k, 2k, ...: a row's position in the block
        # is its position in the file modulo k. (A per-row filter made the whole input pipeline 13x slower.)
        block = every * 128
        keep = tf.constant(np.arange(block) % every != 0)
        return rows.batch(block).map(lambda rows: tf.boolean_mask(rows, keep[:tf.shape(rows)[0]])).unbatch()

    def train_batches(self, files, seeds, sizes):
        streams = [self.rows(file).shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True).repeat()
                   .batch(size, drop_remainder=True) for file, seed, size in zip(files, seeds, sizes)]
        dataset = tf.data.Dataset.zip(tuple(streams)).map(lambda *parts: tf.concat(parts, 0))
        return dataset.map(self._parse, num_parallel_calls=tf.data.AUTOTUNE)

    def batches(self, files, batch_size, validation=False):
        if validation:
            rows = tf.data.Dataset.from_tensor_slices(list(files)).flat_map(lambda f: self.rows(f, validation=True))
        else:
            rows = tf.data.TFRecordDataset(list(files), compression_type="GZIP")
        return rows.batch(batch_size).map(self._parse)

    def labels(self, files):
        dataset = tf.data.TFRecordDataset(list(files), compression_type="GZIP").batch(65536)
        parts = [tf.io.parse_example(batch, self._spec(label_only=True))[self.label].numpy() for batch in dataset]
        return np.concatenate(parts) if parts else np.zeros([0])


class ParquetReader(ShardReader):
    def _signature(self) -> dict:
        signature = {self.label: tf.TensorSpec([None], tf_dtype(self.label_dtype))}
        for name, (kind, width) in self.columns.items():
            signature[name] = {FeatureKind.TOKEN_IDS: tf.TensorSpec([None, None], tf.int64),
                               FeatureKind.VECTOR: tf.TensorSpec([None, width], tf.float32),
                               FeatureKind.IDS: tf.TensorSpec([None], tf.int64)}.get(
                kind, tf.TensorSpec([None], tf.float32))
        return signature

    def _dataset(self, make: Callable[[], Iterator[dict[str, np.ndarray]]]) -> tf.data.Dataset:
        return tf.data.Dataset.from_generator(make, output_signature=self._signature())

    def arrays(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Rows read from the shards as the tensors' numpy arrays (see the module doc)."""
        out = {self.label: _values(table.column(self.label))}
        for name, (kind, width) in self.columns.items():
            column = table.column(name).combine_chunks()
            if kind == FeatureKind.TOKEN_IDS:
                out[name] = padded(column)
            elif kind == FeatureKind.VECTOR:
                out[name] = column.flatten().to_numpy().reshape(-1, width)
            else:
                out[name] = column.to_numpy().astype(np.int64 if kind == FeatureKind.IDS else np.float32, copy=False)
        return out

    def _read_columns(self) -> list[str]:
        return [*self.columns, self.label]

    def _groups(self, file: str) -> Iterator[tuple[int, pa.Table]]:
        """A shard's row groups in file order: (position of the group's first row in the file, its rows)."""
        shard = _parquet(file)
        start = 0
        for group in range(shard.num_row_groups):
            table = shard.read_row_group(group, columns=self._read_columns())
            yield start, table
            start += table.num_rows

    def _kept(self, start: int, rows: int, validation: bool) -> np.ndarray:
        """Positions within a group (of `rows`, starting at file row `start`) of its training or validation rows."""
        if not self.every:
            return np.arange(0 if validation else rows)
        positions = np.arange(start, start + rows)
        held_out = positions % self.every == 0
        return np.flatnonzero(held_out if validation else ~held_out)

    def _shuffled(self, file: str, seed: int) -> Iterator[dict[str, np.ndarray]]:
        """A shard's training rows forever: per epoch its row groups in random order, each group shuffled."""
        shard = _parquet(file)
        sizes = [shard.metadata.row_group(g).num_rows for g in range(shard.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        for epoch in itertools.count():
            rng = np.random.default_rng([seed, epoch])
            for group in rng.permutation(len(sizes)):
                table = shard.read_row_group(int(group), columns=self._read_columns())
                kept = self._kept(int(starts[group]), table.num_rows, False)
                yield self.arrays(table.take(rng.permutation(kept)))

    def train_batches(self, files, seeds, sizes):
        def blocks():
            streams = [_sub_batches(self._shuffled(file, seed), size) for file, seed, size in zip(files, seeds, sizes)]
            while True:
                yield _concat([_concat([next(stream) for stream in streams]) for _ in range(STEPS_PER_BLOCK)])

        # The generator hands over STEPS_PER_BLOCK batches at once, which rebatch cuts apart again: the
        # Python side (and its hold on the GIL) then runs once per block, not per step.
        return self._dataset(blocks).rebatch(sum(sizes), drop_remainder=True)

    def batches(self, files, batch_size, validation=False):
        def rows():
            for file in files:
                for start, table in self._groups(file):
                    yield self.arrays(table.take(self._kept(start, table.num_rows, True)) if validation else table)

        return self._dataset(lambda: _sub_batches(rows(), batch_size, keep_last=True))

    def labels(self, files):
        parts = [_values(_parquet(file).read(columns=[self.label]).column(self.label)) for file in files]
        return np.concatenate(parts) if parts else np.zeros([0])


READERS: dict[str, type[ShardReader]] = {"parquet": ParquetReader, "tfrecord": TFRecordReader}  # by output_format


def _parquet(file: str) -> pq.ParquetFile:
    """A shard on local disk or a store (`tfbridge.storage`): its row groups stream from where it lies."""
    return pq.ParquetFile(Location.of(file).open_input())


def _values(column: pa.ChunkedArray) -> np.ndarray:
    """A plain column as numpy; strings as Python bytes (what tf.string takes)."""
    return column.to_numpy() if not pa.types.is_binary(column.type) and not pa.types.is_large_binary(column.type) \
        else np.array(column.to_pylist(), dtype=object)


def padded(column: pa.Array) -> np.ndarray:
    """A list column as a [rows, longest list] int64 matrix, PAD_ID after each list's end."""
    lengths = column.value_lengths().fill_null(0).to_numpy()
    values = column.flatten().to_numpy()
    out = np.full((len(column), int(lengths.max(initial=0))), PAD_ID, np.int64)
    rows = np.repeat(np.arange(len(column)), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, np.arange(len(values)) - starts] = values
    return out


def _sub_batches(groups: Iterator[dict[str, np.ndarray]], size: int,
                 keep_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """The rows of `groups` (column arrays) cut into batches of `size` rows (and, keep_last, the rest at the end).
    Batches are views of the groups where they fall inside one: a group is converted once, not per batch."""
    pending, rows = [], 0
    for group in groups:
        pending.append(group)
        rows += len(next(iter(group.values())))
        if rows < size:
            continue
        joined = _concat(pending)
        for start in range(0, rows - size + 1, size):
            yield {k: v[start:start + size] for k, v in joined.items()}
        pending, rows = [{k: v[rows - rows % size:] for k, v in joined.items()}], rows % size
    if keep_last and rows:
        yield _concat(pending)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batches of columns, one after the other; token-id matrices padded to the widest."""
    if len(parts) == 1:
        return parts[0]
    out = {}
    for key, first in parts[0].items():
        arrays = [part[key] for part in parts]
        if first.ndim == 2 and len({a.shape[1] for a in arrays}) > 1:
            width = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=PAD_ID) for a in arrays]
        out[key] = np.concatenate(arrays)
    return out


def decode_rows(files, output_format: str, feature_spec: Mapping, limit: int | None = None) -> dict[str, object]:
    """The rows of `files` (up to `limit`) by feature, for a person or a test to look at: a number, id or string
    feature as an array, a vector as [rows, width], a list feature as a list of arrays (one per row).

    `feature_spec`: the transformed features to decode (TFT's feature spec, statistics left out)."""
    if output_format == "parquet":
        tables, rows = [], 0
        for file in files:
            tables.append(_parquet(file).read(columns=list(feature_spec)))
            rows += tables[-1].num_rows
            if limit is not None and rows >= limit:
                break
        table = pa.concat_tables(tables).slice(0, limit)
        out = {}
        for name in feature_spec:
            column = table.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(column.type):
                out[name] = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
            elif pa.types.is_large_list(column.type) or pa.types.is_list(column.type):
                values = _values(pa.chunked_array([column.flatten()]))  # the values' dtype, empty rows too
                offsets = column.offsets.to_numpy()
                out[name] = np.split(values, offsets[1:-1] - offsets[0]) if len(column) else []
            else:
                out[name] = _values(pa.chunked_array([column]))
        return out
    columns: dict[str, list] = {k: [] for k in feature_spec}
    dataset = tf.data.TFRecordDataset(list(files), compression_type="GZIP")
    if limit is not None:
        dataset = dataset.take(limit)
    for serialized in dataset.batch(1 << 16):
        for key, value in tf.io.parse_example(serialized, dict(feature_spec)).items():
            if isinstance(value, tf.SparseTensor):
                columns[key].extend(row.numpy() for row in tf.RaggedTensor.from_sparse(value))
            else:
                columns[key].append(value.numpy())
    return {key: parts if isinstance(feature_spec[key], tf.io.VarLenFeature)
            else (np.concatenate(parts) if parts else np.array([])) for key, parts in columns.items()}
