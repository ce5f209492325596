"""XGBoost's trees as one ai.onnx.ml TreeEnsembleRegressor in the exported graph.

A gbdt SavedModel evaluates its trees with TF gathers (`tf_train.gbdt.TreeEnsemble`: every tree at once, one
[rows, trees] gather per level), which keeps the trees in the SavedModel that the parity gate, Spark's fallback
and TF users run. Lowered as they are, those gathers scored the demo's 539 trees at about 7,500 rows/s in
onnxruntime. Between the two named identities the SavedModel puts around its trees (`TREES_INPUT`: the matrix
the trees read; `TREES_OUTPUT`: the sum of their leaves, before XGBoost's base margin is added) the export
puts onnxruntime's own tree kernel instead, built from the same trees (`xgboost.json`, from which the TF
trees were made); tf2onnx then drops the gathers nobody reads. The parity gate holds the result to the
SavedModel as it holds any graph.

XGBoost goes left where `x < split` and, for a missing value, the way it learned (`default_left`): in
TreeEnsembleRegressor terms BRANCH_LT with the left child as the true branch, and
`nodes_missing_value_tracks_true` from `default_left`. A multiclass model's trees add to the class
XGBoost's `tree_info` gives them.
"""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnx_export.lowerings import UnsupportedOp, take_over
from tfbridge.contracts.layout import TREES_INPUT, TREES_OUTPUT, XGBOOST_MODEL

ML_DOMAIN = "ai.onnx.ml"
# TreeEnsembleRegressor 3: splits and leaves as float64 tensors, and the matrix cast to float64 (onnxruntime's
# kernel takes the splits' type from its input's), so that the leaves are summed in float64; every float32 value
# is exact in float64, so each row goes down the branches it goes in float32.
# In float32 (version 1) the sum's order, which follows its threads and the batch's size, moved a prediction of
# the demo by 1e-6 of itself between two batchings of the same row (Spark's and the check's). tf2onnx imports
# the domain at version 2; version 3 keeps its other ops (CategoryMapper, LabelEncoder) as they are.
ML_OPSET = 3


def ensemble_attributes(booster_json: bytes) -> tuple[dict, int]:
    """TreeEnsembleRegressor's attributes for the trees of an XGBoost JSON model, and its number of targets."""
    learner = json.loads(booster_json)["learner"]
    model = learner["gradient_booster"]["model"]
    targets = max(1, int(learner["learner_model_param"]["num_class"]))
    attr: dict[str, list] = {key: [] for key in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes", "nodes_truenodeids",
        "nodes_falsenodeids", "nodes_missing_value_tracks_true", "target_treeids", "target_nodeids", "target_ids",
        "target_weights")}
    for tree_id, (tree, target) in enumerate(zip(model["trees"], model["tree_info"])):
        left, right = tree["left_children"], tree["right_children"]
        for node, value in enumerate(tree["split_conditions"]):
            leaf = left[node] < 0
            attr["nodes_treeids"].append(tree_id)
            attr["nodes_nodeids"].append(node)
            attr["nodes_featureids"].append(0 if leaf else int(tree["split_indices"][node]))
            attr["nodes_values"].append(0.0 if leaf else float(np.float32(value)))  # XGBoost's float32 splits
            attr["nodes_modes"].append("LEAF" if leaf else "BRANCH_LT")
            attr["nodes_truenodeids"].append(0 if leaf else int(left[node]))
            attr["nodes_falsenodeids"].append(0 if leaf else int(right[node]))
            attr["nodes_missing_value_tracks_true"].append(0 if leaf else int(tree["default_left"][node]))
            if leaf:
                attr["target_treeids"].append(tree_id)
                attr["target_nodeids"].append(node)
                attr["target_ids"].append(int(target))
                attr["target_weights"].append(float(np.float32(value)))
    for key in ("nodes_values", "target_weights"):
        attr[f"{key}_as_tensor"] = numpy_helper.from_array(np.asarray(attr.pop(key), np.float64), f"{key}_as_tensor")
    attr.update(n_targets=targets, aggregate_function="SUM", post_transform="NONE")
    return attr, targets


def with_ml_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converted graph importing ai.onnx.ml at ML_OPSET where it holds a TreeEnsembleRegressor."""
    if any(node.op_type == "TreeEnsembleRegressor" and node.domain == ML_DOMAIN for node in model.graph.node):
        for opset in model.opset_import:
            if opset.domain == ML_DOMAIN:
                opset.version = max(opset.version, ML_OPSET)
    return model


def trees_marker(ctx, node, name, args, booster_json: bytes | None = None):
    """PreventGradient: the gbdt trees' output marker becomes a TreeEnsembleRegressor on the input marker's
    matrix, built from `booster_json` (bound by the export); any other (the input marker included) is the
    identity it is in TF."""
    if not _named(node, TREES_OUTPUT):
        take_over(ctx, node, "Identity", [node.input[0]])
        return
    if booster_json is None:
        raise UnsupportedOp(f"PreventGradient {name}: the output of gbdt trees, but the model manifest lists no "
                            f"{XGBOOST_MODEL} to build them from: train again")
    markers = [n for n in ctx.get_nodes() if _named(n, TREES_INPUT)]
    if len(markers) != 1:
        raise UnsupportedOp(f"PreventGradient {name}: the output of gbdt trees with {len(markers)} input markers "
                            f"({TREES_INPUT}) in the graph, not one")
    attr, targets = ensemble_attributes(booster_json)
    matrix = ctx.make_node("Cast", [markers[0].input[0]], attr={"to": TensorProto.DOUBLE}).output[0]
    summed = ctx.make_node("TreeEnsembleRegressor", [matrix], attr=attr, domain=ML_DOMAIN,
                           dtypes=[TensorProto.FLOAT], shapes=[[-1, targets]]).output[0]
    if targets == 1:  # [rows, 1] to the TF trees' [rows]
        shape = ctx.make_const(f"{node.name}_rows", np.array([-1], np.int64)).output[0]
        take_over(ctx, node, "Reshape", [summed, shape])
    else:
        take_over(ctx, node, "Identity", [summed])


def _named(node, marker: str) -> bool:
    """Whether a node is the marker op of that name, in whatever scope (TF adds _1, _2 to a repeated name)."""
    return re.fullmatch(rf"{marker}(_\d+)?", node.name.split("/")[-1]) is not None
