"""The feature stage on Apache Flink through Beam's portable runner, as a user runs it: a session cluster (a JobManager,
a TaskManager of two slots, Beam's job server, an EXTERNAL pool of SDK workers; tests/flinkcluster.py), the data
and the output on an S3 server, the command line of the README.

The SDK workers run in a mount namespace of their own in which this test's directories (the driver's working
directory, temporary files and cache) are empty: what runs on a worker reaches only the store and the job's
`--temp_location`, a directory outside them, as a shared mount would be. Compared with the in-process run of the
same data: the same statistics and the same transformed rows joined by a key, ids and integers equal, floats within
1e-6 relative. Then the faults: a TaskManager killed, an SDK worker killed, in the middle of the transform."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from tests import netns, sparkcluster
from tests.flinkcluster import flink_cluster
from tests.helpers import decode_split
from tests.tfbridge.test_object_store import tfbridge, upload
from tests.tft_features.test_pipeline_parity import FEATURES, make_table
from tfbridge.storage.attempts import cache_root

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or bool(netns.available()),
                                reason="the workers' mount and network namespaces need root, unshare and iproute2")

ROW_GROUP_ROWS = 250  # 12 row groups of the 3,000 rows: work for both slots


@pytest.fixture(scope="module")
def hidden(tmp_path_factory) -> Path:
    """The test's own directories: empty for the SDK workers."""
    return tmp_path_factory.mktemp("driver")


@pytest.fixture(scope="module")
def shared_temp():
    """The job's --temp_location: outside `hidden`, reached by the driver and the workers (a shared mount)."""
    directory = Path(tempfile.mkdtemp(prefix="tfbridge-flink-shared-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def env(s3, python_env, hidden) -> dict:
    """The driver's environment: the store's credentials; its temporary files and cache in `hidden`."""
    base, _ = python_env
    for name in ("tmp", "cache", "cwd"):
        (hidden / name).mkdir(exist_ok=True)
    return {**base, **s3.env, "TMPDIR": str(hidden / "tmp"), "TFBRIDGE_CACHE": str(hidden / "cache")}


@pytest.fixture(scope="module")
def flink(s3, hidden, tmp_path_factory):
    with flink_cluster(tmp_path_factory.mktemp("flink"), env=s3.env, hidden=(hidden,)) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def data(s3, env, hidden) -> str:
    table = make_table(seed=5)
    pq.write_table(table, hidden / "raw.parquet", row_group_size=ROW_GROUP_ROWS)
    upload_env = {**env}
    upload(table, "s3://data/parity/part-0.parquet", upload_env)
    return "s3://data/parity/"


# A small model, two workers (on loopback for the one-machine run, on two hosts for the cluster's).
TRAIN = {"epochs": 1, "batch_size": 128, "hidden_units": [8], "workers": 2, "seed": 7}


def config(path: Path, data: str, output: str, features: dict = FEATURES) -> Path:
    path.write_text(yaml.safe_dump({"data": data, "label": "target", "task": "regression", "output": output,
                                    "features": features, "train": TRAIN}))
    return path


@pytest.fixture(scope="module")
def in_process(hidden, env) -> Path:
    """The same data through the feature stage on this machine, on local disk (Beam's in-process runner): the
    reference for the cluster's features; its `features` directory."""
    c = config(hidden / "local.yaml", str(hidden / "raw.parquet"), str(hidden / "local"))
    done = tfbridge(["features", "--config", str(c)], env, hidden / "cwd")
    assert done.returncode == 0, done.stdout + done.stderr
    return hidden / "local" / "features"


def on_flink(flink, s3, hidden, shared_temp, env, data, name: str, **kwargs) -> subprocess.CompletedProcess:
    c = config(hidden / f"{name}.yaml", data, f"s3://runs/{name}")
    return tfbridge(["features", "--config", str(c), *flink.beam_args(), f"--temp_location={shared_temp}"], env,
                    hidden / "cwd", **kwargs)


def assert_same_features(ours: Path, reference: Path) -> None:
    """stats.json equal (floats within 1e-6 relative) and every split's rows equal, joined by `target`."""
    def stats(features: Path) -> dict:
        manifest = json.loads((features / "manifest.json").read_text())
        return json.loads((features / manifest["attempt"] / "stats.json").read_text())

    assert_close(stats(ours), stats(reference), "stats.json")
    for split in ("train", "eval"):
        got, want = decode_split(ours, split), decode_split(reference, split)
        assert set(got) == set(want)
        order_got, order_want = np.argsort(got["target"]), np.argsort(want["target"])
        np.testing.assert_array_equal(got["target"][order_got], want["target"][order_want])
        assert len(np.unique(got["target"])) == len(got["target"])  # every row once
        for name in want:
            a, b = got[name], want[name]
            if isinstance(a, list):  # token ids: a list per row
                assert [list(a[i]) for i in order_got] == [list(b[i]) for i in order_want], name
            elif np.issubdtype(a.dtype, np.integer):
                np.testing.assert_array_equal(a[order_got], b[order_want], err_msg=name)
            else:
                np.testing.assert_allclose(a[order_got], b[order_want], rtol=1e-6, atol=1e-6, err_msg=name)


def assert_close(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9), (where, got, want)
    else:
        assert got == want, where


def test_every_stage_on_its_cluster_equals_the_one_machine_run(flink, s3, hidden, shared_temp, env, python_env, data,
                                                               in_process, tmp_path_factory):
    """The feature stage on Flink: two slots share the work (the Flink REST API says so), the workers reach only
    the store and the job's temporary directory, and the committed features equal the in-process run's. Training
    on two hosts of the test's own that share no disk (tests/netns.py), from the store into the store. Then
    `tfbridge run --master spark://...`: the stages done on their clusters are up to date, the export runs here, the
    scoring on a Spark standalone cluster from s3a into s3a. The scores equal the one-machine run's, by id."""
    done = on_flink(flink, s3, hidden, shared_temp, env, data, "flink")
    assert done.returncode == 0, done.stdout + done.stderr
    job = flink.jobs()[0]
    assert job["state"] == "FINISHED"
    assert flink.parallelism(job["jid"]) == 2
    for vertex in ("ReadParquet", "WriteShards[train]"):
        subtasks = flink.subtasks(job["jid"], vertex)
        assert len(subtasks) == 2 and all(s["read"] > 0 for s in subtasks), (vertex, subtasks)
    assert_same_features(s3.data / "runs" / "flink" / "features", in_process)
    assert list(shared_temp.iterdir()) == []  # the job's temporary files are gone

    with netns.hosts(2) as hosts:
        base, _ = python_env
        workers = netns.start_workers(hidden / "flink.yaml", hosts, {**base, **s3.env_at(netns.gateway())},
                                      hidden=(tmp_path_factory.getbasetemp(), cache_root()))
        try:
            outputs = [w.communicate(timeout=600)[0] for w in workers]
        finally:
            for w in workers:
                w.kill()
    assert [w.returncode for w in workers] == [0, 0], outputs
    spark_conf = hidden / "spark-conf"
    spark_conf.mkdir()
    # s3proxy implements no bulk delete (DeleteObjects): s3a deletes key by key, as a user of such a server sets.
    (spark_conf / "spark-defaults.conf").write_text("spark.hadoop.fs.s3a.multiobjectdelete.enable false\n")
    with sparkcluster.standalone_cluster(tmp_path_factory.mktemp("spark"), env, sys.executable) as (url, spark_env):
        done = tfbridge(["run", "--config", str(hidden / "flink.yaml"), "--master", url],
                        {**spark_env, "SPARK_CONF_DIR": str(spark_conf)}, hidden / "cwd")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"features .*up to date", done.stdout) and re.search(r"train .*up to date", done.stdout), \
        done.stdout

    # The one-machine run of the same features: training's batches follow the shards' rows, and Flink lays out its
    # shards differently from the in-process runner (compared above), so the reference trains on the cluster's.
    shutil.copytree(s3.data / "runs" / "flink" / "features", hidden / "here" / "features")
    here = config(hidden / "here.yaml", data, str(hidden / "here"))
    done = tfbridge(["run", "--config", str(here)], env, hidden / "cwd")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"features .*up to date", done.stdout), done.stdout
    scores = pq.read_table(s3.data / "runs" / "flink" / "scores").to_pandas().set_index("target")
    local = pq.read_table(hidden / "here" / "scores").to_pandas().set_index("target")
    assert len(scores) == len(local) == 3000 and set(scores.index) == set(local.index)
    np.testing.assert_allclose(scores.loc[local.index, "prediction"], local["prediction"], rtol=1e-4, atol=1e-4)


# Faults: a smaller config (fewer analyses, a shorter job), the same comparison.
FAULT_FEATURES = {"z": ["z_score"], "cat": ["vocabulary"], "q": [{"bucketize": {"num_buckets": 4}}]}


@pytest.fixture(scope="module")
def fault_reference(hidden, env) -> Path:
    c = config(hidden / "fault-local.yaml", str(hidden / "raw.parquet"), str(hidden / "fault-local"), FAULT_FEATURES)
    done = tfbridge(["features", "--config", str(c)], env, hidden / "cwd")
    assert done.returncode == 0, done.stdout + done.stderr
    return hidden / "fault-local" / "features"


def run_with_fault(flink, s3, hidden, env, data, name: str, fault, temp_location: Path | None):
    """The stage on the cluster (FAULT_FEATURES), `fault()` called once the transform has written its first shard
    to the store; returns the command's result and the Flink job."""
    c = config(hidden / f"{name}.yaml", data, f"s3://runs/{name}", FAULT_FEATURES)
    temp = [f"--temp_location={temp_location}"] if temp_location else []
    command = [str(Path(sys.executable).with_name("tfbridge")), "features", "--config", str(c), *flink.beam_args(),
               *temp]
    process = subprocess.Popen(command, env=env, cwd=hidden / "cwd", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    shards = s3.data / "runs" / name / "features"
    while fault is not None and process.poll() is None:
        if any(shards.glob("attempt-*/transformed/*")):
            fault()
            break
        time.sleep(0.05)
    out, err = process.communicate(timeout=900)
    return subprocess.CompletedProcess(command, process.returncode, out, err), flink.jobs()[0]


def test_a_task_manager_killed_mid_transform_reruns_and_commits_every_row_once(flink, s3, hidden, shared_temp, env,
                                                                               data, fault_reference):
    """What Flink does: its restart strategy reruns the failed regions of the job on the TaskManager that replaces
    the dead one. What we promise: the manifest names only the files of the bundles that finished, every row once,
    equal to the in-process run."""
    def kill_and_replace():
        flink.kill_task_manager(-1)
        flink.start_task_manager()  # as a cluster manager replaces a lost host

    done, job = run_with_fault(flink, s3, hidden, env, data, "tm-killed", kill_and_replace, shared_temp)
    assert done.returncode == 0, done.stdout + done.stderr
    assert job["state"] == "FINISHED"
    failures = flink.exceptions(job["jid"])
    assert failures, "the TaskManager died after the job's work was done: nothing was tested"
    assert_same_features(s3.data / "runs" / "tm-killed" / "features", fault_reference)


def test_an_sdk_worker_killed_mid_transform_reruns_and_commits_every_row_once(flink, s3, hidden, shared_temp, env,
                                                                              data, fault_reference):
    def kill_sdk_workers():
        for pid in flink.sdk_workers():
            os.kill(pid, signal.SIGKILL)

    done, job = run_with_fault(flink, s3, hidden, env, data, "sdk-killed", kill_sdk_workers, shared_temp)
    assert done.returncode == 0, done.stdout + done.stderr
    assert job["state"] == "FINISHED"
    assert flink.exceptions(job["jid"]), "no SDK worker was running the transform: nothing was tested"
    assert_same_features(s3.data / "runs" / "sdk-killed" / "features", fault_reference)


def test_workers_that_cannot_reach_the_job_temp_dir_fail_clearly_and_commit_nothing(flink, s3, hidden, env, data):
    """No --temp_location: TFT's temporary directory is the driver's, which these workers do not see (as on other
    hosts); the job writes the transform_fn where the driver cannot read it. The stage says what to pass, and the
    output holds no manifest."""
    done, _ = run_with_fault(flink, s3, hidden, env, data, "no-temp", None, None)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SavedModel file does not exist at" in done.stderr, done.stderr  # TFT's own error, from a worker
    assert "--temp_location=" in done.stderr, done.stderr
    assert not (s3.data / "runs" / "no-temp" / "features" / "manifest.json").exists()
