"""Runs that resume: Ctrl-C mid-training leaves nothing half-written and the next run continues from the backed-up
epoch; a run with nothing changed skips every stage; a changed transform redoes the stages from the feature stage."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from tests.helpers import check_hand_offs, committed
from tfbridge.contracts import PipelineConfig

EPOCHS = 8


def stage_lines(stdout: str) -> dict[str, str]:
    """stage -> "ran" or "skip", from the console's lines."""
    out = {}
    for mark, stage, rest in re.findall(r"^([✓·✗]) (\w+) +(.*)$", stdout, re.M):
        out[stage] = "skip" if mark == "·" else "ran" if mark == "✓" else rest.split()[-1]
    return out


def test_interrupted_training_resumes_and_unchanged_stages_are_skipped(tmp_path, python_env, spark):
    env, _ = python_env
    rng = np.random.default_rng(3)
    n = 20_000  # about 2 s an epoch here: Ctrl-C lands mid-training
    x, size = rng.normal(0, 1, n), rng.choice(["S", "M", "L"], n)
    table = pa.table({"id": np.arange(n), "x": x, "size": size,
                      "y": 3 * x + np.where(size == "L", 2.0, 0.0) + rng.normal(0, 0.1, n)})
    pq.write_table(table, tmp_path / "raw.parquet")
    config = {"data": str(tmp_path / "raw.parquet"), "label": "y", "task": "regression",
              "features": {"x": ["z_score"], "size": ["vocabulary"]}, "output": str(tmp_path / "out"),
              "train": {"epochs": EPOCHS, "batch_size": 32, "hidden_units": [8], "workers": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    layout = PipelineConfig.from_yaml(tmp_path / "c.yaml").layout
    command = [str(Path(sys.executable).with_name("tfbridge")), "run", "--config", str(tmp_path / "c.yaml")]

    # Ctrl-C once the chief has finished two epochs.
    history = layout.model_dir / ".history.json"
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (history.exists() and len(json.loads(history.read_text() or "{}")) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stdout + stderr
    assert stage_lines(stdout) == {"features": "ran", "train": "interrupted"}, stdout
    assert "interrupted" in stderr and not layout.model_manifest_path.exists() and layout.backup_dir.exists()
    assert not [p for p in layout.model_dir.local.iterdir() if p.name.startswith("attempt-")]
    interrupted_at = len(json.loads(history.read_text()))

    # The next run: the feature stage is up to date, training resumes at the backed-up epoch.
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert stage_lines(done.stdout) == {"features": "skip", "train": "ran", "export": "ran", "score": "ran",
                                        "report": "ran"}, done.stdout
    train_log = (layout.logs_dir / "train.log").read_text()
    resumed = re.search(rf"resuming from the backup after epoch (\d+) of {EPOCHS}", train_log)
    assert resumed and int(resumed.group(1)) >= interrupted_at >= 2, train_log
    assert f"resumed after epoch {resumed.group(1)} on 1 worker(s)" in done.stdout, done.stdout  # on the console
    metrics = json.loads(committed(layout).metrics_path.read_text())
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, EPOCHS + 1)) and metrics["eval"]["r2"] > 0.9
    check_hand_offs(layout, table.to_pandas(), "id", "id", "regression", float(np.std(table.column("y"))), spark,
                    tmp_path / "raw.parquet")

    # Nothing changed: every stage skipped.
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert stage_lines(again.stdout) == dict.fromkeys(("features", "train", "export", "score", "report"), "skip")
    assert "Summary of" in again.stdout

    # One transform changed: everything from the feature stage on is redone.
    config["features"]["x"] = ["min_max"]
    config["train"]["epochs"] = 2
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    changed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert stage_lines(changed.stdout) == dict.fromkeys(("features", "train", "export", "score", "report"), "ran")
    assert "min" in json.loads(committed(layout).stats_path.read_text())["features"]["x"]
