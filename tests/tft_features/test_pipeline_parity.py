"""Raw -> TFT parity: one real Beam run over random data that uses every transform,
each output and statistic checked against an independent computation (numpy,
scipy, scikit-learn, plain Python), on the rows of the train split."""

from __future__ import annotations

import json
import re
import string
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats as scipy_stats
from sklearn.preprocessing import PolynomialFeatures

from tests.helpers import committed, decode_split, run_features_on
from tfbridge.contracts import FeaturesManifest, PipelineConfig
from tft_features.analyzers import QUANTILE_EPSILON
from tft_features.mappers import ENGLISH_STOP_WORDS
from tft_features.pipeline import run_features, split_rows
from tft_features.shards import MIN_SHARDS

N = 3000
FIXED_BOUNDARIES = [0.0, 1.0, 2.5]
HUGE_MAX = 1e35
WORDS = ["Good", "price!", "the", "colour", "was", "great,", "don't", "buy", "it's", "fine", "rare1", "rare2", "..."]

FEATURES = {
    "z": ["z_score"],
    "pos_a": ["box_cox", "z_score"],
    "pos_b": ["box_cox"],
    "signed": ["yeo_johnson"],
    "mm": [{"min_max": {"output_min": -1, "output_max": 1}}],
    "q": [{"bucketize": {"num_buckets": 4}}],
    "edges": [{"bucketize": {"boundaries": FIXED_BOUNDARIES}}],
    "thr": [{"threshold": 0.5}],
    "huge": [{"clip": {"min": 0, "max": HUGE_MAX}}, "log1p"],  # 1e30 reaches log1p; 1e37 is clipped first
    "miss_mean": [{"impute": "mean"}],
    "miss_median": [{"impute": "median"}, "z_score"],
    "miss_cat": [{"impute": "most_frequent"}, "vocabulary"],
    "miss_const": [{"impute": {"strategy": "constant", "value": -1.5}}],
    "cat": ["vocabulary"],
    "cat_top": [{"vocabulary": {"top_k": 3}}, "one_hot"],
    "text": [{"normalize_text": {"stopwords": "english"}}, {"vocabulary": {"frequency_threshold": 2}}],
    "px": [{"polynomial": {"degree": 3, "with": ["py"]}}],
    "pz": [{"polynomial": {"degree": 2, "with": ["py"]}}, "z_score"],
    "ple": [{"piecewise_linear": 6}],
    "ple_steps": [{"piecewise_linear": {"num_buckets": 5}}],  # a few repeated values: bins of zero width
}


def make_table(seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)

    def with_missing(values, fraction=0.1):
        mask = rng.random(N) < fraction
        return pa.array(values, mask=mask)

    cats = np.array(["a", "b", "c", "d", "e", "f"])
    text = [" ".join(rng.choice(WORDS, size=rng.integers(0, 6))) for _ in range(N)]
    huge = rng.normal(0, 1, N)
    huge[::50] = 1e30
    huge[1::50] = -1e30
    huge[2::50] = 1e37  # above HUGE_MAX: clipped
    miss_float = rng.normal(10.0, 2.0, N)
    miss_float[rng.random(N) < 0.05] = np.nan  # NaN counts as missing too
    return pa.table({
        "target": np.arange(N, dtype=np.float64),  # unique: joins decoded rows back to raw rows
        "z": rng.normal(5.0, 1000.0, N),
        "pos_a": rng.lognormal(1.0, 0.8, N),
        "pos_b": rng.gamma(2.0, 3.0, N),
        "signed": rng.normal(1.0, 3.0, N),
        "mm": rng.uniform(-50, 50, N),
        "q": rng.normal(0, 1, N),
        "edges": rng.choice([-1.0, 0.0, 0.5, 1.0, 2.0, 2.5, 3.0], N),
        "thr": rng.choice([0.0, 0.5, 0.50001, 1.0], N),
        "huge": huge,
        "miss_mean": with_missing(miss_float),
        "miss_median": with_missing(rng.exponential(3.0, N)),
        "miss_cat": with_missing(rng.choice(cats, N, p=[0.4, 0.2, 0.2, 0.1, 0.05, 0.05])),
        "miss_const": with_missing(rng.normal(0, 1, N)),
        "cat": rng.choice(cats, N, p=[0.3, 0.3, 0.2, 0.1, 0.05, 0.05]),  # a tie on top
        "cat_top": rng.choice(cats, N),
        "text": text,
        "px": rng.normal(0, 2, N),
        "py": rng.uniform(-3, 3, N),
        "pz": rng.lognormal(0, 1, N),
        "ple": rng.lognormal(0, 1.5, N),
        "ple_steps": rng.choice([0.0, 1.0, 2.0, 10.0], N, p=[0.6, 0.2, 0.15, 0.05]),
        "unused": rng.normal(0, 1, N),
    })


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One feature-stage run shared by every test of this module."""
    root = tmp_path_factory.mktemp("parity")
    table = make_table(seed=7)
    config, result = run_features_on(root, table, FEATURES, row_group_size=700)
    features_dir = root / "out" / "features"
    train = decode_split(features_dir, "train")
    evaluation = decode_split(features_dir, "eval")
    raw = table.to_pandas()
    train_raw = raw.set_index("target").loc[train["target"]]
    return {
        "config": config, "result": result, "dir": features_dir, "train": train, "eval": evaluation, "raw": raw,
        "train_raw": train_raw, "stats": json.loads(committed(config.layout).stats_path.read_text())["features"],
    }


def test_parquet_shards_read_as_a_table_of_the_features(run):
    """What the README says a person can do: pandas.read_parquet on a split's shards shows the features."""
    import pandas as pd

    frame = pd.concat([pd.read_parquet(p) for p in sorted(committed(run["config"].layout).transformed_dir.glob("train-*.parquet"))])
    assert len(frame) == len(run["train"]["target"])
    assert not any(c.startswith("__stat__") for c in frame.columns)
    assert frame["z"].dtype == np.float32 and frame["cat"].dtype == np.int64
    assert len(frame["cat_top"].iloc[0]) == 4  # one-hot: a fixed-size list
    np.testing.assert_array_equal(frame["z"].to_numpy(), run["train"]["z"])


def test_tfrecord_output_decodes_to_the_same_values(run, tmp_path):
    """output_format: tfrecord writes the same rows as tf.Examples, joined by the unique target."""
    config = PipelineConfig.from_dict({**run["config"].to_dict(), "output_format": "tfrecord",
                                       "output": str(tmp_path / "out")})
    run_features(config)
    assert FeaturesManifest.read(config.layout.features_manifest_path).format == "tfrecord"
    assert list(committed(config.layout).transformed_dir.glob("*.parquet")) == []
    for split in ("train", "eval"):
        parquet, tfrecord = run[split], decode_split(config.layout.features_dir, split)
        order_p, order_t = np.argsort(parquet["target"]), np.argsort(tfrecord["target"])
        assert set(parquet) == set(tfrecord)
        for name in parquet:
            if isinstance(parquet[name], list):
                assert [parquet[name][i].tolist() for i in order_p] == [tfrecord[name][i].tolist() for i in order_t]
            else:
                np.testing.assert_array_equal(parquet[name][order_p], tfrecord[name][order_t], err_msg=name)


def f32(values) -> np.ndarray:
    """The raw values as the transform reads them (float32), in float64 for the reference maths."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def test_layout_split_and_manifest(run):
    manifest = FeaturesManifest.read(run["dir"] / "manifest.json")
    assert sorted(p.name for p in run["dir"].iterdir()) == sorted(["manifest.json", manifest.attempt])  # one, named
    d = committed(run["config"].layout).features_dir
    assert d.name == manifest.attempt
    assert manifest.format == "parquet"
    for split in ("train", "eval"):
        files = sorted(p.name for p in (d / "transformed").glob(f"{split}-*.parquet"))
        count = manifest.shards[split]
        assert count >= MIN_SHARDS
        assert files == sorted(f.name for f in manifest.files[split])  # every file named, none left over
        assert [f.rows for f in manifest.files[split]] == [pq.read_metadata(d / "transformed" / f.name).num_rows
                                                          for f in manifest.files[split]]
        assert sum(f.rows for f in manifest.files[split]) == manifest.rows[split]
    assert sorted(p.name for p in d.iterdir()) == ["check_rows.parquet", "metadata", "stats.json", "transform_fn",
                                                   "transformed", "transformed_metadata"]  # no temp
    check_rows = manifest.read_check_rows(run["dir"])  # raw eval rows for the hand-off checks, as the stage split them
    assert check_rows.num_rows == min(manifest.rows["eval"], 2000)
    assert set(check_rows.column("target").to_pylist()) <= set(run["eval"]["target"].tolist())
    assert (d / "transform_fn" / "saved_model.pb").exists()
    assert manifest.rows == run["result"].rows == {"train": len(run["train"]["target"]),
                                                  "eval": len(run["eval"]["target"])}
    assert sum(manifest.rows.values()) == N
    assert 0.2 < manifest.rows["eval"] / N < 0.3
    # every row exactly once, across the two splits
    ids = np.concatenate([run["train"]["target"], run["eval"]["target"]])
    assert sorted(ids.tolist()) == list(range(N))
    assert manifest.raw_columns["cat"].dtype == "string" and manifest.raw_columns["z"].dtype == "float"
    assert "unused" not in manifest.raw_columns and manifest.raw_columns["py"].dtype == "float"
    assert {c.name for c in manifest.raw_columns.values() if c.nullable} == {"miss_mean", "miss_median", "miss_cat",
                                                                          "miss_const"}
    # what each feature is to the trainer: kind and id range / vector length
    outputs = {name: (o.kind, o.width) for name, o in manifest.outputs.items()}
    assert outputs["z"] == ("number", None) and outputs["thr"] == ("number", None)
    assert outputs["cat"] == ("ids", run["stats"]["cat"]["vocabulary_size"] + 1)
    assert outputs["q"] == ("ids", 4) and outputs["edges"] == ("ids", len(FIXED_BOUNDARIES) + 1)
    assert outputs["cat_top"] == ("vector", 4) and outputs["px"] == ("vector", 9) and outputs["pz"] == ("vector", 5)
    assert outputs["text"] == ("token_ids", run["stats"]["text"]["vocabulary_size"] + 1)
    assert outputs["ple"] == ("vector", 6) and outputs["ple_steps"] == ("vector", 5)
    # the ids of values outside a vocabulary (its OOV bucket), which training gives some rows; buckets have none
    size = run["stats"]["cat"]["vocabulary_size"]
    assert manifest.outputs["cat"].unseen_ids == (size, size + 1) and manifest.outputs["q"].unseen_ids is None
    assert "target" not in outputs and len(outputs) == len(FEATURES)


def test_z_score_matches_numpy(run):
    x = f32(run["train_raw"]["z"])
    got = run["stats"]["z"]
    assert got["mean"] == pytest.approx(x.mean(), rel=1e-5)
    assert got["std"] == pytest.approx(x.std(ddof=0), rel=1e-5)
    np.testing.assert_allclose(run["train"]["z"], (x - x.mean()) / x.std(), rtol=1e-4, atol=1e-5)


def test_box_cox_lambda_matches_scipy_and_feeds_z_score(run):
    for column in ("pos_a", "pos_b"):
        x = f32(run["train_raw"][column])
        lam = run["stats"][column]["box_cox_lambda"]
        assert lam == pytest.approx(scipy_stats.boxcox_normmax(x, method="mle"), abs=1e-3)
    x = f32(run["train_raw"]["pos_a"])
    y = scipy_stats.boxcox(x, run["stats"]["pos_a"]["box_cox_lambda"])
    # the z-score reports the moments of what it received: the Box-Cox output
    assert run["stats"]["pos_a"]["mean"] == pytest.approx(y.mean(), rel=1e-4)
    assert run["stats"]["pos_a"]["std"] == pytest.approx(y.std(), rel=1e-4)
    np.testing.assert_allclose(run["train"]["pos_a"], (y - y.mean()) / y.std(), atol=1e-4)
    y_b = scipy_stats.boxcox(f32(run["train_raw"]["pos_b"]), run["stats"]["pos_b"]["box_cox_lambda"])
    np.testing.assert_allclose(run["train"]["pos_b"], y_b, rtol=1e-5, atol=1e-5)


def test_yeo_johnson_matches_scipy(run):
    x = f32(run["train_raw"]["signed"])
    lam = run["stats"]["signed"]["yeo_johnson_lambda"]
    assert lam == pytest.approx(scipy_stats.yeojohnson_normmax(x), abs=1e-3)
    np.testing.assert_allclose(run["train"]["signed"], scipy_stats.yeojohnson(x, lam), rtol=1e-5, atol=1e-5)


def test_min_max(run):
    x = f32(run["train_raw"]["mm"])
    assert run["stats"]["mm"] == {"min": pytest.approx(x.min()), "max": pytest.approx(x.max())}
    np.testing.assert_allclose(run["train"]["mm"], (x - x.min()) / (x.max() - x.min()) * 2 - 1, atol=1e-5)


def test_bucketize_num_buckets_within_epsilon_of_numpy_quantiles(run):
    x = f32(run["train_raw"]["q"])
    boundaries = np.array(run["stats"]["q"]["boundaries"])
    assert len(boundaries) == 3
    for q, b in zip([0.25, 0.5, 0.75], boundaries):
        assert np.mean(x <= b) == pytest.approx(q, abs=QUANTILE_EPSILON + 2 / len(x))
        assert b == pytest.approx(np.quantile(x, q), abs=0.02)
    np.testing.assert_array_equal(run["train"]["q"], np.searchsorted(boundaries.astype(np.float32),
                                                                     x.astype(np.float32), side="right"))


def test_bucketize_boundaries_put_edge_values_in_the_upper_bucket(run):
    x = run["train_raw"]["edges"].to_numpy()
    np.testing.assert_array_equal(run["train"]["edges"], np.searchsorted(FIXED_BOUNDARIES, x, side="right"))
    assert set(run["train"]["edges"][x == 1.0]) == {2}


def piecewise_linear(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The encoding in float32 numpy: per bin, the position inside it, clipped to [0, 1]; a zero-width bin is a
    step up at its value."""
    x, edges = np.asarray(x, np.float32)[:, None], np.asarray(edges, np.float32)
    left, right = edges[:-1], edges[1:]
    width = right - left
    inside = (x - left) / np.where(width > 0, width, np.float32(1))
    return np.clip(np.where(width > 0, inside, (x >= right).astype(np.float32)), 0, 1)


def test_piecewise_linear_bins_are_quantiles_between_min_and_max(run):
    for column, buckets in (("ple", 6), ("ple_steps", 5)):
        x = f32(run["train_raw"][column])
        edges = np.array(run["stats"][column]["edges"])
        assert len(edges) == buckets + 1 and np.all(np.diff(edges) >= 0)
        assert edges[0] == np.float32(x.min()) and edges[-1] == np.float32(x.max())
        for q, b in zip(np.arange(1, buckets) / buckets, edges[1:-1]):
            assert np.mean(x <= b) >= q - QUANTILE_EPSILON - 2 / len(x), (column, q)
            assert np.mean(x < b) <= q + QUANTILE_EPSILON + 2 / len(x), (column, q)
        for split in ("train", "eval"):
            raw = run["raw"].set_index("target").loc[run[split]["target"]]
            np.testing.assert_allclose(run[split][column], piecewise_linear(raw[column], edges), atol=1e-6,
                                       err_msg=f"{column} {split}")
    # the repeated values made bins of zero width, so the step path above was compared too
    assert np.any(np.diff(run["stats"]["ple_steps"]["edges"]) == 0)


def test_threshold_clip_log1p(run):
    x = f32(run["train_raw"]["thr"])
    np.testing.assert_array_equal(run["train"]["thr"], (x > 0.5).astype(np.float32))
    huge = f32(run["train_raw"]["huge"])
    np.testing.assert_allclose(run["train"]["huge"], np.log1p(np.clip(huge, 0, HUGE_MAX)), rtol=1e-6)
    # the extremes reach log1p (not clipped to a small max): 1e30 -> 69.08, 1e37 -> log1p(1e35) = 80.59
    assert (huge == f32(1e30)).any() and (huge == f32(1e37)).any() and (huge == f32(-1e30)).any()
    np.testing.assert_allclose(run["train"]["huge"][huge == f32(1e30)], np.log1p(1e30), rtol=1e-6)
    np.testing.assert_allclose(run["train"]["huge"][huge == f32(1e37)], np.log1p(HUGE_MAX), rtol=1e-6)


def test_impute_strategies(run):
    raw = run["train_raw"]
    mean_col = f32(raw["miss_mean"])
    present = mean_col[~np.isnan(mean_col)]
    assert np.isnan(mean_col).sum() > 0
    fill = run["stats"]["miss_mean"]["impute_value"]
    assert fill == pytest.approx(present.mean(), rel=1e-5)
    np.testing.assert_allclose(run["train"]["miss_mean"], np.where(np.isnan(mean_col), fill, mean_col), rtol=1e-6)

    med = f32(raw["miss_median"])
    median = run["stats"]["miss_median"]["impute_value"]
    present = med[~np.isnan(med)]
    assert np.mean(present <= median) == pytest.approx(0.5, abs=QUANTILE_EPSILON + 2 / len(present))
    filled = np.where(np.isnan(med), median, med)
    np.testing.assert_allclose(run["train"]["miss_median"], (filled - filled.mean()) / filled.std(), atol=1e-4)

    cats = raw["miss_cat"]
    counts = Counter(cats.dropna())
    most = min(counts, key=lambda v: (-counts[v], v))
    assert run["stats"]["miss_cat"]["impute_value"] == most
    assert run["stats"]["miss_cat"]["vocabulary_size"] == len(counts)

    const = f32(raw["miss_const"])
    np.testing.assert_allclose(run["train"]["miss_const"], np.where(np.isnan(const), -1.5, const), rtol=1e-6)


def tft_vocabulary(values) -> list[str]:
    """TFT's order: descending frequency, ties in reverse lexicographic order."""
    counts = Counter(values)
    return [v for v, _ in sorted(counts.items(), key=lambda kv: (kv[1], kv[0].encode()), reverse=True)]


def test_vocabulary_order_sizes_and_ids(run):
    raw = run["train_raw"]
    vocab = tft_vocabulary(raw["cat"])
    assert run["stats"]["cat"] == {"vocabulary_size": len(vocab), "num_oov_buckets": 1}
    np.testing.assert_array_equal(run["train"]["cat"], [vocab.index(v) for v in raw["cat"]])


def test_vocabulary_top_k_then_one_hot(run):
    raw = run["train_raw"]["cat_top"]
    vocab = tft_vocabulary(raw)[:3]
    expected_ids = [vocab.index(v) if v in vocab else 3 for v in raw]  # 3: the one OOV bucket
    got = run["train"]["cat_top"].reshape(len(raw), -1)
    assert got.shape[1] == 4
    np.testing.assert_array_equal(got, np.eye(4)[expected_ids])
    assert run["stats"]["cat_top"]["vocabulary_size"] == 3


def normalize(text: str) -> list[str]:
    text = text.lower().replace("'", "")
    text = re.sub("[" + re.escape(string.punctuation.replace("'", "")) + "]", " ", text)
    return [t for t in text.split() if t not in ENGLISH_STOP_WORDS]


def test_normalize_text_then_vocabulary_with_frequency_threshold(run):
    token_lists = [normalize(t) for t in run["train_raw"]["text"]]
    counts = Counter(t for tokens in token_lists for t in tokens)
    vocab = tft_vocabulary([t for tokens in token_lists for t in tokens if counts[t] >= 2])
    assert "buy" in vocab and "price" in vocab and not {"the", "dont", "its"} & set(vocab)
    assert run["stats"]["text"]["vocabulary_size"] == len(vocab)
    oov = len(vocab)
    for tokens, ids in zip(token_lists, run["train"]["text"]):
        assert list(ids) == [vocab.index(t) if t in vocab else oov for t in tokens]
    assert any(len(ids) == 0 for ids in run["train"]["text"])  # empty text -> no tokens


def test_polynomial_matches_sklearn(run):
    raw = run["train_raw"]
    x = np.column_stack([f32(raw["px"]), f32(raw["py"])])
    expected = PolynomialFeatures(degree=3, include_bias=False).fit_transform(x)
    got = run["train"]["px"].reshape(len(x), -1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert run["stats"]["px"]["terms"][:5] == ["px", "py", "px px", "px py", "py py"]


def test_z_score_of_a_vector_scales_each_element(run):
    raw = run["train_raw"]
    terms = PolynomialFeatures(degree=2, include_bias=False).fit_transform(
        np.column_stack([f32(raw["pz"]), f32(raw["py"])]))
    got = run["train"]["pz"].reshape(len(terms), -1)
    np.testing.assert_allclose(run["stats"]["pz"]["mean"], terms.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(run["stats"]["pz"]["std"], terms.std(axis=0), rtol=1e-4)
    np.testing.assert_allclose(got, (terms - terms.mean(axis=0)) / terms.std(axis=0), rtol=1e-3, atol=1e-4)


def test_eval_split_uses_train_statistics(run):
    ev = run["raw"].set_index("target").loc[run["eval"]["target"]]
    x = f32(ev["z"])
    s = run["stats"]["z"]
    np.testing.assert_allclose(run["eval"]["z"], (x - s["mean"]) / s["std"], rtol=1e-4, atol=1e-5)


def test_split_rows_are_the_rows_the_stage_put_in_each_split(run):
    """What the report and its hand-off checks read as "eval rows": the very rows in the eval shards."""
    for split in ("train", "eval"):
        rows = split_rows(run["config"], split, limit=10**6)
        np.testing.assert_array_equal(np.sort(f32(rows.column("target").to_numpy())), np.sort(run[split]["target"]))
    assert split_rows(run["config"], "eval", limit=5).num_rows == 5
