"""Training across hosts that share no disk: `python -m tf_train` on hosts of the test's own (network namespaces,
tests/netns.py), each in a mount namespace where this machine's test directories and tfbridge's cache are empty, so
the features, the SavedModel and the epoch backups reach them only through the S3 server (listening on the hosts'
network). As a user's cluster runs it: TF_CONFIG names the hosts' addresses, the output is an `s3://` URI.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from tests import netns
from tests.helpers import committed
from tests.tf_train.test_training import FEATURES, checkpoint_values, with_missing_scores
from tf_train.launcher import launch
from tfbridge.cli import main
from tfbridge.contracts import ArtifactLayout, PipelineConfig
from tfbridge.datasets import synthetic_table
from tfbridge.storage import Location
from tfbridge.storage.attempts import cache_root

pytestmark = pytest.mark.skipif(bool(netns.available()), reason=netns.available() or "")

REPO = str(Path(__file__).resolve().parents[2])
WORKER_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    """Two hosts, and one feature-stage run on local disk (the one-machine reference trains from it) copied to the
    store with the raw data."""
    root = tmp_path_factory.mktemp("hosts")
    pq.write_table(with_missing_scores(synthetic_table(3000, seed=3, categories=200), seed=3), root / "raw.parquet")
    local = config_file(root / "local", str(root / "raw.parquet"), str(root / "local"))
    with pytest.MonkeyPatch.context() as env, netns.hosts(2) as hosts:
        env.setenv("PYTHONPATH", os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
        assert main(["features", "--config", str(local)]) == 0
        for key, value in s3.env.items():
            env.setenv(key, value)
        Location.of("s3://runs/raw.parquet").write_bytes((root / "raw.parquet").read_bytes())
        yield {"root": root, "s3": s3, "hosts": hosts, "features": root / "local" / "features",
               "hidden": (tmp_path_factory.getbasetemp(), cache_root())}


def config_file(directory: Path, data: str, output: str, **train) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {"data": {"path": data}, "label": "target", "task": "regression", "features": FEATURES,
              "output": output, "train": {"batch_size": 256, "epochs": 2, "hidden_units": [16],
                                          "learning_rate": 0.01, "seed": 5, **train}}
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    return directory / "config.yaml"


def store_run(cluster, name: str, **train) -> Path:
    """A config whose output is `s3://runs/<name>`, holding the shared features."""
    Location.of(f"s3://runs/{name}/features").upload(cluster["features"])
    return config_file(cluster["root"] / name, "s3://runs/raw.parquet", f"s3://runs/{name}", **train)


class Workers:
    """Two workers on the hosts (worker i on `hosts[i]`), each one's output read line by line."""

    def __init__(self, cluster, config: Path, hosts):
        env = {**os.environ, **cluster["s3"].env_at(netns.gateway())}
        self.procs = netns.start_workers(config, hosts, env, hidden=cluster["hidden"])
        self.lines: list[list[str]] = [[] for _ in self.procs]
        self._readers = [threading.Thread(target=self._read, args=(i,), daemon=True) for i in range(len(self.procs))]
        for reader in self._readers:
            reader.start()

    def _read(self, index: int) -> None:
        for line in self.procs[index].stdout:
            self.lines[index].append(line)

    def output(self, index: int) -> str:
        return "".join(self.lines[index])

    def finish(self) -> list[int]:
        try:
            codes = [p.wait(WORKER_TIMEOUT_S) for p in self.procs]
        finally:
            self.kill()
        for reader in self._readers:
            reader.join(10)
        return codes

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(30)


def test_two_hosts_with_no_shared_disk_train_from_the_store_as_one_worker_does(cluster):
    one = PipelineConfig.from_yaml(config_file(cluster["root"] / "one", str(cluster["root"] / "raw.parquet"),
                                               str(cluster["root"] / "one")))
    one.layout.features_dir.upload(cluster["features"])
    launch(one, workers=1)
    config = store_run(cluster, "two-hosts")
    workers = Workers(cluster, config, cluster["hosts"])
    codes = workers.finish()
    assert codes == [0, 0], workers.output(0)[-4000:] + workers.output(1)[-4000:]
    on_store = ArtifactLayout(cluster["s3"].data / "runs" / "two-hosts")  # the server's objects, as files
    one_weights, two_weights = (checkpoint_values(committed(layout).saved_model_dir) for layout in
                                (one.layout, on_store))
    assert one_weights.keys() == two_weights.keys()
    for key, value in one_weights.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(two_weights[key], value, atol=1e-4, err_msg=key)
    assert json.loads(committed(on_store).metrics_path.read_text())["fitting"]["workers"] == 2
    assert not (on_store.root.local / "model" / "backup").exists()  # a finished run's backups are removed


def test_a_killed_host_and_a_restarted_cluster_resume_from_the_backup_in_the_store(cluster):
    """Worker 1 killed after the chief sent epoch 2's backup; worker 0 stopped as a cluster manager stops a job
    whose worker failed; both started again on the other host, on empty disks: each fetches the backup from the
    store and training goes on from the epoch after it."""
    epochs = 8
    config = store_run(cluster, "fault", epochs=epochs, seed=9, batch_size=32)
    record = Location.of("s3://runs/fault/model/backup/backup.json")
    first = Workers(cluster, config, cluster["hosts"])
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while not (record.exists() and json.loads(record.read_text())["epoch"] >= 2):
        assert time.monotonic() < deadline and all(p.poll() is None for p in first.procs), first.output(0)[-4000:]
        time.sleep(0.2)
    first.procs[1].send_signal(signal.SIGKILL)
    first.procs[1].wait(30)
    first.kill()
    backed_up = json.loads(record.read_text())["epoch"]
    assert 2 <= backed_up < epochs

    second = Workers(cluster, config, cluster["hosts"][::-1])
    codes = second.finish()
    assert codes == [0, 0], second.output(0)[-4000:] + second.output(1)[-4000:]
    for index in (0, 1):
        output = second.output(index)
        assert f"resuming from the backup in s3://runs/fault/model/backup after epoch {backed_up}" in output, output
        assert [int(e) for e in re.findall(r": epoch (\d+)/", output)] == list(range(backed_up + 1, epochs + 1))
    on_store = ArtifactLayout(cluster["s3"].data / "runs" / "fault")
    metrics = json.loads(committed(on_store).metrics_path.read_text())
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, epochs + 1))  # the history came with the backup
    assert metrics["eval"]["r2"] > 0.7
    assert not (on_store.root.local / "model" / "backup").exists()
