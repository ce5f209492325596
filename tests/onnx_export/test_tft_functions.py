"""A user's preprocessing_fn calling TFT's common functions exports as one ONNX graph that agrees with the
transform SavedModel feature by feature.

`tests.tft_features.user_fns:tft_common_functions` (scale_to_z_score_per_key, bucketize_per_key, hash_strings,
compute_and_apply_vocabulary with 3 OOV buckets, apply_buckets_with_interpolation, pca) runs through the feature
stage (`preprocessing_fn:` in the config), then its transform alone (test_parity's TransformOnly) is saved and
converted by the export's own conversion. Both score the same fresh rows, fed to ONNX in another order and joined
back by `row_id`, which the function passes through.

The fresh rows are the training rows themselves (TFT's quantiles of a few hundred values are values of the data,
so these hold every bucket boundary, per key and overall) with each number's float32 neighbours, keys never seen
(the empty one, a case variant, non-ASCII), a key of one row and one whose values are all equal, categories never
seen (OOV buckets) and non-ASCII ones, and numbers of ±1e30 and ±3e38. No NaN: a user's preprocessing_fn reads its
columns without missing values, and the scorer refuses them there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf

from onnx_export.convert import convert_saved_model
from tests.helpers import onnx_session, run_features_on, tf_inputs
from tests.onnx_export.test_parity import TransformOnly
from tf_train.model import save_raw_features_model
from tfbridge.contracts import FeaturesManifest

PREPROCESSING_FN = "tests.tft_features.user_fns:tft_common_functions"
KEYS = {"a": 0.4, "b": 0.3, "Straße": 0.2, "日本語": 0.1}  # -> share of the rows
COLOURS = ["red", "green", "grün", "蓝色", "blue", "😀 emoji", ""]
UNSEEN_KEYS = ["unseen", "", "STRASSE", "日本", "a "]
UNSEEN_COLOURS = ["purple", "Grün", "GRÜN", "蓝", "😀", "x" * 300]
EXTREMES = [1e30, -1e30, 3e38, -3e38, 0.0, -0.0, 1e-30]


def raw_table(rng, rows: int) -> pa.Table:
    """Numbers on a scale of their own per key; a key of one row (`solo`), one of three equal values (`flat`)."""
    keys = np.concatenate([rng.choice(list(KEYS), rows - 4, p=list(KEYS.values())), ["solo", "flat", "flat", "flat"]])
    scale = np.array([{"a": 1.0, "b": 10.0, "Straße": 0.1}.get(k, 3.0) for k in keys])
    x = np.where(keys == "flat", -3.0, rng.normal(5, 2, rows) * scale)
    return pa.table({"row_id": np.arange(rows, dtype=np.float64), "key": keys.tolist(), "x": x,
                     "y": rng.lognormal(1, 1, rows), "colour": rng.choice(COLOURS, rows).tolist(),
                     "target": rng.normal(0, 1, rows)})


def converted_transform(root: Path, table: pa.Table, preprocessing_fn: str):
    """The feature stage on `table` by `preprocessing_fn`, then its transform alone (TransformOnly) saved and
    converted by the export's own conversion: (the SavedModel, its ONNX graph's session, op types of the graph)."""
    config, _ = run_features_on(root, table, None, row_group_size=100, preprocessing_fn=preprocessing_fn)
    layout = config.layout
    features = FeaturesManifest.read(layout.features_manifest_path)
    module = TransformOnly(str(features.transform_dir(layout.features_dir)), features, dict(features.outputs), None,
                           None)
    save_raw_features_model(module, str(root / "saved_model"))
    model = convert_saved_model(root / "saved_model", features.input_names.values())
    ops = {node.op_type for node in model.graph.node}
    return root / "saved_model", onnx_session(model.SerializeToString()), ops


@pytest.fixture(scope="module")
def transform(tmp_path_factory):
    """(the raw training table, the transform's SavedModel, its ONNX graph's session, op types of the graph)."""
    table = raw_table(np.random.default_rng(0), 400)
    return table, *converted_transform(tmp_path_factory.mktemp("tft_functions"), table, PREPROCESSING_FN)


def fresh_rows(table: pa.Table, rng) -> dict[str, np.ndarray]:
    """Graph inputs: each training row at its numbers and at their float32 neighbours; each edge key at each
    extreme number; then new row ids in random order."""
    train = {name: table.column(name).to_numpy(zero_copy_only=False) for name in ("key", "x", "y", "colour")}
    edge_keys = np.array(UNSEEN_KEYS + ["solo", "flat", "a"], object)
    extremes = np.array(EXTREMES, np.float32)
    edges = {"key": np.repeat(edge_keys, len(extremes)), "x": np.tile(extremes, len(edge_keys)),
             "y": rng.permutation(np.tile(extremes, len(edge_keys))),
             "colour": rng.choice(np.array(UNSEEN_COLOURS + COLOURS, object), len(edge_keys) * len(extremes))}
    rows = {name: np.concatenate([train[name]] * 3 + [edges[name]]).astype(object) for name in ("key", "colour")}
    for name in ("x", "y"):
        v = train[name].astype(np.float32)
        rows[name] = np.concatenate([v, np.nextafter(v, np.float32(-np.inf)), np.nextafter(v, np.float32(np.inf)),
                                     edges[name]])
    rows["row_id"] = rng.permutation(len(rows["x"])).astype(np.float32) + 10_000
    return rows


def by_row_id(outputs: dict[str, np.ndarray]) -> dict[str, dict[float, object]]:
    """Each feature (the `t_` of TransformOnly's output names dropped) as row id -> value."""
    ids = outputs["t_row_id"].tolist()
    return {name[2:]: dict(zip(ids, values.tolist())) for name, values in outputs.items()}


def features_by_row_id(session, saved_model: Path, rows: dict[str, np.ndarray], rng):
    """(ONNX's, the SavedModel's) features as row id -> value: ONNX scores the rows in another order, so only the
    join by row id (`row_id` passed through) lines them up again."""
    want = {k: v.numpy() for k, v in tf.saved_model.load(str(saved_model)).signatures["serving_default"](
        **tf_inputs(rows)).items()}
    shuffled = rng.permutation(len(rows["row_id"]))
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, {k: v[shuffled] for k, v in rows.items()})))
    return by_row_id(got), by_row_id(want)


def assert_equal_by_row_id(got: dict, want: dict, rows: int) -> None:
    """Every feature of every row of the `rows` equal, integers exactly."""
    ids = list(want["row_id"])
    assert len(ids) == rows and set(got["row_id"]) == set(ids)
    for name in want:
        g, w = (np.array([feature[i] for i in ids]) for feature in (got[name], want[name]))
        if w.dtype.kind in "iu":
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=name)


def test_onnx_agrees_with_the_saved_model_feature_by_feature(transform):
    table, saved_model, session, ops = transform
    rows = fresh_rows(table, np.random.default_rng(1))
    got, want = features_by_row_id(session, saved_model, rows, np.random.default_rng(2))
    assert set(got) == set(want) == {"row_id", "x_z_per_key", "x_buckets_per_key", "colour_hash", "colour_id",
                                     "y_interpolated", "pc_0", "pc_1"}
    assert_equal_by_row_id(got, want, len(rows["x"]))
    # values on the boundaries: with 4 boundaries, exactly 1/3 and 2/3 at the 2nd and 3rd
    assert {np.float32(1) / 3, np.float32(2) / 3} <= set(np.float32(v) for v in want["y_interpolated"].values())
    # TFT's per-key functions compare the keys (StringEqual) in a tf.cond and guard divisions with tf.where
    assert {"If", "Where", "StringToHashBucketFast", "CategoryMapper", "MatMul"} <= ops
