"""Shard files: written in the transform's stage per bundle, named only when their bundle reported them, in
either format."""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from tensorflow_transform.tf_metadata import schema_utils

from tf_train.shards import decode_rows
from tfbridge.contracts import DataError, file_sha256
from tfbridge.storage import Location
from tft_features.shards import MIN_SHARDS, WriteShards, columnar_schema, name_shards, to_columns

SPEC = {"x": tf.io.FixedLenFeature([], tf.float32), "v": tf.io.FixedLenFeature([2], tf.float32),
        "ids": tf.io.VarLenFeature(tf.int64), "__stat__x__mean": tf.io.FixedLenFeature([], tf.float32)}
SCHEMA = schema_utils.schema_from_feature_spec(SPEC)
DECODED_SPEC = {k: v for k, v in SPEC.items() if not k.startswith("__stat__")}


def transformed_batch(start: int, n: int) -> pa.RecordBatch:
    """Rows as TFT's transform outputs them: a list per row and output, statistics included."""
    x = np.arange(start, start + n, dtype=np.float32)
    return pa.RecordBatch.from_arrays([
        pa.array([[v] for v in x], pa.large_list(pa.float32())),
        pa.array([[v, -v] for v in x], pa.large_list(pa.float32())),
        pa.array([list(range(int(v) % 3)) for v in x], pa.large_list(pa.int64())),
        pa.array([[0.0]] * n, pa.large_list(pa.float32()))], ["x", "v", "ids", "__stat__x__mean"])


@pytest.mark.parametrize("output_format", ["parquet", "tfrecord"])
def test_only_files_of_reported_bundles_become_shards(tmp_path, output_format):
    batches = [transformed_batch(start, n) for start, n in ((0, 20), (100, 3), (200, 0))]  # empty: writes nothing
    bundles = tmp_path / "bundles"
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = (p
             | beam.Create([(batch, None) for batch in batches])
             | beam.ParDo(WriteShards(SCHEMA, str(bundles), "train", MIN_SHARDS, output_format))
             | beam.combiners.ToList()
             | beam.Map(lambda files: (bundles / "train.json").write_text(json.dumps(files))))
    written = [tuple(f) for f in json.loads((bundles / "train.json").read_text())]
    # 20 rows in 7 slices of 3, then 3 rows in 3 slices: 7 files in all, none empty, 23 rows
    assert len(written) == 7 and sum(rows for _, rows, _ in written) == 23
    suffix = "parquet" if output_format == "parquet" else "tfrecord.gz"
    # what a failed attempt of a bundle would leave behind: never reported, so never a shard
    stray = bundles / f"train-0badbundle00-00000.{suffix}"
    stray.write_bytes((bundles / written[0][0]).read_bytes())

    files = name_shards(written, Location.of(bundles), "train", SCHEMA, output_format)
    names = [f.name for f in files]
    assert names[:7] == sorted(name for name, _, _ in written) and stray.name not in names
    assert names[7:] == [f"train-empty-{MIN_SHARDS - 1:05d}.{suffix}"]  # the 8th file pads the split: empty
    assert [f.sha256 for f in files] == [file_sha256(bundles / name) for name in names]  # computed as written
    assert sum(f.rows for f in files) == 23 and files[-1].rows == 0
    decoded = decode_rows([str(bundles / name) for name in names], output_format, DECODED_SPEC)
    order = np.argsort(decoded["x"])
    expected = [float(v) for v in (*range(20), 100, 101, 102)]
    assert decoded["x"][order].tolist() == expected
    assert decoded["v"][order].tolist() == [[v, -v] for v in expected]
    assert [decoded["ids"][i].tolist() for i in order] == [list(range(int(v) % 3)) for v in expected]
    assert decode_rows([str(bundles / names[-1])], output_format, DECODED_SPEC)["x"].tolist() == []


def test_parquet_shards_hold_one_column_per_feature_and_no_statistics(tmp_path):
    schema = columnar_schema(SCHEMA)
    assert schema.names == ["ids", "v", "x"]
    assert schema.field("x").type == pa.float32()
    item = pa.field("element", pa.float32(), nullable=False)
    assert schema.field("v").type == pa.list_(item, 2)
    assert schema.field("ids").type == pa.large_list(item.with_type(pa.int64()))
    batch = to_columns(transformed_batch(0, 5).slice(1, 3), schema)  # a slice, as the writer gets them
    assert batch.column("x").to_pylist() == [1.0, 2.0, 3.0]
    assert batch.column("v").to_pylist() == [[1.0, -1.0], [2.0, -2.0], [3.0, -3.0]]
    pq.write_table(pa.Table.from_batches([batch]), tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").to_pandas()["x"].tolist() == [1.0, 2.0, 3.0]


def test_a_feature_with_the_wrong_number_of_values_is_named():
    batch = transformed_batch(0, 3)
    bad = batch.set_column(batch.schema.get_field_index("v"), "v", pa.array([[1.0]] * 3, pa.large_list(pa.float32())))
    with pytest.raises(DataError, match="feature 'v' has 3 values in 3 rows, its schema says 2 per row"):
        to_columns(bad, columnar_schema(SCHEMA))
