"""Shared fixtures: the exported model of the parity data, one Spark session, the subprocess environment."""

from __future__ import annotations

import os
import sys

import pytest

from tests.helpers import all_features, with_exact_copy
from tests.s3server import s3_server
from tests.tft_features.test_pipeline_parity import make_table

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def python_env():
    """Environment for subprocesses: the test's interpreter and the repo on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), env.get("PYTHONPATH", "")])
    return env, sys.executable


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """`tfbridge run` (features, 1 epoch on 1 worker, ONNX export) on the parity data: its config. Numbers go
    through periodic embeddings, so the sin and cos of the model are compared at every hand-off too."""
    import pyarrow.parquet as pq
    import yaml

    from tfbridge.cli import main
    from tfbridge.contracts import PipelineConfig

    root = tmp_path_factory.mktemp("exported")
    pq.write_table(with_exact_copy(make_table(seed=5)), root / "raw.parquet")
    config = {"data": {"path": str(root / "raw.parquet")}, "label": "target", "task": "regression",
              "features": all_features(), "output": str(root / "out"),
              "train": {"epochs": 1, "batch_size": 128, "hidden_units": [8], "workers": 1,
                        "numeric_embedding": "periodic"}}
    (root / "c.yaml").write_text(yaml.safe_dump(config))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])
    assert main(["run", "--config", str(root / "c.yaml")]) == 0
    return PipelineConfig.from_yaml(root / "c.yaml")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 server (tests/s3server.py) per test module that asks for one, with buckets `data` and `runs`; it listens
    on every address, so that the test's own hosts (tests/netns.py) reach it too."""
    with s3_server(tmp_path_factory.mktemp("s3"), bind="0.0.0.0") as server:
        server.create_bucket("data")
        server.create_bucket("runs")
        yield server


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for every scoring test: 2 cores, small Arrow batches (several per task)."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("tfbridge-tests")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", "500").getOrCreate())
    yield session
    session.stop()
