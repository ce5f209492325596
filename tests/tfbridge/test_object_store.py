"""Runs where the data lives: `data.path` and `output` on an S3-compatible server (s3proxy, started here), every stage
reading and writing only there; the same scores as the run on local disk; a server that dies mid-write commits
nothing; a file system that cannot be reached says so, naming the URI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.tfbridge.test_resume import stage_lines

ROWS = 3_000
STAGES = ("features", "train", "export", "score", "report")


def raw_table(seed: int = 5) -> pa.Table:
    rng = np.random.default_rng(seed)
    x, size = rng.normal(0, 1, ROWS), rng.choice(["S", "M", "L", "Größe"], ROWS)
    return pa.table({"id": np.arange(ROWS), "x": x, "size": size,
                     "y": 3 * x + np.where(size == "L", 2.0, 0.0) + rng.normal(0, 0.1, ROWS)})


def write_config(path: Path, data: str, output: str, epochs: int = 2) -> Path:
    path.write_text(yaml.safe_dump({
        "data": data, "label": "y", "task": "regression", "output": output,
        "features": {"x": ["z_score"], "size": ["vocabulary"]},
        "train": {"epochs": epochs, "batch_size": 64, "hidden_units": [8], "workers": 1}}))
    return path


def tfbridge(args: list[str], env: dict, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("tfbridge")), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def store_env(s3, python_env, tmp_path_factory) -> dict:
    """The environment of a user whose data is in a bucket: the AWS variables, a cache of its own."""
    env, _ = python_env
    spark_conf = tmp_path_factory.mktemp("spark-conf")
    # s3proxy implements no bulk delete (DeleteObjects): s3a deletes key by key, as a user of such a server sets.
    (spark_conf / "spark-defaults.conf").write_text("spark.hadoop.fs.s3a.multiobjectdelete.enable false\n")
    return {**env, **s3.env, "TFBRIDGE_CACHE": str(tmp_path_factory.mktemp("cache")), "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_CONF_DIR": str(spark_conf)}


def upload(table: pa.Table, uri: str, env: dict) -> None:
    """Through pyarrow's S3 client in a child process (this one keeps no client of the test's server)."""
    local = Path(env["TFBRIDGE_CACHE"]) / "upload.parquet"
    pq.write_table(table, local, row_group_size=1_000)
    code = f"from tfbridge.storage import Location; Location.of({uri!r}).write_bytes(open({str(local)!r}, 'rb').read())"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


def kill_when(s3, appears) -> threading.Thread:
    """Kills the server, as a crash would, once `appears()` (polled) is true."""
    def watch():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if appears():
                s3.stop()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def new_attempts(directory: Path, committed: set[str]) -> bool:
    return directory.is_dir() and any(p.name.startswith("attempt-") and p.name not in committed and any(p.iterdir())
                                      for p in directory.iterdir())


def test_a_run_on_s3_writes_only_there_survives_a_dead_server_and_scores_as_on_local_disk(s3, store_env, tmp_path):
    """Every stage on the store, nothing written where the command runs; a rerun skips all; the server killed mid-
    upload of a SavedModel, then mid-write of the feature stage's shards: each stage fails naming the URI and leaves
    the committed artifacts as they were; restarted, the next run completes, and its scores equal those of the same
    run on local disk, joined by id."""
    upload(raw_table(seed=5), "s3://data/raw/part-0.parquet", store_env)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    on_s3 = write_config(tmp_path / "s3.yaml", "s3://data/raw/", "s3://runs/first")
    done = tfbridge(["run", "--config", str(on_s3)], store_env, cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    assert stage_lines(done.stdout) == dict.fromkeys(STAGES, "ran"), done.stdout
    objects = s3.objects("runs")
    for key in ("first/features/manifest.json", "first/model/manifest.json", "first/scores/_tfbridge_score.json",
                "first/report.html", "first/report/results.json", "first/logs/train.log"):
        assert key in objects, objects
    run = s3.data / "runs" / "first"
    features_manifest = (run / "features/manifest.json").read_bytes()
    attempt = json.loads(features_manifest)["attempt"]
    assert all(key.startswith(f"first/features/{attempt}/") for key in objects
               if key.startswith("first/features/") and not key.endswith("manifest.json")), objects
    again = tfbridge(["run", "--config", str(on_s3)], store_env, cwd)
    assert again.returncode == 0, again.stdout + again.stderr
    assert stage_lines(again.stdout) == dict.fromkeys(STAGES, "skip"), again.stdout

    # The server dies while training uploads its SavedModel (a changed train config: training runs again).
    model_manifest = (run / "model/manifest.json").read_bytes()
    model = json.loads(model_manifest)
    model_attempt = model["attempt"]
    write_config(on_s3, "s3://data/raw/", "s3://runs/first", epochs=3)
    killer = kill_when(s3, lambda: new_attempts(run / "model", {model_attempt, model["onnx"]["path"].split("/")[0]}))
    failed = tfbridge(["train", "--config", str(on_s3)], store_env, cwd)
    killer.join()
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "s3://runs/first/model/attempt-" in failed.stderr, failed.stderr
    assert (run / "model/manifest.json").read_bytes() == model_manifest  # the committed model is still the model
    assert (run / "model" / model_attempt / "saved_model" / "saved_model.pb").is_file()

    # Restarted; then it dies while the feature stage writes the shards of changed data.
    s3.start()
    upload(raw_table(seed=6), "s3://data/raw/part-0.parquet", store_env)
    killer = kill_when(s3, lambda: new_attempts(run / "features", {attempt}))
    failed = tfbridge(["features", "--config", str(on_s3)], store_env, cwd)
    killer.join()
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "tfbridge: error: s3://" in failed.stderr, failed.stderr  # a shard it wrote, or the data it read
    assert (run / "features/manifest.json").read_bytes() == features_manifest

    s3.start()
    done = tfbridge(["run", "--config", str(on_s3)], store_env, cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    assert stage_lines(done.stdout) == dict.fromkeys(STAGES, "ran"), done.stdout
    features = json.loads((run / "features/manifest.json").read_text())
    model = json.loads((run / "model/manifest.json").read_text())
    kept = {f"first/features/{features['attempt']}", f"first/model/{model['attempt']}",
            f"first/model/{model['onnx']['path'].split('/')[0]}"}
    attempts = {key.rsplit("/attempt-", 1)[0] + "/attempt-" + key.rsplit("/attempt-", 1)[1].split("/")[0]
                for key in s3.objects("runs") if key.startswith("first/") and "/attempt-" in key}
    assert attempts == kept  # the crashed and the replaced attempts are gone
    assert list(cwd.iterdir()) == []  # nothing written where the commands ran

    # The same run on local disk: the same scores, row by row.
    pq.write_table(raw_table(seed=6), tmp_path / "raw.parquet", row_group_size=1_000)
    on_disk = write_config(tmp_path / "disk.yaml", str(tmp_path / "raw.parquet"), str(tmp_path / "out"), epochs=3)
    local = tfbridge(["run", "--config", str(on_disk)], store_env, cwd)
    assert local.returncode == 0, local.stdout + local.stderr
    ours = pq.read_table(run / "scores").to_pandas().set_index("id")
    theirs = pq.read_table(tmp_path / "out" / "scores").to_pandas().set_index("id")
    assert len(ours) == ROWS and set(ours.index) == set(theirs.index)
    joined = ours.join(theirs, rsuffix="_local")
    np.testing.assert_allclose(joined["prediction"], joined["prediction_local"], rtol=1e-5, atol=1e-5)
    report = tfbridge(["report", "--output", "s3://runs/first"], store_env, cwd)
    assert report.returncode == 0, report.stdout + report.stderr
    assert list(cwd.iterdir()) == []


def test_an_unreachable_file_system_is_named_in_the_error(store_env, tmp_path):
    """hdfs:// reaches Hadoop's client (here it finds no JVM library for it), not a local path."""
    config = write_config(tmp_path / "c.yaml", "hdfs://namenode.invalid:8020/raw/", str(tmp_path / "out"))
    failed = tfbridge(["features", "--config", str(config)], store_env, tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "tfbridge: error: hdfs://namenode.invalid:8020/raw" in failed.stderr, failed.stderr
    bad = write_config(tmp_path / "bad.yaml", "ftp://host/raw/", str(tmp_path / "out"))
    refused = tfbridge(["features", "--config", str(bad)], store_env, tmp_path)
    assert refused.returncode == 2 and "no file system for 'ftp://'" in refused.stderr, refused.stderr
