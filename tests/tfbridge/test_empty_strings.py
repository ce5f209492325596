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
from tests.helpers import committed, decode_split, onnx_session, serving_inputs, tf_inputs
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
    stats = json.loads(committed(layout).stats_path.read_text())["features"]
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
    """The shared model (miss_cat imputes; cat, cat_top, cat_exact and text do not), 40 rows with every string
    null, then "". The graph is fed "" by hand (not through the scorer's null -> "") and must give what the
    feature stage meant: miss_cat "" is missing (its impute value), text "" has no tokens (as a text of stop
    words only), a category "" is a category like any unseen one. The scorer's feeds turn null into that "";
    Spark reading real nulls from Parquet and CSV scores as ONNX, joined by row_id."""
    import tensorflow as tf

    layout = exported.layout
    stats = json.loads(committed(layout).stats_path.read_text())["features"]
    base = fresh_rows(seed=53, stats=stats).slice(0, 40).to_pandas()
    strings = ["miss_cat", "cat", "cat_top", "cat_exact", "text"]
    as_null, as_empty = base.copy(), base.copy()
    for column in strings:
        as_null[column] = None
        as_empty[column] = ""
    meant = {"miss_cat": stats["miss_cat"]["impute_value"], "text": "the and of", "cat": "never seen",
             "cat_top": "never seen", "cat_exact": "never seen"}
    model = load_model(layout.model_dir)
    graph = onnx_session(committed(layout).onnx_path)
    signature = tf.saved_model.load(str(committed(layout).saved_model_dir)).signatures["serving_default"]

    def by_hand(frame: pd.DataFrame) -> dict:
        assert not frame[strings].isna().any().any()  # no null for serving_inputs to turn into ""
        return serving_inputs(pa.Table.from_pandas(frame, preserve_index=False), model.manifest)

    def onnx(frame: pd.DataFrame) -> np.ndarray:
        return graph.run(["prediction"], by_hand(frame))[0]

    def saved(frame: pd.DataFrame) -> np.ndarray:
        return signature(**tf_inputs(by_hand(frame)))["prediction"].numpy()

    empty = onnx(as_empty)
    for column, value in meant.items():
        np.testing.assert_array_equal(onnx(as_empty.assign(**{column: value})), empty, err_msg=column)
        np.testing.assert_array_equal(saved(as_empty.assign(**{column: value})), saved(as_empty), err_msg=column)
        # the column moves the prediction, so the comparison above could fail
        assert any(not np.array_equal(onnx(as_empty.assign(**{column: v})), empty)
                   for v in ["a", "b", "c", "d", "e", "f", "good price"]), column
    np.testing.assert_allclose(model.predict(as_null)["prediction"], empty, rtol=1e-6, atol=0)
    np.testing.assert_allclose(model.predict(as_empty)["prediction"], empty, rtol=1e-6, atol=0)

    rows = pd.concat([as_null, as_empty], ignore_index=True)
    rows["row_id"] = np.arange(len(rows))
    want = np.concatenate([empty, empty])  # by row_id
    table = pa.Table.from_pandas(rows, preserve_index=False)
    assert table.column("cat").null_count == 40
    pq.write_table(table, tmp_path / "rows.parquet")
    pacsv.write_csv(table, tmp_path / "rows.csv")  # null -> an empty field, "" -> ""
    from spark_infer.job import read_input

    for path in (tmp_path / "rows.parquet", tmp_path / "rows.csv"):
        df = read_input(spark, str(path), model.manifest)
        got = score(df, model).select("row_id", "prediction").toPandas()
        assert sorted(got["row_id"].astype(int)) == list(range(len(rows)))
        np.testing.assert_allclose(got["prediction"].to_numpy(), want[got["row_id"].astype(int).to_numpy()],
                                   rtol=1e-6, atol=0, err_msg=str(path))
