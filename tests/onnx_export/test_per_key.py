"""The per-key scalers' transform (z_score, min_max and bucketize with `per`) through the export's conversion:
onnxruntime against TF, and both against pandas' groupby of a train table, on edge rows.

The analysis results enter as constants, as they do in a transform_fn once analysed: the keys seen in the train
split and one statistic each (TFT's definitions: population moments, minimum and maximum, and for buckets TFT's
own flattening of each key's boundaries, `_join_boundary_rows`). The rows hold an unseen key, a key with one
row, a key whose values are all equal, non-ASCII keys, the empty key (a missing one), magnitudes of 1e15 and
1e-15, and values on the boundaries.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tensorflow_transform.beam.analyzer_impls import _join_boundary_rows, _make_strictly_increasing_boundaries_rows

from tests.onnx_export.test_lowerings import convert, run
from tft_features import analyzers

NUM_BUCKETS = 4
SCALES = {"a": 1.0, "Straße": 10.0, "日本語": 0.5, "": 3.0, "huge": 1e15, "tiny": 1e-15}


def train_table(rng) -> pd.DataFrame:
    keys = np.concatenate([rng.choice(list(SCALES), 400), ["solo", "flat", "flat", "flat"]])
    x = np.array([rng.normal(2.0, 1.0) * SCALES.get(k, 1.0) for k in keys[:400]] + [7.0, -3.0, -3.0, -3.0])
    return pd.DataFrame({"key": keys, "x": x.astype(np.float32)})


def analysed(train: pd.DataFrame) -> dict:
    """TFT's per-key statistics of `train`, by pandas (float64, rounded to float32 as TFT outputs them); the
    buckets' quartiles by numpy, flattened by TFT's own `_join_boundary_rows`."""
    groups = train.astype({"x": np.float64}).groupby("key")["x"]
    keys = np.array(sorted(groups.groups), object)
    stats = {name: groups.agg(name).loc[keys].to_numpy(np.float32) for name in ("mean", "min", "max")}
    stats["var"] = groups.var(ddof=0).loc[keys].to_numpy(np.float32)
    quartiles = np.stack([np.quantile(train.x[train.key == k], [0.25, 0.5, 0.75]) for k in keys])
    boundaries, scale, shift, _ = _join_boundary_rows(quartiles.astype(np.float32))
    return {"keys": keys, **stats, "strict": _make_strictly_increasing_boundaries_rows(quartiles),
            "boundaries": boundaries.astype(np.float32), "scale": scale.astype(np.float32),
            "shift": shift.astype(np.float32)}


def edge_rows(train: pd.DataFrame, rng) -> pd.DataFrame:
    """Each train key at its values, boundaries and beyond; keys never seen; the one-row and the flat key."""
    quartiles = {k: np.quantile(train.x[train.key == k], [0.25, 0.5, 0.75]) for k in train.key.unique()}
    rows = [(k, v) for k, q in quartiles.items() for v in [*q, q[0] - 1, q[2] + 1, q.mean()]]
    rows += [("unseen", 5.0), ("STRASSE", 1.0), ("strasse", -1.0), ("日本", 2.0), ("solo", 7.0), ("solo", 100.0),
             ("flat", -3.0), ("flat", 4.0), ("huge", 3e15), ("tiny", -4e-15), ("a", 0.0)]
    sample = train.sample(200, random_state=int(rng.integers(1 << 31)))
    return pd.concat([pd.DataFrame(rows, columns=["key", "x"]), sample]).astype({"x": np.float32})


def per_key_steps(stats: dict):
    def steps(x, key):
        keys = tf.constant(stats["keys"].astype(str))  # made inside: a constant of the graph, as once analysed
        return (analyzers.apply_z_score_per_key(x, key, keys, tf.constant(stats["mean"]), tf.constant(stats["var"])),
                analyzers.apply_min_max_per_key(x, key, keys, tf.constant(stats["min"]), tf.constant(stats["max"]),
                                                -1.0, 1.0),
                analyzers.apply_buckets_per_key(x, key, keys, tf.constant(stats["boundaries"]),
                                                tf.constant(stats["scale"]), tf.constant(stats["shift"]), NUM_BUCKETS))
    return steps


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(5)
    train = train_table(rng)
    stats = analysed(train)
    steps = per_key_steps(stats)
    session, ops = convert(steps, tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.string))
    return train, stats, steps, session, ops, edge_rows(train, rng)


def test_onnx_matches_tf_on_edge_rows(case):
    _, _, steps, session, ops, rows = case
    assert {"Equal", "StringEqual"} & set(ops) and "ArgMax" in ops
    x, key = rows.x.to_numpy(np.float32), rows.key.to_numpy(object)
    got = run(session, x, key)
    want = [t.numpy() for t in steps(tf.constant(x), tf.constant(key.astype(str)))]
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=0)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got[2], want[2])


def test_tf_matches_pandas_groupby_by_key(case):
    train, stats, steps, _, _, rows = case
    x, key = rows.x.to_numpy(np.float32), rows.key.to_numpy(object)
    z, scaled, buckets = (t.numpy() for t in steps(tf.constant(x), tf.constant(key.astype(str))))
    groups = train.astype({"x": np.float64}).groupby("key")["x"]
    mean, std = groups.mean(), groups.std(ddof=0)
    lo, hi = groups.min(), groups.max()
    x64 = x.astype(np.float64)
    for i, k in enumerate(key):
        if k not in mean.index:  # TFT: an unseen key is left unscaled, min_max gives sigmoid, bucketize -1
            assert z[i] == x[i] and buckets[i] == -1
            assert scaled[i] == pytest.approx(2 / (1 + np.exp(-x64[i])) - 1, rel=1e-6, abs=1e-7)
            continue
        centred = x64[i] - mean[k]
        assert z[i] == pytest.approx(centred / std[k] if std[k] > 0 else centred, rel=2e-5, abs=1e-5)
        unit = (x64[i] - lo[k]) / (hi[k] - lo[k]) if hi[k] > lo[k] else 1 / (1 + np.exp(-x64[i]))
        assert scaled[i] == pytest.approx(2 * unit - 1, rel=2e-5, abs=2e-6)
        # TFT's boundaries of a key: its quantiles made strictly increasing (steps of 1e-6 of its range, or 1e-6),
        # so a key of one distinct value v puts v in bucket 1, above it in the last
        quartiles = stats["strict"][list(stats["keys"]).index(k)].astype(np.float32)
        exact = np.searchsorted(quartiles, x[i], side="right")
        # TFT maps the value and the boundaries by the key's scale and shift first: on a boundary, one float32
        # rounding may put it in the bucket below (or above)
        assert abs(int(buckets[i]) - exact) <= (1 if np.isclose(x[i], quartiles, rtol=1e-6).any() else 0), (k, x[i])


def test_the_edge_keys_come_out_as_tft_defines_them(case):
    _, _, steps, _, _, _ = case
    key = np.array(["solo", "flat", "flat", "unseen", "", "日本語"], object)
    x = np.array([7.0, -3.0, 4.0, 5.0, 3.0, 1.0], np.float32)
    z, scaled, buckets = (t.numpy() for t in steps(tf.constant(x), tf.constant(key.astype(str))))
    assert z[:4].tolist() == [0.0, 0.0, 7.0, 5.0]  # one row or all equal: x - mean; unseen: x as it is
    np.testing.assert_allclose(scaled[:4], 2 / (1 + np.exp(-x[:4].astype(np.float64))) - 1, rtol=1e-6)
    assert buckets[3] == -1 and 0 <= buckets[4] < NUM_BUCKETS and 0 <= buckets[5] < NUM_BUCKETS
