"""The scalers robust and max_abs, and z_score, min_max and bucketize per key, through the feature stage: each
output joined by id (the unique target) with the raw rows and compared with sklearn (RobustScaler, MaxAbsScaler)
or pandas' groupby over the train split's rows.

The key column holds non-ASCII keys, missing keys (read as "", a key like any other), a key whose values are all
equal, keys of one row each (several land in the eval split alone: unseen in training) and keys of 1e15 and
1e-15 magnitudes.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.preprocessing import MaxAbsScaler, RobustScaler

from tests.helpers import committed, decode_split, run_features_on
from tfbridge.contracts import ConfigError, PipelineConfig
from tft_features.analyzers import QUANTILE_EPSILON
from tft_features.preprocessing import plan_features

N = 800
SCALES = {"a": 1.0, "b": 5.0, "Straße": 0.1, "日本語": 2.0, "huge": 1e15, "tiny": 1e-15}
FEATURES = {
    "r": ["robust"],
    "m": ["max_abs"],
    "pm": [{"polynomial": {"degree": 2}}, "max_abs"],  # a vector: a maximum per element
    "flat": ["robust", "max_abs"],  # IQR 0 and max 0: both scale by 1
    "zk": [{"z_score": {"per": "cat"}}],
    "mk": [{"min_max": {"per": "cat", "output_min": -1, "output_max": 1}}],
    "bk": [{"bucketize": {"num_buckets": 4, "per": "cat"}}],
}


def raw_table(seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    cat = rng.choice([*SCALES, "same", None], N, p=[0.15] * 6 + [0.05, 0.05]).astype(object)
    cat[:12] = [f"solo{i}" for i in range(12)]  # one row each
    scale = np.array([SCALES.get(c, 1.0) for c in cat])
    value = rng.normal(3.0, 2.0, N) * scale
    value[cat == "same"] = 4.25
    heavy = rng.standard_t(2, N) * 100  # heavy tails: where robust and max_abs differ from z_score
    return pa.table({
        "target": np.arange(N, dtype=np.float64),
        "r": heavy, "m": heavy, "pm": heavy, "flat": np.zeros(N),
        "zk": value, "mk": value, "bk": value,
        "cat": pa.array(cat.tolist(), pa.string()),
    })


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    table = raw_table(seed=4)
    config, _ = run_features_on(tmp_path_factory.mktemp("scalers"), table, FEATURES, row_group_size=200)
    splits = {split: decode_split(config.layout.features_dir, split) for split in ("train", "eval")}
    raw = table.to_pandas()
    raw["cat"] = raw["cat"].fillna("")
    joined = {split: raw.iloc[splits[split]["target"].astype(np.int64)].reset_index(drop=True) for split in splits}
    stats = json.loads(committed(config.layout).stats_path.read_text())["features"]
    return {"splits": splits, "raw": joined, "stats": stats}


def outputs(run: dict, column: str, split: str) -> np.ndarray:
    return np.asarray(run["splits"][split][column]).reshape(-1)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_max_abs_matches_sklearn(scaled, split):
    fitted = MaxAbsScaler().fit(scaled["raw"]["train"][["m"]].to_numpy())
    want = fitted.transform(scaled["raw"][split][["m"]].to_numpy())[:, 0]
    np.testing.assert_allclose(outputs(scaled, "m", split), want, rtol=1e-6, atol=0)
    assert scaled["stats"]["m"]["max_abs"] == pytest.approx(fitted.max_abs_[0], rel=1e-7)
    terms = scaled["raw"]["train"][["pm"]].to_numpy().astype(np.float32) ** [1, 2]  # [x, x^2] in float32
    fitted = MaxAbsScaler().fit(terms)
    x = scaled["raw"][split][["pm"]].to_numpy().astype(np.float32) ** [1, 2]
    got = np.asarray(scaled["splits"][split]["pm"]).reshape(-1, 2)
    np.testing.assert_allclose(got, fitted.transform(x), rtol=1e-6, atol=0)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_robust_matches_sklearn_within_the_quantiles_rank_error(scaled, split):
    """The median and quartiles are values of the column within QUANTILE_EPSILON * n in rank of the exact ones
    (plus one rank: sklearn interpolates between the two values around a quantile). That brackets each one, and
    the output is (x - median) / iqr with them; against sklearn the difference is that of the brackets."""
    train = np.sort(scaled["raw"]["train"]["r"].to_numpy())
    stats = scaled["stats"]["r"]
    n = len(train)
    slack = QUANTILE_EPSILON * n + 1

    def bracket(q):
        rank = q * (n - 1)
        return train[max(int(np.floor(rank - slack)), 0)], train[min(int(np.ceil(rank + slack)), n - 1)]

    q25, q50, q75 = (bracket(q) for q in (0.25, 0.5, 0.75))
    assert q50[0] <= stats["median"] <= q50[1]
    assert q75[0] - q25[1] <= stats["iqr"] <= q75[1] - q25[0]
    x = scaled["raw"][split]["r"].to_numpy()
    got = outputs(scaled, "r", split)
    np.testing.assert_allclose(got, (x - stats["median"]) / stats["iqr"], rtol=1e-5, atol=1e-6)
    fitted = RobustScaler(quantile_range=(25.0, 75.0)).fit(train[:, None])
    want = fitted.transform(x[:, None])[:, 0]
    iqr_error = max(q75[1] - q25[0] - fitted.scale_[0], fitted.scale_[0] - (q75[0] - q25[1])) / fitted.scale_[0]
    centre_error = (q50[1] - q50[0]) / fitted.scale_[0]
    np.testing.assert_array_less(np.abs(got - want), np.abs(want) * iqr_error * 1.01 + centre_error * 1.01 + 1e-6)


def test_a_constant_column_scales_by_one(scaled):
    """sklearn: an IQR of 0 and a maximum of 0 scale by 1; robust then max_abs of zeros is zeros."""
    assert scaled["stats"]["flat"]["iqr"] == 0 and scaled["stats"]["flat"]["max_abs"] == 0
    assert not outputs(scaled, "flat", "train").any() and not outputs(scaled, "flat", "eval").any()


def train_groups(scaled, column: str):
    train = scaled["raw"]["train"]
    return train.groupby("cat")[column]


@pytest.mark.parametrize("split", ["train", "eval"])
def test_z_score_per_key_matches_pandas_groupby(scaled, split):
    groups = train_groups(scaled, "zk")
    mean, std = groups.mean(), groups.std(ddof=0)
    rows = scaled["raw"][split]
    got = outputs(scaled, "zk", split)
    seen = rows["cat"].isin(mean.index).to_numpy()
    if split == "eval":
        assert not seen.all(), "some one-row keys are in the eval split alone"
    m, s = rows["cat"].map(mean).to_numpy(), rows["cat"].map(std).to_numpy()
    x = rows["zk"].to_numpy()
    want = np.where(~seen, x, np.where(s > 0, (x - m) / np.where(s > 0, s, 1), x - m))  # unseen: unscaled (TFT)
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-4, atol=1e-4)
    assert scaled["stats"]["zk"]["keys"] == len(mean)
    assert {"Straße", "日本語", "", "same", "huge", "tiny"} <= set(mean.index)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_min_max_per_key_matches_pandas_groupby(scaled, split):
    groups = train_groups(scaled, "mk")
    rows = scaled["raw"][split]
    lo, hi = rows["cat"].map(groups.min()).to_numpy(), rows["cat"].map(groups.max()).to_numpy()
    x = rows["mk"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        unit = np.where(hi > lo, (x - lo) / (hi - lo), 1 / (1 + np.exp(-x)))  # no range or unseen: sigmoid (TFT)
    np.testing.assert_allclose(outputs(scaled, "mk", split), 2 * unit - 1, rtol=1e-5, atol=1e-5)
    if split == "train":
        got = pd.Series(outputs(scaled, "mk", split)).groupby(rows["cat"])
        assert (got.min()[groups.nunique() > 1] == -1).all() and (got.max()[groups.nunique() > 1] == 1).all()


def test_bucketize_per_key_splits_each_key_by_its_quantiles(scaled):
    """Within each key, ids grow with the value and each of the 4 buckets holds a quarter of the key's train rows,
    within the quantiles' rank error (and ties); a key never seen in training gets -1 (TFT)."""
    rows, got = scaled["raw"]["train"], outputs(scaled, "bk", "train")
    for key, group in rows.assign(id=got).groupby("cat"):
        ordered = group.sort_values("bk")
        assert (np.diff(ordered["id"].to_numpy()) >= 0).all(), key
        if group["bk"].nunique() > 20:
            counts = np.bincount(group["id"], minlength=4)
            assert np.abs(counts - len(group) / 4).max() <= QUANTILE_EPSILON * len(group) + 2, (key, counts)
    eval_rows, eval_ids = scaled["raw"]["eval"], outputs(scaled, "bk", "eval")
    unseen = ~eval_rows["cat"].isin(rows["cat"]).to_numpy()
    assert unseen.any() and (eval_ids[unseen] == -1).all() and (eval_ids[~unseen] >= 0).all()


def test_per_needs_a_text_column_and_a_number(tmp_path):
    def plan(features):
        return plan_features(PipelineConfig.from_dict({
            "data": {"path": str(tmp_path / "x.parquet")}, "label": "y", "task": "regression", "features": features,
            "output": str(tmp_path / "out")}))

    with pytest.raises(ConfigError, match="features.x: z_score uses the raw column 'k', which must be text"):
        plan({"x": [{"z_score": {"per": "k"}}], "k": ["z_score"]})
    with pytest.raises(ConfigError, match="per needs num_buckets"):
        plan({"x": [{"bucketize": {"boundaries": [1, 2], "per": "k"}}]})
    with pytest.raises(ConfigError, match="per must be the name of the column"):
        plan({"x": [{"min_max": {"per": ["k"]}}]})
    with pytest.raises(ConfigError, match="per needs a number, but the step before it gives vector"):
        plan({"x": [{"polynomial": {"with": []}}, {"z_score": {"per": "k"}}]})
    keyed = plan({"x": ["box_cox", {"z_score": {"per": "k"}}], "k": ["vocabulary"]})
    assert [len(group) for _, group in keyed.columns[0].step_groups()] == [1, 1]  # not fused: two passes
    assert keyed.raw_columns()["k"] == ("string", False)
