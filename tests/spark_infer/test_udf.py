"""Scoring on a real local Spark session: the UDF against onnxruntime and the SavedModel run directly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf

from spark_infer import score
from tests.helpers import onnx_session, serving_inputs, tf_inputs
from tests.tf_train.test_onnx_parity import fresh_rows
from tfbridge.contracts import DataError, ModelManifest


@pytest.fixture(scope="module")
def rows(exported):
    """3,000 fresh raw rows with the edge cases, an id to join on, and the model's inputs for direct runs."""
    layout = exported.layout
    stats = json.loads(layout.stats_path.read_text())["features"]
    table = fresh_rows(seed=31, stats=stats)
    table = table.append_column("row_id", pa.array(np.arange(table.num_rows)))
    return table, serving_inputs(table, ModelManifest.read(layout.model_manifest_path))


def scored(spark, table: pa.Table, model_dir) -> np.ndarray:
    df = spark.createDataFrame(table.to_pandas()).repartition(4)
    out = score(df, str(model_dir)).select("row_id", "prediction").toPandas().sort_values("row_id")
    assert out["row_id"].tolist() == list(range(table.num_rows))  # every row exactly once
    return out["prediction"].to_numpy()


def test_onnx_udf_equals_onnxruntime_and_the_saved_model(spark, exported, rows):
    table, feeds = rows
    layout = exported.layout
    got = scored(spark, table, layout.model_dir)
    direct = onnx_session(layout.onnx_path).run(["prediction"], feeds)[0]
    np.testing.assert_allclose(got, direct, rtol=1e-6, atol=0)
    saved = tf.saved_model.load(str(layout.saved_model_dir)).signatures["serving_default"](
        **tf_inputs(feeds))["prediction"].numpy()
    np.testing.assert_allclose(got, saved, rtol=1e-4, atol=1e-5 * float(np.std(saved[10:])))


def test_without_an_onnx_export_the_saved_model_scores(spark, exported, rows, tmp_path):
    table, feeds = rows
    model_dir = tmp_path / "model"
    shutil.copytree(exported.layout.model_dir, model_dir, ignore=shutil.ignore_patterns("model.onnx"))
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["onnx"] = None
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    got = scored(spark, table, model_dir)
    saved = tf.saved_model.load(str(model_dir / "saved_model")).signatures["serving_default"](
        **tf_inputs(feeds))["prediction"].numpy()
    np.testing.assert_allclose(got, saved, rtol=1e-6, atol=0)


def test_schema_is_checked_before_any_job(spark, exported, rows):
    table, _ = rows
    df = spark.createDataFrame(table.to_pandas().head(5))
    with pytest.raises(DataError, match=r"column 'text' is missing"):
        score(df.drop("text"), str(exported.layout.model_dir))
    with pytest.raises(DataError, match=r"column 'z' has type string; the model expects a number"):
        score(df.withColumn("z", df["text"]), str(exported.layout.model_dir))
