"""onnx_export.trees: a gbdt model's TF trees (tf_train.gbdt.TreeEnsemble) exported as one TreeEnsembleRegressor,
run in onnxruntime against the TF trees and XGBoost's own margins on fresh rows: missing values (each split's
learned direction), values on the splits, multiclass trees by class; and the same row scored alone or in a batch
gives the same bits (the leaves summed in float64, whatever the batch)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf
import tf2onnx
import xgboost

from onnx_export.convert import convert_graph
from onnx_export.lowerings import UnsupportedOp
from tests.helpers import onnx_session
from tf_train.gbdt import FeatureMatrix, TreeEnsemble
from tfbridge.contracts import FeatureKind, FeatureOutput

COLUMNS = ["a", "b", "c", "d"]


def rows(seed: int, n: int) -> np.ndarray:
    """Skewed, integer-valued (many rows on a split) and missing values."""
    rng = np.random.default_rng(seed)
    x = np.stack([rng.normal(0, 1, n), rng.integers(0, 6, n), rng.lognormal(0, 2, n), rng.uniform(-1, 1, n)], 1)
    x[rng.random(x.shape) < 0.15] = np.nan
    return x.astype(np.float32)


def fitted(task: str, classes: int):
    x = rows(0, 3_000)
    signal = np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) - np.log1p(np.nan_to_num(x[:, 2])) \
        + np.isnan(x[:, 3])
    if task == "multiclass":
        y = np.digitize(signal, np.quantile(signal, np.linspace(0, 1, classes + 1)[1:-1]))
        params = {"objective": "multi:softprob", "num_class": classes}
    else:
        y, params = signal, {"objective": "reg:squarederror"}
    booster = xgboost.train({**params, "max_depth": 4, "base_score": 0.0, "tree_method": "hist"},
                            xgboost.DMatrix(x, y), num_boost_round=40)
    matrix = FeatureMatrix({name: FeatureOutput(FeatureKind.NUMBER) for name in COLUMNS})
    return booster, TreeEnsemble(booster, matrix, task, classes, np.zeros(classes, np.float32))


def exported(ensemble: TreeEnsemble, booster_json: bytes | None):
    """The TF trees through the export's own conversion, with the trees' JSON as the export binds it."""
    spec = [tf.TensorSpec([None], tf.float32, name) for name in COLUMNS]
    concrete = tf.function(lambda *xs: ensemble(dict(zip(COLUMNS, xs))), input_signature=spec).get_concrete_function()
    inputs = [t.name for t in concrete.inputs if t.dtype != tf.resource]
    outputs = [t.name for t in concrete.outputs if t.dtype != tf.resource]
    graph_def = tf2onnx.tf_loader.from_function(concrete, inputs, outputs)
    model = convert_graph(graph_def, inputs, outputs, columns=(), name="trees", trees=booster_json)
    return model, onnx_session(model.SerializeToString())


@pytest.mark.parametrize("task, classes", [("regression", 1), ("multiclass", 3)])
def test_the_trees_become_one_tree_ensemble_equal_to_tf_and_xgboost(task, classes):
    booster, ensemble = fitted(task, classes)
    model, session = exported(ensemble, bytes(booster.save_raw("json")))
    ops = collections.Counter(node.op_type for node in model.graph.node)
    assert ops["TreeEnsembleRegressor"] == 1 and ops["Gather"] == 0, ops  # the TF trees' gathers are gone
    assert {o.domain: o.version for o in model.opset_import}["ai.onnx.ml"] == 3

    x = rows(1, 2_000)
    x[:50, 1] = np.arange(50) % 6  # values the splits of an integer column sit next to
    feeds = {i.name: x[:, k] for k, i in enumerate(session.get_inputs())}
    got = session.run(None, feeds)[0].reshape(len(x), -1)
    tf_trees = ensemble(dict(zip(COLUMNS, (tf.constant(x[:, k]) for k in range(len(COLUMNS)))))).numpy()
    margins = booster.predict(xgboost.DMatrix(x), output_margin=True).reshape(len(x), -1)
    np.testing.assert_allclose(got, tf_trees.reshape(len(x), -1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, margins, rtol=1e-5, atol=1e-5)

    # One row alone, or within any batch, gives the same bits.
    alone = np.concatenate([session.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0].reshape(1, -1)
                            for i in range(0, 200)])
    np.testing.assert_array_equal(alone, got[:200])


def test_trees_without_their_json_stop_the_export():
    booster, ensemble = fitted("regression", 1)
    with pytest.raises(UnsupportedOp, match="lists no xgboost.json"):
        exported(ensemble, None)
