"""Shard files: written in the transform's stage per bundle, named only when their bundle reported them."""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from tensorflow_transform.tf_metadata import schema_utils

from tft_features.shards import MIN_SHARDS, WriteShards, name_shards


def _read_x(paths) -> list[float]:
    spec = {"x": tf.io.FixedLenFeature([], tf.float32)}
    values = []
    for record in tf.data.TFRecordDataset([str(p) for p in paths], compression_type="GZIP"):
        values.append(float(tf.io.parse_single_example(record, spec)["x"]))
    return values


def test_only_files_of_reported_bundles_become_shards(tmp_path):
    schema = schema_utils.schema_from_feature_spec({"x": tf.io.FixedLenFeature([], tf.float32),
                                                   "__stat__x__mean": tf.io.FixedLenFeature([], tf.float32)})

    def column(values):  # as TFT's transform outputs them: a one-value list per row
        return pa.array([[v] for v in values], pa.list_(pa.float32()))

    batches = [pa.RecordBatch.from_arrays([column(np.arange(start, start + n)), column(np.zeros(n))],
                                          ["x", "__stat__x__mean"])
               for start, n in ((0, 20), (100, 3), (200, 0))]  # an empty batch writes nothing
    bundles = tmp_path / "bundles"
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = (p
             | beam.Create([(batch, None) for batch in batches])
             | beam.ParDo(WriteShards(schema, str(bundles), "train", MIN_SHARDS))
             | beam.combiners.ToList()
             | beam.Map(lambda paths: (bundles / "train.json").write_text(json.dumps(paths))))
    written = json.loads((bundles / "train.json").read_text())
    # 20 rows in 7 slices of 3, then 3 rows in 3 slices: 7 files in all, none empty
    assert len(written) == 7
    # what a failed attempt of a bundle would leave behind: never reported, so never a shard
    with tf.io.TFRecordWriter(str(bundles / "train-0badbundle00-00000.tfrecord.gz"),
                              options=tf.io.TFRecordOptions(compression_type="GZIP")) as stray:
        stray.write(tf.train.Example(features=tf.train.Features(feature={
            "x": tf.train.Feature(float_list=tf.train.FloatList(value=[-1.0]))})).SerializeToString())

    out = tmp_path / "transformed"
    assert name_shards(written, out, "train") == MIN_SHARDS
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"train-{i:05d}-of-{MIN_SHARDS:05d}.tfrecord.gz" for i in range(MIN_SHARDS)]
    assert sorted(_read_x(sorted(out.iterdir()))) == [float(v) for v in (*range(20), 100, 101, 102)]
    assert _read_x([out / names[-1]]) == []  # the 8th file pads the split: empty
