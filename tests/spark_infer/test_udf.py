"""Scoring on a real local Spark session: the UDF against onnxruntime and the SavedModel run directly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf

from spark_infer import score
from tests.helpers import committed, onnx_session, serving_inputs, tf_inputs
from tests.onnx_export.test_parity import fresh_rows
from tfbridge.contracts import DataError, ModelManifest, named_attempts
from tfbridge.scoring.parity import ONNX_VS_SAVED_MODEL, compare


@pytest.fixture(scope="module")
def rows(exported):
    """3,000 fresh raw rows with the edge cases, an id to join on, and the model's inputs for direct runs."""
    layout = exported.layout
    stats = json.loads(committed(layout).stats_path.read_text())["features"]
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
    direct = onnx_session(committed(layout).onnx_path).run(["prediction"], feeds)[0]
    np.testing.assert_allclose(got, direct, rtol=1e-6, atol=0)
    saved = tf.saved_model.load(str(committed(layout).saved_model_dir)).signatures["serving_default"](
        **tf_inputs(feeds))["prediction"].numpy()
    np.testing.assert_allclose(got, saved, rtol=1e-4, atol=1e-5 * float(np.std(saved[10:])))


def test_the_column_udf_in_a_select_of_ones_own_equals_score(spark, exported, rows):
    """scoring_udf (an Arrow UDF over model_inputs) composed into a user's select: the same predictions as score(),
    joined by id."""
    from spark_infer import model_inputs, scoring_udf

    table, _ = rows
    model_dir = str(exported.layout.model_dir)
    df = spark.createDataFrame(table.to_pandas()).repartition(3)
    mine = (df.select("row_id", scoring_udf(model_dir)(model_inputs(model_dir)).alias("p"))
            .toPandas().set_index("row_id").sort_index())
    assert mine.index.tolist() == list(range(table.num_rows))
    # Other batches (3 partitions, not 4): onnxruntime's matrix kernels may round the last bit differently.
    np.testing.assert_allclose(mine["p"].to_numpy(), scored(spark, table, model_dir), rtol=1e-6, atol=0)


def test_without_an_onnx_export_the_saved_model_scores(spark, exported, rows, tmp_path):
    table, feeds = rows
    model_dir = tmp_path / "model"
    shutil.copytree(exported.layout.model_dir, model_dir, ignore=shutil.ignore_patterns("model.onnx"))
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["onnx"] = None
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    got = scored(spark, table, model_dir)
    saved = tf.saved_model.load(str(model_dir / manifest["attempt"] / "saved_model")).signatures["serving_default"](
        **tf_inputs(feeds))["prediction"].numpy()
    # TensorFlow's kernels round by batch (one call on all rows vs Spark's batches of 500: 3e-4 relative apart on
    # predictions near 0, measured): held to the hand-off tolerance of the SavedModel, joined by row.
    compare("Spark's SavedModel vs the SavedModel", {"prediction": saved}, {"prediction": got}, ONNX_VS_SAVED_MODEL,
            str).check()


def test_schema_is_checked_before_any_job(spark, exported, rows):
    table, _ = rows
    df = spark.createDataFrame(table.to_pandas().head(5))
    with pytest.raises(DataError, match=r"column 'text' is missing"):
        score(df.drop("text"), str(exported.layout.model_dir))
    with pytest.raises(DataError, match=r"column 'z' has type string; the model expects a number"):
        score(df.withColumn("z", df["text"]), str(exported.layout.model_dir))


def test_integers_and_booleans_feed_categories_and_numbers(spark, tmp_path):
    """An int64 id column and a boolean column as categories, a boolean and an int8 as numbers: trained from
    Parquet, then scored by Spark from the same types, joined by id against onnxruntime."""
    import pyarrow.parquet as pq
    import yaml

    from tests.helpers import check_hand_offs
    from tfbridge.cli import main
    from tfbridge.contracts import PipelineConfig

    rng = np.random.default_rng(3)
    n = 400
    table = pa.table({"id": np.arange(n), "Shop ID": rng.integers(100, 110, n), "member": rng.random(n) < 0.5,
                      "Promo": rng.random(n) < 0.2, "qty": pa.array(rng.integers(0, 9, n), pa.int8()),
                      "y": rng.normal(0, 1, n)})
    pq.write_table(table, tmp_path / "raw.parquet")
    config = {"data": str(tmp_path / "raw.parquet"), "label": "y", "task": "regression", "output": str(tmp_path / "o"),
              "features": {"Shop ID": ["vocabulary"], "member": ["vocabulary"], "Promo": ["z_score"], "qty": ["min_max"]},
              "train": {"epochs": 1, "batch_size": 64, "hidden_units": [4], "workers": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) == 0
    layout = PipelineConfig.from_yaml(tmp_path / "c.yaml").layout
    manifest = ModelManifest.read(layout.model_manifest_path)
    assert manifest.inputs["Shop ID"].dtype == "string" and manifest.input_names["Shop ID"] == "shop_id"
    stats = json.loads(committed(layout).stats_path.read_text())["features"]
    assert stats["Shop ID"]["vocabulary_size"] == 10 and stats["member"]["vocabulary_size"] == 2
    check_hand_offs(layout, table.to_pandas(), "id", "id", "regression", float(np.std(table.column("y"))))


def copy_model(exported, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(exported.layout.model_dir, model_dir)
    return model_dir


def test_a_replaced_or_missing_graph_stops_scoring_naming_the_file(exported, tmp_path):
    from spark_infer import load_model

    model_dir = copy_model(exported, tmp_path)
    graph = model_dir / ModelManifest.read(model_dir / "manifest.json").onnx.path
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(DataError, match=rf"{graph} has sha256 \w+, not the \w+ that .*manifest.json records"):
        load_model(model_dir)
    graph.unlink()
    with pytest.raises(DataError, match=rf"{graph} is missing, but .*manifest.json records an ONNX graph"):
        load_model(model_dir)


def test_the_saved_model_path_checks_every_file(exported, tmp_path):
    from spark_infer import load_model

    model_dir = copy_model(exported, tmp_path)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["onnx"] = None
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    assert load_model(model_dir).onnx_bytes is None
    variables = next((model_dir / manifest["attempt"] / "saved_model" / "variables").glob("variables.data-*"))
    variables.write_bytes(variables.read_bytes()[:-1] + b"\x01")
    with pytest.raises(DataError, match=rf"{variables} is missing or is not the file its manifest names"):
        load_model(model_dir)


def test_a_crash_mid_export_leaves_the_committed_graph(exported, tmp_path, monkeypatch):
    """The new graph goes to an attempt of its own, named by the manifest only once it is whole: a crash while it
    is written leaves the manifest and the graph it names as they were, and no attempt behind."""
    import dataclasses
    import os
    from pathlib import Path

    from spark_infer import load_model
    from onnx_export.convert import export_onnx

    shutil.copytree(exported.layout.root, tmp_path / "out", ignore=shutil.ignore_patterns("scores"))
    config = dataclasses.replace(exported, output=str(tmp_path / "out"))
    before = committed(config.layout).onnx_path.read_bytes()
    rename = os.replace

    manifest = config.layout.model_manifest_path.local.read_bytes()

    def crash(source, target):
        if Path(target).name == "model.onnx":
            raise OSError("crashed")
        return rename(source, target)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="crashed"):
        export_onnx(config)
    assert config.layout.model_manifest_path.local.read_bytes() == manifest
    assert committed(config.layout).onnx_path.read_bytes() == before == load_model(config.layout.model_dir).onnx_bytes
    attempts = sorted(p.name for p in config.layout.model_dir.local.iterdir() if p.name.startswith("attempt-"))
    assert attempts == sorted(named_attempts(config.layout.model_manifest_path))
    monkeypatch.setattr(os, "replace", rename)
    export_onnx(config)
    assert load_model(config.layout.model_dir).onnx_bytes is not None
    assert committed(config.layout).onnx_path != committed(exported.layout).onnx_path


def test_local_feeds_read_mixed_columns_as_the_feature_stage_does():
    import pandas as pd

    from tfbridge.scoring.model import _as_model_type

    mixed = pd.Series([True, None, False, 3, np.int64(4), 5.0, np.nan, "x"], dtype=object, name="code")
    assert _as_model_type(mixed, "string").tolist() == ["true", None, "false", "3", "4", "5", None, "x"]
    assert _as_model_type(pd.Series([1, None], dtype="Int64"), "string").tolist() == ["1", pd.NA]
    assert _as_model_type(pd.Series([True, False]), "string").tolist() == ["true", "false"]
    with pytest.raises(DataError, match=r"column 'code' holds 2.5"):
        _as_model_type(pd.Series([2.5], dtype=object, name="code"), "string")
