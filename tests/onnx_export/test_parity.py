"""ONNX vs SavedModel on fresh raw rows, through the public export, for every transform of the feature library.

One `tfbridge run` on the feature-stage parity data (every transform: features,
a short training run, export) is shared through the `exported` fixture. Fresh rows carry
the edge cases: unseen categories, empty strings, missing values where the
config imputes, values exactly on bucket boundaries, huge and tiny magnitudes.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pyarrow as pa
import pytest
import tensorflow as tf

from tests.helpers import all_features, committed, onnx_session, serving_inputs, tf_inputs, with_exact_copy
from tests.tft_features.test_pipeline_parity import FIXED_BOUNDARIES, HUGE_MAX, make_table
from tf_train.data import model_inputs
from tf_train.model import RawFeaturesModel, save_raw_features_model
from onnx_export.convert import ExportError, convert_saved_model
from tfbridge.contracts import FeaturesManifest, ModelManifest, OnnxGraph


def edge_rows(stats: dict) -> dict[str, list]:
    """Edge values per column, written over the first rows of fresh data."""
    return {
        "cat": ["zzz-unseen", ""], "cat_top": ["", "never"], "cat_exact": ["unseen", ""], "miss_cat": [None, "new"],
        "text": ["", "THE and, of!!", "  Colour\twas\ngreat  ", "dont don't DON'T", "naïve café price"],
        "edges": [*FIXED_BOUNDARIES, -1e30, 1e30], "q": stats["q"]["boundaries"],
        "pos_a": [1e-30, 1e30, 1.0], "pos_b": [1e-20, 3e20], "signed": [-1e6, 1e6, 0.0, -0.0],
        "z": [1e20, -1e20], "mm": [-50.0, 50.0, 1e9], "huge": [1e30, -1e30, 0.0, 3e38],
        "miss_mean": [np.nan, np.nan], "miss_median": [np.nan], "miss_const": [np.nan],
        "px": [1e6, -1e-6], "py": [0.0], "pz": [1e-3], "thr": [0.5, 0.50001],
        "ple": [*stats["ple"]["edges"], -1e30, 1e30, 0.0], "ple_steps": [*stats["ple_steps"]["edges"], 1e-7, 3e38],
    }


EDGE_ROWS = range(10)  # covers the longest edge list (ple's 7 edges and 3 more)


def fresh_rows(seed: int, stats: dict) -> pa.Table:
    """New rows, the first ones replaced by edge cases."""
    table = with_exact_copy(make_table(seed=seed)).to_pandas()
    for column, values in edge_rows(stats).items():
        table.loc[: len(values) - 1, column] = pd_object(values) if table[column].dtype == object else values
    return pa.Table.from_pandas(table, preserve_index=False)


def pd_object(values):
    return np.array(values, dtype=object)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_onnx_predictions_match_the_saved_model(exported, seed):
    layout = exported.layout
    manifest = ModelManifest.read(layout.model_manifest_path)
    stats = json.loads(committed(layout).stats_path.read_text())["features"]
    feeds = serving_inputs(fresh_rows(seed, stats), manifest)
    got = onnx_session(committed(layout).onnx_path).run(["prediction"], feeds)[0]
    want = tf.saved_model.load(str(committed(layout).saved_model_dir)).signatures["serving_default"](
        **tf_inputs(feeds))["prediction"].numpy()
    assert np.isfinite(want).all()
    # float32 in label units: 1e-5 of the label's spread (here ~900), 1e-4 relative for large values
    scale = float(np.std(want[len(EDGE_ROWS):]))
    np.testing.assert_allclose(got, want, atol=1e-5 * scale, rtol=1e-4)


class TransformOnly(RawFeaturesModel):
    """The export's transform half alone, outputs as the model receives them: each feature checked by itself."""

    def _serve(self, raw):
        transformed = self.transform({name: self._tft_input(name, x) for name, x in raw.items()})
        return {f"t_{k}": v for k, v in model_inputs(transformed, self._features).items()}  # not input names


@pytest.fixture(scope="module")
def transform_only(exported, tmp_path_factory):
    layout = exported.layout
    features = FeaturesManifest.read(layout.features_manifest_path)
    module = TransformOnly(str(features.transform_dir(layout.features_dir)), features, dict(features.outputs), None, None)
    path = tmp_path_factory.mktemp("transform") / "saved_model"
    save_raw_features_model(module, str(path))
    manifest = ModelManifest.read(layout.model_manifest_path)
    onnx_path = path.parent / "transform.onnx"
    onnx.save(convert_saved_model(path, manifest.input_names.values()), str(onnx_path))
    return path, onnx_path, manifest


@pytest.mark.parametrize("seed", [21, 22])
def test_every_transform_matches_tf_feature_by_feature(exported, transform_only, seed):
    saved, onnx_path, manifest = transform_only
    stats = json.loads(committed(exported.layout).stats_path.read_text())["features"]
    feeds = serving_inputs(fresh_rows(seed, stats), manifest)
    runner = onnx_session(onnx_path)
    names = [o.name for o in runner.get_outputs()]
    got = {k[2:]: v for k, v in zip(names, runner.run(names, feeds))}
    want = {k[2:]: v.numpy() for k, v in tf.saved_model.load(str(saved)).signatures["serving_default"](
        **tf_inputs(feeds)).items()}
    assert set(got) == set(want) == set(all_features())
    for name in all_features():
        if want[name].dtype.kind in "iu":
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        else:
            np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=1e-4, err_msg=name)
    assert want["cat_exact"][0] == -1 and want["edges"][:3].tolist() == [1, 2, 3]
    # huge's edge rows: 1e30 reaches log1p as it is; -1e30 is clipped to 0, 3e38 to HUGE_MAX
    np.testing.assert_allclose(want["huge"][:4], np.log1p([1e30, 0, 0, HUGE_MAX]), rtol=1e-6)


def test_manifest_records_the_onnx_signature(exported):
    layout = exported.layout
    graph = ModelManifest.read(layout.model_manifest_path).onnx
    assert isinstance(graph, OnnxGraph) and graph.path.endswith("/model.onnx") and graph.opset == 20
    assert graph.custom_ops_library == "onnxruntime_extensions"  # text normalisation's regex replace
    assert graph.inputs["text"] == {"dtype": "string", "shape": [None]}
    assert graph.inputs["z"] == {"dtype": "float32", "shape": [None]}
    assert set(graph.inputs) == set(ModelManifest.read(layout.model_manifest_path).inputs)
    assert graph.outputs["prediction"]["dtype"] == "float32"
    # the model's periodic embeddings are in the graph the parity tests compare
    assert {"Sin", "Cos", "Floor"} <= {node.op_type for node in onnx.load(committed(layout).onnx_path).graph.node}


def test_an_op_with_no_lowering_names_the_op_and_the_feature(tmp_path):
    """A transform graph using tf.strings.length (StringLength: tf2onnx has no handler, nor do we)."""

    class Lengths(tf.Module):
        @tf.function(input_signature=[{"comment": tf.TensorSpec([None], tf.string, name="comment")}])
        def serve(self, raw):
            with tf.name_scope("comment_0_length"):
                return {"n": tf.strings.length(raw["comment"])}

    module = Lengths()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    with pytest.raises(ExportError) as err:
        convert_saved_model(tmp_path / "sm", {"comment": {}})
    message = str(err.value)
    assert "op StringLength (feature 'comment'" in message and "Score with the SavedModel" in message
