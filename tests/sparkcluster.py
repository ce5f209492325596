"""A Spark standalone cluster for the tests: Spark's own Master and one Worker (2 cores, 2 GB) on 127.0.0.1, started
from the pyspark install with `spark-class`, as a user starts one host of theirs.

    with standalone_cluster(directory, env) as (url, env):
        subprocess.run(["tfbridge", "score", "--master", url, ...], env=env)
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pyspark

from tests.s3server import free_port

START_TIMEOUT_S = 60


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


@contextlib.contextmanager
def standalone_cluster(directory: Path, env: dict[str, str], python: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Yields the master's URL and the environment a driver needs (the executors' Python, Spark's home); the
    worker's executors keep their logs under `directory`/worker."""
    env = dict(env, PYSPARK_PYTHON=python, SPARK_HOME=str(Path(pyspark.__file__).parent),
               SPARK_LOCAL_IP="127.0.0.1", SPARK_WORKER_DIR=str(Path(directory) / "worker"))
    port = free_port()
    master = spark_class("org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                         "--webui-port", str(free_port()), env=env)
    worker = None
    try:
        wait_for_port(port, START_TIMEOUT_S)
        worker = spark_class("org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--cores", "2",
                             "--memory", "2g", "--webui-port", str(free_port()), "--host", "127.0.0.1", env=env)
        yield f"spark://127.0.0.1:{port}", env
    finally:
        for process in (worker, master):
            if process is not None:
                os.killpg(process.pid, 15)
                process.wait(30)
