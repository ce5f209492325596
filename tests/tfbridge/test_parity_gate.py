"""Parity is a gate: a hand-off beyond its tolerance stops the run before anything downstream uses it.

- ONNX vs SavedModel: a graph re-signed with one changed weight (its manifest sha256 updated, so the integrity
  check passes) stops `tfbridge run` at the export, which then names no graph.
- Spark vs onnxruntime: predictions skewed inside Spark's workers stop `tfbridge score`, which commits nothing.
- The report: scores changed after the run stop `tfbridge report`.
- The comparison itself (`tfbridge.scoring.parity.compare`) and the export's edge rows, on hand-made values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from onnx import numpy_helper

from onnx_export.parity_gate import as_input_types, edge_rows
from tfbridge.cli import main
from tfbridge.contracts import DataError, ModelManifest, RawColumn, TransformStep, file_sha256
from tfbridge.scoring import ScoringModel
from tfbridge.scoring.parity import ONNX_VS_SAVED_MODEL, ParityError, compare


@pytest.fixture
def run_copy(exported, tmp_path):
    """The shared exported run, copied: its config (as a file) now writes there."""
    shutil.copytree(exported.layout.root, tmp_path / "out")
    raw = yaml.safe_load(open(exported.source))
    raw["output"] = str(tmp_path / "out")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    return dataclasses.replace(exported, output=str(tmp_path / "out")), str(tmp_path / "c.yaml")


def resign_with_one_changed_weight(model_dir) -> str:
    """Multiplies the largest weight of the first hidden layer by 1.5, then records the new sha256 in the manifest
    as an export would: the graph is intact as a file, and wrong."""
    model_dir = Path(str(model_dir))
    path = model_dir / json.loads((model_dir / "manifest.json").read_text())["onnx"]["path"]
    graph = onnx.load(str(path))
    kernel = max((t for t in graph.graph.initializer if "hidden_0" in t.name and len(t.dims) == 2),
                 key=lambda t: np.prod(t.dims))
    weights = numpy_helper.to_array(kernel).copy()
    weights.flat[np.argmax(np.abs(weights))] *= 1.5
    kernel.CopyFrom(numpy_helper.from_array(weights, kernel.name))
    onnx.save(graph, str(path))
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["onnx"]["sha256"] = file_sha256(path)
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return kernel.name


def test_run_stops_at_a_graph_that_disagrees_with_its_saved_model(run_copy, capsys):
    config, config_path = run_copy
    layout = config.layout
    scored_before = layout.score_record_path.read_text()
    resign_with_one_changed_weight(layout.model_dir)
    with pytest.raises(DataError, match="never checked against the SavedModel"):  # its sha256 matches, and yet
        ScoringModel.load(layout.model_dir)

    assert main(["run", "--config", config_path]) == 1
    err = capsys.readouterr().err
    assert "ONNX vs SavedModel" in err and "beyond tolerance" in err and "output 'prediction'" in err, err
    assert "eval row" in err or "edge row" in err, err  # the worst rows are named
    assert ModelManifest.read(layout.model_manifest_path).onnx is None  # the manifest names no graph
    assert ScoringModel.load(layout.model_dir).onnx_bytes is None  # scorers fall back to the SavedModel
    assert layout.score_record_path.read_text() == scored_before  # nothing downstream ran

    # The next run exports the SavedModel again, checks it, and goes on.
    assert main(["run", "--config", config_path]) == 0
    graph = ModelManifest.read(layout.model_manifest_path).onnx
    assert graph.proven and graph.parity.rows > 100


def test_scoring_commits_nothing_when_spark_disagrees_with_onnxruntime(exported, python_env, tmp_path):
    env, _ = python_env
    out = tmp_path / "scores"
    script = os.path.join(os.path.dirname(sys.executable), "tfbridge")
    command = [script, "score", "--model", str(exported.layout.model_dir), "--input", exported.data.path,
               "--output", str(out), "--master", "local[2]", "--id-column", "target"]
    done = subprocess.run(command, env=dict(env, TFBRIDGE_SCORE_SKEW="1.001"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Spark vs onnxruntime (scored rows)" in done.stderr and "beyond tolerance" in done.stderr, done.stderr
    assert "output 'prediction' on scored row" in done.stderr, done.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "-staging-" in p.name]


def test_report_stops_when_the_scores_disagree_with_onnxruntime(run_copy, capsys):
    config, config_path = run_copy
    scores = config.layout.scores_dir
    part = sorted(scores.local.glob("*.parquet"))[0]
    table = pq.read_table(part)
    predictions = table.column("prediction").to_numpy().copy()
    predictions[3] = predictions[3] * 1.01 + 1.0
    pq.write_table(table.set_column(table.schema.get_field_index("prediction"), "prediction",
                                    pa.array(predictions)), part)
    assert main(["report", "--config", config_path]) == 1
    err = capsys.readouterr().err
    assert "Spark vs onnxruntime" in err and "1 of" in err, err


def test_compare_holds_each_output_to_its_tolerance():
    rows = lambda i: f"row {i}"  # noqa: E731
    reference = {"prediction": np.array([100.0, 0.0, 50.0, np.nan, np.inf])}
    within = {"prediction": np.array([100.009, 1e-4, 50.0, np.nan, np.inf])}  # 1e-4 relative, 1e-5 of spread 100
    assert compare("a", reference, within, ONNX_VS_SAVED_MODEL, rows).check().max_abs_diff["prediction"] < 0.01
    beyond = {"prediction": np.array([100.0, 0.0, 50.02, 1.0, -np.inf])}
    hand_off = compare("a", reference, beyond, ONNX_VS_SAVED_MODEL, rows)
    assert hand_off.failed == 3 and [w.row for w in hand_off.worst][:2] == ["row 3", "row 4"]
    with pytest.raises(ParityError, match=r"a: 3 of 5 rows beyond tolerance .* output 'prediction' on row 3"):
        hand_off.check()

    probabilities = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    reference = {"label": np.array(["x", "x", "y"], object), "probabilities": probabilities}
    tie_broken_otherwise = {"label": np.array(["y", "x", "y"], object), "probabilities": probabilities + 1e-7}
    assert compare("b", reference, tie_broken_otherwise, ONNX_VS_SAVED_MODEL, rows).passed
    wrong_label = {"label": np.array(["x", "y", "y"], object), "probabilities": probabilities}
    assert compare("b", reference, wrong_label, ONNX_VS_SAVED_MODEL, rows).worst[0].row == "row 1"


def test_edge_rows_cover_each_columns_edges_within_its_steps_domain():
    sample = pa.table({"cat": ["a", "b"], "n": pa.array([3, 7], pa.int64()), "pos": [0.5, 2.0],
                       "miss": [1.0, None], "label": [1.0, 2.0]})
    inputs = {"cat": RawColumn("cat", "string", False), "n": RawColumn("n", "float", False),
              "pos": RawColumn("pos", "float", False, above=0.0), "miss": RawColumn("miss", "float", True)}
    stats = {"n": {"boundaries": [4.0, 5.5]}, "pos": {"box_cox_lambda": 0.3}}
    steps = {"pos": (TransformStep("box_cox", {}), TransformStep("z_score", {})),
             "n": (TransformStep("bucketize", {"num_buckets": 3}),)}
    sample = as_input_types(sample, inputs)
    edges, reasons = edge_rows(sample, inputs, stats, steps)
    assert edges.num_rows == len(reasons) and edges.schema == sample.schema
    column = {name: edges.column(name).to_pylist() for name in inputs}
    assert {"tfbridge-unseen-value", "", "two\nlines"} <= set(column["cat"])
    assert {4.0, 5.5, 3.0, 7.0, 7e6, 0.0} <= set(column["n"])
    assert min(column["pos"]) > 0 and 2e6 in column["pos"]  # box_cox's domain: positive values only
    assert None in column["miss"] and None not in column["n"]
    assert any("'cat' unseen text" in r for r in reasons) and any("quantile boundary 5.5" in r for r in reasons)
