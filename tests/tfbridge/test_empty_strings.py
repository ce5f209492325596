"""One meaning for an empty string: null and "" are the same value in the feature stage (Parquet and
CSV), the SavedModel, the ONNX graph and Spark: missing where the column's first step imputes, else
the empty text (no tokens) or the category ""."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from spark_infer import load_model, score
from tests.helpers import decode_split, tf_inputs
from tests.onnx_export.test_parity import fresh_rows
from tfbridge.cli import main
from tfbridge.contracts import PipelineConfig

FEATURES = {"Imputed Cat": [{"impute": "most_frequent"}, "vocabulary"], "cat": ["vocabulary"],
            "text": [{"normalize_text": {"stopwords": "none"}}, "vocabulary"]}


def training_table(n: int = 300) -> pa.Table:
    rng = np.random.default_rng(11)
    pick = lambda values: [values[i] for i in rng.integers(0, len(values), n)]  # noqa: E731
    return pa.table({"Imputed Cat": pick(["a", "a", "a", "b", "", None]), "cat": pick(["p", "q", "", None]),
                     "text": pick(["good price", "bad", "", None]), "y": np.arange(n, dtype=np.float64)})


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_the_feature_stage_reads_null_and_empty_alike(tmp_path, fmt):
    table = training_table()
    data = tmp_path / f"raw.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, data)
    else:
        pacsv.write_csv(table, data)  # null -> an empty field, "" -> ""
    config = {"data": str(data), "label": "y", "task": "regression", "features": FEATURES,
              "output": str(tmp_path / "out"), "split": {"eval_fraction": 0.0}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["features", "--config", str(tmp_path / "c.yaml")]) == 0
    layout = PipelineConfig.from_yaml(tmp_path / "c.yaml").layout
    decoded = decode_split(layout.features_dir, "train")
    row = {int(y): i for i, y in enumerate(decoded["y"])}
    raw = table.to_pydict()
    stats = json.loads(layout.stats_path.read_text())["features"]
    assert stats["Imputed Cat"]["impute_value"] == "a"

    def ids(column: str, value) -> set:
        key = {"Imputed Cat": "imputed_cat"}.get(column, column)
        return {int(decoded[key][row[i]]) for i, v in enumerate(raw[column]) if v == value}

    # Imputed: "" and null are missing, filled with the most frequent value.
    assert ids("Imputed Cat", "") == ids("Imputed Cat", None) == ids("Imputed Cat", "a")
    # Not imputed: "" and null are the same category, distinct from the others.
    assert len(ids("cat", "")) == 1 and ids("cat", "") == ids("cat", None) != ids("cat", "p")
    tokens = {i: len(decoded["text"][row[i]]) for i, v in enumerate(raw["text"]) if v in ("", None)}
    assert tokens and not any(tokens.values())


def test_serving_engines_read_null_and_empty_alike(exported, spark, tmp_path):
    """The shared model (miss_cat imputes, cat and text do not): each row twice, its strings null in one copy
    and "" in the other; ONNX, the SavedModel and Spark (from Parquet and from CSV) score both copies alike."""
    import tensorflow as tf

    layout = exported.layout
    stats = json.loads(layout.stats_path.read_text())["features"]
    base = fresh_rows(seed=53, stats=stats).slice(0, 40).to_pandas()
    strings = ["miss_cat", "cat", "cat_top", "cat_exact", "text"]
    as_null, as_empty = base.copy(), base.copy()
    for column in strings:
        as_null[column] = None
        as_empty[column] = ""
    rows = pd.concat([as_null, as_empty], ignore_index=True)
    rows["row_id"] = np.arange(len(rows))
    model = load_model(layout.model_dir)
    onnx_out = model.predict(rows)["prediction"]
    np.testing.assert_array_equal(onnx_out[:40], onnx_out[40:])
    signature = tf.saved_model.load(str(layout.saved_model_dir)).signatures["serving_default"]
    saved = signature(**tf_inputs(model.feeds(rows)))["prediction"].numpy()
    np.testing.assert_array_equal(saved[:40], saved[40:])

    table = pa.Table.from_pandas(rows, preserve_index=False)
    pq.write_table(table, tmp_path / "rows.parquet")
    pacsv.write_csv(table, tmp_path / "rows.csv")
    from spark_infer.job import read_input

    for path in (tmp_path / "rows.parquet", tmp_path / "rows.csv"):
        df = read_input(spark, str(path), model.manifest)
        got = score(df, model).select("row_id", "prediction").toPandas()
        got = got.assign(row_id=got["row_id"].astype(int)).sort_values("row_id")["prediction"].to_numpy()
        np.testing.assert_allclose(got, onnx_out, rtol=1e-6, err_msg=str(path))
        np.testing.assert_array_equal(got[:40], got[40:])
