"""One rule per kind of number, the same in the feature stage, the SavedModel, ONNX and Spark (README, "Numbers").

±inf is missing (imputed where the column's first step imputes, else an error naming the column); a value
beyond float32's range is an error; integers above 2**24 round to the nearest float32; a step's domain
(box_cox: > 0, log1p: > -1) is checked on the float32 values, through the steps before it, or refused
when the config is read; a power-transform lambda search that finds nothing finite stops the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.tft_features.test_bad_input import run_cli, small_table, write_config
from tfbridge.cli import main
from tfbridge.contracts import ConfigError, DataError, ModelManifest, PipelineConfig, RawColumn
from tfbridge.scoring import MissingValues, arrow_feeds, feeds
from tft_features.analyzer_impls import PowerLambdaCombineFn, PowerMoments
from tft_features.preprocessing import plan_features

N = 300
BIG = 2 ** 40  # integers used as numbers, far beyond float32's 2**24 exact integers


def plan(features):
    return plan_features(PipelineConfig.from_dict(
        {"data": "d.parquet", "label": "y", "task": "regression", "features": features, "output": "o"},
        source="c.yaml"))


@pytest.mark.parametrize("features, needles", [
    ({"x": ["z_score", "box_cox"]}, ["features.x", "box_cox needs values > 0", "z_score before it", "yeo_johnson"]),
    ({"x": [{"min_max": {"output_min": 1, "output_max": 2}}, "box_cox"]}, ["box_cox needs values > 0", "min_max"]),
    ({"x": ["z_score", "log1p"]}, ["features.x", "log1p needs values > -1", "z_score before it"]),
    ({"x": ["z_score", "log1p", "box_cox"]}, ["box_cox needs values > 0", "z_score before it"]),
    ({"x": [{"clip": {"max": 0}}, "box_cox"]}, ["box_cox needs values > 0", "clip before it"]),
    ({"x": [{"impute": {"strategy": "constant", "value": -1}}, "box_cox"]}, ["box_cox needs values > 0", "impute"]),
])
def test_a_step_that_can_leave_a_later_steps_domain_is_a_config_error(features, needles):
    with pytest.raises(ConfigError, match="c.yaml: features.x") as err:
        plan(features)
    for needle in needles:
        assert needle in str(err.value)


@pytest.mark.parametrize("steps, above", [
    (["box_cox", "z_score"], 0.0),
    (["log1p", "box_cox"], 0.0),  # log1p(x) > 0 exactly when x > 0
    ([{"impute": "median"}, "log1p", "z_score"], -1.0),
    (["log1p", "log1p"], np.expm1(-1.0)),
    ([{"clip": {"min": 1}}, "box_cox"], None),  # clip keeps every value above 0
    ([{"clip": {"min": 0, "max": 5}}, "log1p"], None),
    (["z_score", "yeo_johnson"], None),
])
def test_the_raw_domain_of_a_chain(steps, above):
    domains = plan({"x": steps}).raw_domains()
    assert (domains["x"].above if "x" in domains else None) == pytest.approx(above)


def with_column(name, values, n=N):
    """small_table's rows with one column set: the given values first, then ordinary ones."""
    rest = np.random.default_rng(1).lognormal(0, 1, n - len(values))
    return {name: np.r_[np.asarray(values, np.float64), rest]}


@pytest.mark.parametrize("features, changes, needles", [
    ({"x": ["z_score"]}, with_column("x", [np.inf, -np.inf]),
     ["column 'x'", "2 missing values (null or NaN)", "±inf counts as missing", "impute"]),
    ({"x": [{"min_max": {}}]}, with_column("x", [np.inf]), ["column 'x'", "1 missing values", "impute"]),
    ({"x": ["z_score"]}, {"y": np.r_[np.inf, np.arange(N - 1.0)]}, ["the label 'y' has 1 missing values"]),
    ({"x": ["z_score"]}, with_column("x", [1e39]), ["column 'x'", "data.parquet", "1e+39", "beyond float32's range"]),
    ({"x": ["box_cox"]}, with_column("x", [1e-50]),
     ["column 'x'", "value 1e-50 (0 in float32", "box_cox needs values > 0"]),
    ({"x": ["log1p", "box_cox"]}, with_column("x", [0.0]), ["column 'x'", "box_cox after log1p needs raw values > 0"]),
    ({"x": ["log1p"]}, with_column("x", [-2.0]), ["column 'x'", "value -2.0", "log1p needs values > -1"]),
    ({"x": [{"impute": "mean"}, "log1p"]}, with_column("x", [-1.0]), ["value -1.0", "log1p after impute"]),
    ({"x": ["log1p"]}, with_column("x", [-0.99999999]),  # above -1, but -1 in float32
     ["value -0.99999999 (-1 in float32", "log1p needs values > -1"]),
])
def test_numbers_the_models_cannot_take_stop_the_run_naming_the_column(tmp_path, capsys, features, changes, needles):
    pq.write_table(small_table(n=N, **changes), tmp_path / "data.parquet")
    code, err = run_cli(write_config(tmp_path, tmp_path / "data.parquet", features), capsys)
    assert code == 2, err
    for needle in needles:
        assert needle in err
    assert not (tmp_path / "out" / "features").exists()


def test_csv_infinities_are_missing_values_too(tmp_path, capsys):
    (tmp_path / "data.csv").write_text("x,c,y\n1.5,p,0\ninf,q,1\n-Infinity,r,2\n2.5,p,3\n")
    code, err = run_cli(write_config(tmp_path, tmp_path / "data.csv", {"x": ["z_score"]}), capsys)
    assert code == 2 and "column 'x'" in err and "2 missing values" in err


@pytest.mark.parametrize("kind, values", [("box_cox", [0.0, 1.0, 2.0]), ("box_cox", [np.inf, 1.0, 2.0]),
                                          ("yeo_johnson", [-np.inf, 1.0, 2.0])])
@pytest.mark.parametrize("with_moments", [False, True])
def test_a_lambda_search_that_finds_nothing_finite_names_the_column(kind, values, with_moments):
    combine = PowerLambdaCombineFn(kind, "carat", with_moments)
    with pytest.raises(DataError, match=f"column 'carat': the {kind} lambda search found no finite lambda"):
        combine.extract_output(PowerMoments.of_chunk(kind, np.array(values)))


def test_a_constant_column_keeps_the_identity_lambda():
    constant = PowerMoments.of_chunk("box_cox", np.full(9, 3.0))
    assert PowerLambdaCombineFn("box_cox", "c").extract_output(constant) == [1.0]


# --- the scorer's feeds, without Spark ------------------------------------------------------------

INPUTS = {"imputed": RawColumn("imputed", "float", True), "plain": RawColumn("plain", "float", False),
          "positive": RawColumn("positive", "float", False, above=0.0)}


def pandas_feeds(frame: pd.DataFrame) -> dict:
    return feeds(frame, INPUTS)


def arrow_batch_feeds(frame: pd.DataFrame) -> dict:
    """The feeds of the same batch as Arrow arrays: what Spark's workers score."""
    return arrow_feeds({k: pa.array(frame[k]) for k in frame}, INPUTS)


@pytest.mark.parametrize("make_feeds", [pandas_feeds, arrow_batch_feeds])
def test_scorer_feeds_read_numbers_as_the_feature_stage_does(make_feeds):
    plain = [BIG + 1, 2 ** 60 + 1, 3, -4]
    fed = make_feeds(pd.DataFrame({"imputed": [np.inf, -np.inf, np.nan, 1.0], "plain": plain,
                                   "positive": [1e-30, 1.0, 2.0, 3e38]}))
    assert np.isnan(fed["imputed"][:3]).all() and fed["imputed"][3] == 1.0
    np.testing.assert_array_equal(fed["plain"], np.array(plain, np.float64).astype(np.float32))
    assert fed["positive"].dtype == np.float32 and fed["positive"][0] > 0


@pytest.mark.parametrize("column, value, error, needles", [
    ("plain", np.inf, MissingValues, ["column 'plain'", "1 of 2 rows", "±inf counts as missing"]),
    ("plain", 1e39, DataError, ["column 'plain'", "1e+39", "beyond float32's range"]),
    ("positive", 1e-50, DataError, ["column 'positive'", "1e-50", "only values > 0"]),
    ("positive", -3.0, DataError, ["column 'positive'", "-3.0", "only values > 0"]),
])
@pytest.mark.parametrize("make_feeds", [pandas_feeds, arrow_batch_feeds])
def test_scorer_feeds_stop_on_a_number_the_model_cannot_take(make_feeds, column, value, error, needles):
    frame = pd.DataFrame({"imputed": [1.0, 2.0], "plain": [1.0, 2.0], "positive": [1.0, 2.0]})
    frame.loc[0, column] = value
    with pytest.raises(error) as err:
        make_feeds(frame)
    for needle in needles:
        assert needle in str(err.value)


# --- end to end: feature stage, SavedModel, ONNX and Spark on the same rows -----------------------

def raw_table(seed: int, n: int = N) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    imputed = rng.normal(5.0, 2.0, n)
    imputed[::7], imputed[1::7], imputed[2::11] = np.inf, -np.inf, np.nan
    big = BIG + rng.integers(0, 2 ** 20, n) * 2 + 1  # odd: no float32 holds one exactly
    positive = rng.lognormal(0.0, 1.0, n)
    y = np.where(np.isfinite(imputed), imputed, 5.0) + (big - BIG) / 2 ** 20 + np.log(positive)
    return pd.DataFrame({"big": big, "imputed": imputed, "positive": positive, "y": y})


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """Features, one epoch on one worker and the export (with its parity gate) of a table with an infinity-laden
    imputed column, integers above 2**24 and a [log1p, box_cox] column."""
    root = tmp_path_factory.mktemp("numbers")
    pq.write_table(pa.Table.from_pandas(raw_table(seed=3), preserve_index=False), root / "raw.parquet")
    config = {"data": {"path": str(root / "raw.parquet")}, "label": "y", "task": "regression",
              "features": {"big": ["z_score"], "imputed": [{"impute": "mean"}, "z_score"],
                           "positive": ["log1p", "box_cox"]},
              "split": {"eval_fraction": 0.2}, "output": str(root / "out"),
              "train": {"epochs": 1, "batch_size": 64, "hidden_units": [4], "workers": 1}}
    (root / "c.yaml").write_text(yaml.safe_dump(config))
    repo = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])  # the training worker
    for stage in ("features", "train", "export"):
        assert main([stage, "--config", str(root / "c.yaml")]) == 0, stage
    return PipelineConfig.from_yaml(root / "c.yaml")


def test_infinities_are_imputed_and_big_integers_rounded_in_the_feature_stage(model_run):
    from tests.helpers import committed, decode_split

    layout = model_run.layout
    stats = json.loads(committed(layout).stats_path.read_text())["features"]
    assert all(np.isfinite(v) for column in stats.values() for v in column.values() if isinstance(v, float))
    raw = raw_table(seed=3)
    train = decode_split(layout.features_dir, "train")
    rows = raw.set_index(raw["y"].astype(np.float32)).loc[train["y"]]  # the label, as float32, joins them back
    present = np.isfinite(rows["imputed"].to_numpy())
    assert 0 < present.sum() < len(rows)
    fill = rows["imputed"].to_numpy(np.float32)[present].astype(np.float64).mean()
    assert stats["imputed"]["impute_value"] == pytest.approx(fill, rel=1e-5)
    z = stats["imputed"]
    np.testing.assert_allclose(train["imputed"][~present], (z["impute_value"] - z["mean"]) / z["std"], rtol=1e-5)
    # rounded to float32 (steps of 2**17 here), not refused
    big = rows["big"].to_numpy().astype(np.float64).astype(np.float32).astype(np.float64)
    assert stats["big"]["mean"] == pytest.approx(big.mean(), rel=1e-6)
    # TFT's variance is float32 arithmetic: a spread of 2e6 on an offset of 1e12 keeps two digits of it
    assert stats["big"]["std"] == pytest.approx(big.std(), rel=3e-2)
    np.testing.assert_allclose(train["big"], (big - stats["big"]["mean"]) / stats["big"]["std"], atol=1e-5)
    manifest = ModelManifest.read(layout.model_manifest_path)
    assert manifest.inputs["positive"].above == 0.0 and manifest.inputs["big"].above is None


def test_saved_model_and_onnx_treat_an_infinity_as_a_missing_value(model_run):
    import tensorflow as tf

    from tests.helpers import committed, onnx_session, tf_inputs
    from tfbridge.scoring import ScoringModel

    layout = model_run.layout
    model = ScoringModel.load(layout.model_dir)
    rows = raw_table(seed=8, n=60)
    missing = model.feeds(rows.assign(imputed=np.nan))
    infinite = {**missing, "imputed": np.where(np.arange(60) % 2, np.inf, -np.inf).astype(np.float32)}
    signature = tf.saved_model.load(str(committed(layout).saved_model_dir)).signatures["serving_default"]
    session = onnx_session(committed(layout).onnx_path)
    saved = [signature(**tf_inputs(f))["prediction"].numpy() for f in (missing, infinite)]
    onnx = [session.run(["prediction"], f)[0] for f in (missing, infinite)]
    assert np.isfinite(saved[0]).all()
    np.testing.assert_array_equal(saved[1], saved[0])
    np.testing.assert_array_equal(onnx[1], onnx[0])
    np.testing.assert_allclose(onnx[0], saved[0], rtol=1e-4, atol=1e-5 * float(np.std(rows["y"])))
    # the scorer's own feeds: an infinity in the raw rows scores as the missing value it is
    np.testing.assert_allclose(model.predict(rows.assign(imputed=np.inf))["prediction"], onnx[0], rtol=1e-6)


def test_spark_scores_big_integers_and_infinities_as_onnxruntime_does(model_run, spark, tmp_path):
    from spark_infer import score
    from spark_infer.job import read_input, run_score
    from tfbridge.scoring import ScoringModel

    model = ScoringModel.load(model_run.layout.model_dir)
    rows = raw_table(seed=9, n=200)
    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), parquet)
    rows.to_csv(tmp_path / "rows.csv", index=False)  # pandas writes inf, -inf and an empty field for NaN
    want = model.predict(rows)["prediction"]
    assert np.isfinite(want).all()
    for df in (spark.read.parquet(str(parquet)), read_input(spark, str(tmp_path / "rows.csv"), model.manifest)):
        got = score(df, model).toPandas()
        order = np.argsort(got["y"].astype(float).to_numpy())  # a string column in the CSV
        np.testing.assert_allclose(got["prediction"].to_numpy()[order], want[np.argsort(rows["y"].to_numpy())],
                                   rtol=1e-6, atol=1e-6)
    rows.loc[5, "imputed"] = 1e39
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), parquet)
    with pytest.raises(DataError, match=r"column 'imputed' in one batch has the value 1e\+39, beyond float32"):
        run_score(str(model_run.layout.model_dir), str(parquet), str(tmp_path / "scores"), spark=spark)
    assert not (tmp_path / "scores").exists()
