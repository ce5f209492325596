"""Bad input stops the run before any output, with a message naming the file, column and value;
a failed run leaves an earlier run's features as they were."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import committed, decode_split
from tfbridge.cli import main
from tfbridge.contracts import ConfigError, DataError, PipelineConfig
from tft_features.pipeline import run_features


def write_config(tmp_path, data_path, features, **extra) -> str:
    import yaml

    config = {"data": {"path": str(data_path)}, "label": "y", "task": "regression",
              "features": features, "output": str(tmp_path / "out"), **extra}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def small_table(n=200, seed=0, **columns) -> pa.Table:
    rng = np.random.default_rng(seed)
    base = {"x": rng.lognormal(0, 1, n), "c": rng.choice(["p", "q", "r"], n), "y": np.arange(n, dtype=float)}
    base.update(columns)
    return pa.table(base)


def run_cli(config_path, capsys) -> tuple[int, str]:
    code = main(["features", "--config", config_path])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("features, table_changes, needles", [
    ({"missing_col": ["z_score"]}, {}, ["column 'missing_col'", "missing from", "data.parquet"]),
    ({"x": ["zscore"]}, {}, ["features.x", "unknown transform 'zscore'"]),
    ({"c": ["z_score"]}, {}, ["column 'c'", "expected numbers", "z_score"]),
    ({"x": ["box_cox"]}, {"x": np.r_[[0.0, -2.0], np.ones(198)]}, ["column 'x'", "value -2.0", "box_cox needs values > 0"]),
    ({"x": ["z_score"]}, {"x": np.r_[[np.nan] * 3, np.ones(197)]}, ["column 'x'", "3 missing values", "impute"]),
    ({"c": ["vocabulary", "z_score"]}, {}, ["features.c", "'z_score' needs number or vector input", "gives ids"]),
    ({"c": ["vocabulary", "one_hot"]}, {}, ["one_hot needs a fixed width"]),
    ({"x": ["z_score", {"impute": "mean"}]}, {}, ["impute must be the first step"]),
    ({"x": [{"bucketize": {"num_buckets": 4, "boundaries": [1.0]}}]}, {}, ["either num_buckets", "boundaries (fixed)"]),
    ({"t": ["z_score"]}, {"t": pa.array(np.arange(200), pa.timestamp("s"))},
     ["column 't'", "has type timestamp[", "a date or time column is read by calendar, cyclical or since"]),
    ({"t": ["vocabulary"]}, {"t": pa.array([[1, 2]] * 200)}, ["column 't'", "has type list<"]),
    ({"x": ["vocabulary"]}, {}, ["column 'x'", "has type double", "categories and text are read from strings, "
                                "integers or booleans", "cast the column first"]),
    ({"x": ["z_score"]}, {"y": pa.array([None] * 5 + [1.0] * 195)}, ["the label 'y' has 5 missing values"]),
])
def test_bad_input_stops_before_any_output(tmp_path, capsys, features, table_changes, needles):
    pq.write_table(small_table(**table_changes), tmp_path / "data.parquet")
    code, err = run_cli(write_config(tmp_path, tmp_path / "data.parquet", features), capsys)
    assert code == 2
    for needle in needles:
        assert needle in err
    assert not (tmp_path / "out" / "features").exists()
    assert not list(tmp_path.glob("out/.features-*"))


def test_empty_dataset(tmp_path):
    pq.write_table(small_table().slice(0, 0), tmp_path / "data.parquet")
    cfg = PipelineConfig.from_yaml(write_config(tmp_path, tmp_path / "data.parquet", {"x": ["z_score"]}))
    with pytest.raises(DataError, match="has no rows"):
        run_features(cfg)


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not a parquet file at all")
    cfg = PipelineConfig.from_yaml(write_config(tmp_path, tmp_path / "bad.parquet", {"x": ["z_score"]}))
    with pytest.raises(DataError, match=r"cannot read PARQUET file .*bad\.parquet"):
        run_features(cfg)
    cfg = PipelineConfig.from_yaml(write_config(tmp_path, tmp_path / "nothing-*.parquet", {"x": ["z_score"]}))
    with pytest.raises(DataError, match="no parquet files match"):
        run_features(cfg)


def test_non_numeric_value_in_csv_names_file_column_and_value(tmp_path):
    (tmp_path / "data.csv").write_text("x,c,y\n1.5,p,0\n2.5,q,1\nabc,r,2\n")
    cfg = PipelineConfig.from_yaml(write_config(tmp_path, tmp_path / "data.csv", {"x": ["z_score"]}))
    with pytest.raises(DataError) as err:
        run_features(cfg)
    assert "data.csv" in str(err.value) and "column 'x'" in str(err.value) and "abc" in str(err.value)


def test_unknown_preprocessing_fn_module(tmp_path):
    pq.write_table(small_table(), tmp_path / "data.parquet")
    path = write_config(tmp_path, tmp_path / "data.parquet", None, preprocessing_fn="no_such_module:fn")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        run_features(PipelineConfig.from_yaml(path))


def test_csv_three_phase_chain_and_atomic_replacement(tmp_path, caplog):
    """CSV input with missing values; a three-phase chain (impute; box_cox fused with z_score; min_max) on the
    bundle-based runner, which the stage picks for more than two phases; then a failing rerun leaves the first
    run's features untouched."""
    from scipy import stats as scipy_stats

    from tft_features.preprocessing import plan_features

    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 2.0, 300)
    rows = ["x,c,y"] + [f"{'' if i % 10 == 0 else x[i]},{'pqr'[i % 3]},{i}" for i in range(300)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    path = write_config(tmp_path, tmp_path / "data.csv",
                        {"x": [{"impute": "median"}, "box_cox", "z_score", "min_max"], "c": ["vocabulary"]},
                        split={"eval_fraction": 0.0})
    config = PipelineConfig.from_yaml(path)
    assert plan_features(config).analysis_phases() == 3
    with caplog.at_level("INFO", logger="tft_features.pipeline"):
        result = run_features(config)
    assert "features: 3 analysis phases: using the bundle-based direct runner" in caplog.text
    assert "rerunning" not in caplog.text  # chosen up front, not after a stall
    assert result.rows == {"train": 300, "eval": 0}
    features = tmp_path / "out" / "features"
    stats = json.loads(committed(config.layout).stats_path.read_text())["features"]["x"]
    decoded = decode_split(features, "train")
    assert set(stats) == {"impute_value", "box_cox_lambda", "mean", "std", "min", "max"}
    # each phase against scipy/numpy, on the rows joined by y
    raw = np.where(np.arange(300) % 10 == 0, np.nan, x.astype(np.float32))[decoded["y"].astype(int)]
    present = raw[~np.isnan(raw)]
    assert np.mean(present <= stats["impute_value"]) == pytest.approx(0.5, abs=0.03)
    filled = np.where(np.isnan(raw), np.float32(stats["impute_value"]), raw).astype(np.float64)
    assert stats["box_cox_lambda"] == pytest.approx(scipy_stats.boxcox_normmax(filled, method="mle"), abs=1e-3)
    z = scipy_stats.boxcox(filled, stats["box_cox_lambda"])
    z = (z - z.mean()) / z.std()
    np.testing.assert_allclose(decoded["x"], (z - z.min()) / (z.max() - z.min()), atol=1e-4)
    before = {p.name: p.stat().st_mtime_ns for p in features.rglob("*")}

    (tmp_path / "clean.csv").write_text("x,c,y\n1.0,p,0\n2.0,q,1\n")
    failing = write_config(tmp_path, tmp_path / "clean.csv", None,
                           preprocessing_fn="tests.tft_features.user_fns:fails_in_the_pipeline")
    with pytest.raises(Exception, match="deliberate failure"):
        run_features(PipelineConfig.from_yaml(failing))
    assert {p.name: p.stat().st_mtime_ns for p in features.rglob("*")} == before
    assert not list((tmp_path / "out").glob(".features-*"))


def test_user_preprocessing_fn_through_the_module_entry_point(tmp_path, python_env):
    """`python -m tft_features --config C` runs a user's preprocessing_fn as a Beam job."""
    env, python = python_env
    pq.write_table(small_table(n=400, seed=5), tmp_path / "data.parquet")
    path = write_config(tmp_path, tmp_path / "data.parquet", None,
                        preprocessing_fn="tests.tft_features.user_fns:scaled_x")
    done = subprocess.run([python, "-m", "tft_features", "--config", path], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "features: {'train'" in done.stdout
    decoded = decode_split(tmp_path / "out" / "features", "train")
    raw = pq.read_table(tmp_path / "data.parquet").to_pandas().set_index("y").loc[decoded["y"]]
    x = raw["x"].to_numpy(np.float32).astype(np.float64)
    np.testing.assert_allclose(decoded["x_scaled"], (x - x.min()) / (x.max() - x.min()), atol=1e-6)


def test_deep_user_preprocessing_fn_falls_back_to_a_runner_that_completes(tmp_path, caplog):
    pq.write_table(small_table(n=300, seed=9), tmp_path / "data.parquet")
    path = write_config(tmp_path, tmp_path / "data.parquet", None,
                        preprocessing_fn="tests.tft_features.user_fns:three_phases", split={"eval_fraction": 0.0})
    with caplog.at_level("WARNING", logger="tft_features.pipeline"):
        result = run_features(PipelineConfig.from_yaml(path))
    assert "rerunning on the bundle-based runner" in caplog.text
    assert result.rows == {"train": 300, "eval": 0}
    x3 = decode_split(tmp_path / "out" / "features", "train")["x3"]
    assert abs(x3.mean()) < 1e-5 and abs(x3.std() - 1) < 1e-4
