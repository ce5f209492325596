"""The `tfbridge` command as users run it: the installed console script, and the built-in demo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from tests.helpers import assert_report_renders, committed, decode_split, onnx_session, serving_inputs, tf_inputs
from tests.http_serve.serving import infer, predict, running
from tfbridge.cli import main
from tfbridge.contracts import ArtifactLayout, ModelManifest
from tfbridge.datasets import DIAMONDS_ROWS


def test_console_script_features_against_pandas(tmp_path, python_env):
    env, _ = python_env
    rng = np.random.default_rng(11)
    n = 400
    table = pa.table({"x": rng.normal(3.0, 2.0, n), "c": rng.choice(["u", "v", "w", "z"], n, p=[.4, .3, .2, .1]),
                      "label": np.arange(n, dtype=float)})
    pq.write_table(table, tmp_path / "small.parquet")
    config = {"data": {"path": str(tmp_path / "small.parquet")}, "label": "label", "task": "regression",
              "features": {"x": ["z_score"], "c": ["vocabulary"]}, "split": {"eval_fraction": 0.0},
              "output": str(tmp_path / "out")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    script = os.path.join(os.path.dirname(sys.executable), "tfbridge")
    done = subprocess.run([script, "features", "--config", str(tmp_path / "c.yaml")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    df = table.to_pandas()
    x = df["x"].to_numpy(np.float32).astype(np.float64)
    stats = json.loads(committed(ArtifactLayout(tmp_path / "out")).stats_path.read_text())["features"]
    assert abs(stats["x"]["mean"] - x.mean()) <= 1e-5 * abs(x.mean())
    assert abs(stats["x"]["std"] - x.std()) <= 1e-5 * x.std()
    counts = df["c"].value_counts()
    order = sorted(counts.index, key=lambda v: (counts[v], v), reverse=True)
    assert stats["c"]["vocabulary_size"] == len(order)

    decoded = decode_split(tmp_path / "out" / "features", "train")
    rows = df.set_index("label").loc[decoded["label"]]
    np.testing.assert_allclose(decoded["x"], (rows["x"].to_numpy(np.float32) - x.mean()) / x.std(), atol=1e-5)
    np.testing.assert_array_equal(decoded["c"], [order.index(v) for v in rows["c"]])


def test_demo_runs_every_stage_on_diamonds_quietly(tmp_path, python_env):
    """README's first command as a user types it: a quiet console (a line per stage, the summary), every library's
    output in runs/demo/logs/, R^2 >= 0.97, the hand-offs in agreement, and a report a browser renders."""
    env, _ = python_env
    script = Path(sys.executable).with_name("tfbridge")
    done = subprocess.run([str(script), "demo", "--output", "runs/demo"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    console = done.stdout + done.stderr
    for stage in ("features", "train", "export", "score", "report"):
        assert re.search(rf"^✓ {stage} +\d+\.\d s", done.stdout, re.M), console
    assert "Summary of runs/demo" in done.stdout and "53,940 rows" in done.stdout, console
    for chatter in ("oneDNN", "cuInit", "I0000", "absl", "tf2onnx", "log4j", "WARN", "py4j", "[worker"):
        assert chatter not in console, (chatter, console)
    logs = tmp_path / "runs" / "demo" / "logs"
    train_log = (logs / "train.log").read_text()
    assert "[worker 0]" in train_log and "[worker 1]" not in train_log  # train.workers: auto is 1 worker here
    rate = re.search(r"^✓ train .* on 1 worker\(s\) at ([\d,]+) examples/s", done.stdout, re.M)
    assert rate and int(rate.group(1).replace(",", "")) > 0, console
    assert "tf2onnx" in (logs / "export.log").read_text() and "log4j" in (logs / "score.log").read_text()
    assert_report_renders(tmp_path / "runs" / "demo")

    # --verbose: the libraries' lines on the terminal again (the export stage alone, on the demo's recorded config).
    recorded = json.loads((tmp_path / "runs" / "demo" / "features" / "manifest.json").read_text())["config"]
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(recorded))
    verbose = subprocess.run([str(script), "export", "--config", "demo.yaml", "--verbose"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "tf2onnx" in verbose.stderr and "✓ export" in verbose.stdout

    run = committed(ArtifactLayout(tmp_path / "runs" / "demo"))
    manifest = json.loads((tmp_path / "runs" / "demo" / "features" / "manifest.json").read_text())
    assert sum(manifest["rows"].values()) == DIAMONDS_ROWS
    stats = json.loads(run.stats_path.read_text())["features"]
    assert set(stats) == {"carat", "cut", "color", "clarity", "depth", "table", "x", "y", "z"}
    assert -1 < stats["carat"]["box_cox_lambda"] < 1 and stats["cut"]["vocabulary_size"] == 5
    assert (tmp_path / "data" / "diamonds.parquet").exists()
    model = tmp_path / "runs" / "demo" / "model"
    metrics = json.loads(run.metrics_path.read_text())
    assert metrics["eval"]["r2"] >= 0.97 and metrics["eval"]["rows"] == manifest["rows"]["eval"], metrics
    fitting = metrics["fitting"]
    # The demo trains the periodic network and the trees on the same rows and keeps the lower validation loss.
    candidates = ModelManifest.read(model / "manifest.json").candidates
    assert [c.model for c in candidates] == ["network (periodic)", "gbdt"], candidates
    kept = next(c for c in candidates if c.kept)
    assert kept.validation_loss == min(c.validation_loss for c in candidates) and sum(c.kept for c in candidates) == 1
    assert f"{kept.model} kept (validation loss" in done.stdout and f"({kept.model}, kept of" in done.stdout, console
    assert fitting.get("model", "network") == kept.model.split(" ")[0]
    assert len(metrics["history"]) == fitting["epochs"] <= (1000 if kept.model == "gbdt" else 40)  # the config's
    assert 1 <= fitting["kept_epoch"] <= fitting["epochs"]
    assert metrics["baseline"]["r2"] < metrics["eval"]["r2"]
    assert (run.saved_model_dir / "saved_model.pb").exists() and (model / "manifest.json").exists()

    # The one ONNX graph agrees with the SavedModel on every diamonds row.
    import tensorflow as tf

    raw = pq.read_table(tmp_path / "data" / "diamonds.parquet")
    feeds = serving_inputs(raw, ModelManifest.read(model / "manifest.json"))
    got = onnx_session(run.onnx_path).run(["prediction"], feeds)[0]
    serve = tf.saved_model.load(str(run.saved_model_dir)).signatures["serving_default"]
    want = serve(**tf_inputs(feeds))["prediction"].numpy()
    assert len(got) == DIAMONDS_ROWS
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.std(want)))

    # Spark scored every row with the same graph, in its own row order: joined back to the raw rows by all their
    # columns (diamonds has no id; a duplicated row has duplicated inputs, so any copy's prediction will do).
    scores = pq.read_table(tmp_path / "runs" / "demo" / "scores").to_pandas()
    assert len(scores) == DIAMONDS_ROWS and set(raw.column_names) < set(scores.columns)
    assert_joined_by_row(raw.to_pandas().assign(onnx=got), scores, raw.column_names)

    # The command the summary prints serves the same model: 2,000 rows in 500-row v2 requests and 50 single rows as
    # instances, each answer the prediction Spark wrote for its row (joined by all its columns).
    rows = raw.to_pandas().sample(2_050, random_state=3)
    columns = ModelManifest.read(model / "manifest.json").inputs
    with running(model, tmp_path / "serve.log") as (_, client):
        served = [infer(client, rows.iloc[i:i + 500], columns, "demo") for i in range(0, 2_000, 500)]
        served += [predict(client, rows.iloc[i:i + 1], columns, "demo") for i in range(2_000, 2_050)]
    by_row = scores.astype({k: str for k in raw.column_names}).groupby(raw.column_names)["prediction"].first()
    keys = pd.MultiIndex.from_frame(rows[raw.column_names].astype(str))
    np.testing.assert_allclose(np.concatenate(served), by_row.loc[keys].to_numpy(), rtol=1e-6, atol=0)


def assert_joined_by_row(raw, scores, keys: list[str]) -> None:
    """Each scored row's prediction vs the ONNX one (`onnx`) of the raw row with the same values in `keys`."""
    raw, scores = raw.astype({k: str for k in keys}), scores.astype({k: str for k in keys})  # categories as text
    assert sorted(map(tuple, scores[keys].to_numpy().tolist())) == sorted(map(tuple, raw[keys].to_numpy().tolist()))
    want = raw.groupby(keys, sort=False)["onnx"].first()
    joined = scores.join(want, on=keys, how="left")
    assert joined["onnx"].notna().all() and len(joined) == len(scores)
    np.testing.assert_allclose(joined["prediction"].to_numpy(), joined["onnx"].to_numpy(), rtol=1e-6, atol=0)


def test_bad_config_exits_2_with_the_key(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("data: x.parquet\nlabel: y\ntask: ranking\nfeatures: {a: [z_score]}\noutput: o\n")
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "'task' must be one of" in capsys.readouterr().err
