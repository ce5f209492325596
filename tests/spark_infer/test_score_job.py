"""`tfbridge score` as a job: on a Spark standalone master and worker started on 127.0.0.1 from the pyspark
install, and in local[2,3] with a Python worker that crashes once (Spark retries the task)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pyspark
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_class(*args, env) -> subprocess.Popen:
    script = Path(pyspark.__file__).parent / "bin" / "spark-class"
    return subprocess.Popen([str(script), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


@pytest.fixture
def standalone_cluster(python_env):
    env, python = python_env
    env = dict(env, PYSPARK_PYTHON=python, SPARK_HOME=str(Path(pyspark.__file__).parent),
               SPARK_LOCAL_IP="127.0.0.1")
    port = free_port()
    master = spark_class("org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                         "--webui-port", str(free_port()), env=env)
    worker = None
    try:
        wait_for_port(port, 60)
        worker = spark_class("org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--cores", "2",
                             "--memory", "2g", "--webui-port", str(free_port()), "--host", "127.0.0.1", env=env)
        yield f"spark://127.0.0.1:{port}", env
    finally:
        for process in (worker, master):
            if process is not None:
                os.killpg(process.pid, 15)
                process.wait(30)


def test_score_on_a_standalone_master(exported, standalone_cluster, tmp_path):
    url, env = standalone_cluster
    layout = exported.layout
    script = os.path.join(os.path.dirname(sys.executable), "tfbridge")
    done = subprocess.run([script, "score", "--model", str(layout.model_dir), "--input", exported.data.path,
                           "--output", str(tmp_path / "scores"), "--master", url, "--id-column", "target"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    scores = pq.read_table(tmp_path / "scores").to_pandas().sort_values("target")
    local = pq.read_table(layout.scores_dir).to_pandas().sort_values("target")  # `tfbridge run`'s local[*] scores
    assert list(scores.columns) == ["target", "prediction"] and len(scores) == len(local) == 3000
    np.testing.assert_allclose(scores["prediction"].to_numpy(), local["prediction"].to_numpy(), rtol=1e-6)


def test_a_crashed_python_worker_is_retried_and_every_row_is_scored_once(exported, python_env, tmp_path):
    env, _ = python_env
    marker = tmp_path / "fault-fired"
    env = dict(env, TFBRIDGE_SCORE_FAULT_ONCE=str(marker))
    script = os.path.join(os.path.dirname(sys.executable), "tfbridge")
    done = subprocess.run([script, "score", "--model", str(exported.layout.model_dir), "--input", exported.data.path,
                           "--output", str(tmp_path / "scores"), "--master", "local[2,3]", "--id-column", "target"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.exists()  # a Python worker did die mid-job
    assert "Python worker exited unexpectedly" in done.stderr or "crashed" in done.stderr, done.stderr[-3000:]
    scores = pq.read_table(tmp_path / "scores").to_pandas()
    assert len(scores) == 3000 and scores["target"].is_unique
    local = pq.read_table(exported.layout.scores_dir).to_pandas().set_index("target")
    np.testing.assert_allclose(scores.set_index("target").loc[local.index, "prediction"], local["prediction"],
                               rtol=1e-6)
