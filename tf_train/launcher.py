"""The embedded cluster: N worker processes on loopback, each `python -m tf_train --config C`.

Each worker gets a free port and its own TF_CONFIG; their output is streamed
with a `[worker i]` prefix. When a worker dies, the others are stopped at once
(they would block in their next collective). With retries left, the whole
cluster starts again on fresh ports and resumes from the last epoch backup
(BackupAndRestore); without, the error names the worker, its exit status and
its last log lines.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import yaml

from tfbridge.contracts import (ArtifactLayout, DataError, PipelineConfig, TrainingError, fingerprints,
                                named_attempts)
from tfbridge.storage.attempts import remove_uncommitted

log = logging.getLogger(__name__)

TAIL_LINES = 30
STOP_GRACE_S = 10
# Under model/: the training run that backup/ belongs to. One name for every run, as backup/ is: the next run
# must find it, and `tfbridge` lets one run at a time write an output (tfbridge.contracts.output_lock).
BACKUP_FINGERPRINT = ".backup-fingerprint"
# Attempts under model/ (comma-separated) that a worker's commit leaves in place (tf_train.saving): the models
# trained before this one when several are compared (tf_train.candidates).
KEEP_ATTEMPTS_ENV = "TFBRIDGE_KEEP_MODEL_ATTEMPTS"


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_cores(workers: int) -> list[set[int]] | None:
    """Each worker's own cores: this process's allowed cores cut into `workers` equal sets, or None when there are
    fewer cores than workers (they then share all of them)."""
    cores = sorted(os.sched_getaffinity(0))
    if workers > len(cores):
        return None
    share = len(cores) // workers
    return [set(cores[i * share:(i + 1) * share]) for i in range(workers)]


def resolve_workers(requested: int | str) -> int:
    """`train.workers`: a number is honoured; "auto" is 1. The embedded launcher starts its workers on this one
    host, where one process already uses every core (TF's op threads, tf.data's pool), and each more worker
    adds an all-reduce per step between processes that share those cores: measured on 2 vCPUs
    (benchmarks/train_throughput.py; README, "Training throughput and scaling"), 2 synchronous workers ran at
    0.45-0.6x of one.
    Workers pay off across hosts, each started with its own TF_CONFIG (`python -m tf_train`)."""
    return 1 if requested == "auto" else int(requested)


def thread_env(workers: int) -> dict[str, str]:
    """TF's op thread pools per worker: half of this host's cores shared out, the rest left to input
    and collectives. On 2 cores, 1 thread each: 1 worker went from ~140K to ~215K examples/s.
    Settings in the environment win."""
    threads = str(max(1, (os.cpu_count() or 1) // workers // 2))
    return {key: os.environ.get(key, threads) for key in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


class _Worker:
    """One worker process and a thread that streams its output with a prefix, keeping the tail."""

    _print_lock = threading.Lock()  # whole lines from concurrent workers

    def __init__(self, index: int, command: list[str], env: dict[str, str], out, cores: set[int] | None = None):
        self.index = index
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, bufsize=1, start_new_session=True,
                                        preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
        self._out = out
        self._thread = threading.Thread(target=self._stream, daemon=True)
        self._thread.start()

    def _stream(self):
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            with self._print_lock:
                self._out.write(f"[worker {self.index}] {line}\n")
                self._out.flush()

    def stop(self, grace_s: float = STOP_GRACE_S):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM if grace_s else signal.SIGKILL)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._thread.join(5)


def launch(config: PipelineConfig, workers: int, retries: int = 0, out=None, pin: bool = False) -> int | None:
    """Trains on `workers` local processes; restarts the cluster from its backup up to `retries` times. Several
    models (`train.model: [network, gbdt]`, `train.numeric_embedding: [none, periodic]`) are trained in turn and
    the best kept (tf_train.candidates).
    Returns the epochs an interrupted run had finished when this one resumed from its backup, else None."""
    from tf_train.data import describe, load_training_data

    out = out or sys.stdout
    data = load_training_data(config)  # every check that can fail does so here, before a worker starts
    if any(train.model == "gbdt" for train in config.train.candidates):
        from tf_train.gbdt import FeatureMatrix

        FeatureMatrix(data.features)  # refuses token ids of too many values before a worker starts
    if workers > len(data.train_files):
        raise DataError(f"{workers} workers but {len(data.train_files)} training shards: each worker reads whole "
                        f"files, so use at most {len(data.train_files)}")
    log.info("train: %s; %d worker(s)", describe(data), workers)
    if len(config.train.candidates) == 1:
        return _launch_model(config, data.manifest.fingerprint, workers, retries, out, pin)
    from tf_train.candidates import distinct_candidates, train_candidates

    resumed = []
    candidates = distinct_candidates(config.train, data.features)
    train_candidates(config, candidates, data.manifest.fingerprint, lambda single, keep: resumed.append(
        _launch_model(single, data.manifest.fingerprint, workers, retries, out, pin, keep)))
    return next((epochs for epochs in resumed if epochs is not None), None)


def _launch_model(config: PipelineConfig, features_fingerprint: str, workers: int, retries: int, out, pin: bool,
                  keep: tuple[str, ...] = ()) -> int | None:
    """Trains the one model `config` names, leaving the attempts `keep` under model/ in place (see launch)."""
    from tf_train.backup import StoreBackups
    from tf_train.worker import HISTORY_FILE

    layout = config.layout
    layout.training_dir.mkdir(parents=True, exist_ok=True)
    # A backup is resumed only by the run that made it (an interrupted one, run again): another run starts afresh.
    fingerprint = fingerprints.model_fingerprint(config, features_fingerprint)
    marker = layout.training_dir / BACKUP_FINGERPRINT
    resumed_after = None
    if not layout.root.is_local:  # the workers restore the store's backup of this run, if it has one
        last = StoreBackups(layout, fingerprint).last()
        resumed_after = None if last is None else int(last["epoch"])
    elif layout.backup_dir.exists() and marker.exists() and marker.read_text() == fingerprint:
        resumed_after = epochs_done(config)
    else:
        shutil.rmtree(layout.backup_dir, ignore_errors=True)
        (layout.training_dir / HISTORY_FILE).unlink(missing_ok=True)
        marker.write_text(fingerprint)
    if resumed_after is not None:
        log.info("train: resuming from the backup after epoch %d of %d", resumed_after, config.train.epochs)
    # Named for this launch: the file is this process's to delete, whatever else runs beside it.
    config_path = layout.training_dir / f".launch-config-{os.getpid()}-{uuid.uuid4().hex[:8]}.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    command = [sys.executable, "-m", "tf_train", "--config", str(config_path)]
    try:
        for attempt in range(retries + 1):
            failed = _run_cluster(command, workers, out, layout, pin, keep)
            if failed is None:
                marker.unlink(missing_ok=True)
                return resumed_after
            code, index, tail = failed
            if attempt < retries:
                log.warning("train: worker %d exited with %s; restarting all %d workers from the last backup "
                            "(retry %d of %d)", index, code, workers, attempt + 1, retries)
                continue
            raise TrainingError(f"worker {index} exited with {code} and no retry is left; its last lines:\n"
                                + "\n".join(tail))
    finally:
        config_path.unlink(missing_ok=True)


def _run_cluster(command: list[str], workers: int, out, layout: ArtifactLayout, pin: bool = False,
                 keep: tuple[str, ...] = ()):
    """Runs one attempt: None when every worker finished, else (exit status, worker index, its tail). What the
    workers leave unfinished under model/ (a stopped chief's export) is deleted once they are stopped, all but the
    attempts `keep` (which the workers' commit leaves too)."""
    ports = free_ports(workers)
    procs = []
    cores = worker_cores(workers) if pin else None
    for index in range(workers):
        env = dict(os.environ, TF_CONFIG=tf_config(ports, index), PYTHONUNBUFFERED="1", **thread_env(workers),
                   **{KEEP_ATTEMPTS_ENV: ",".join(keep)})
        procs.append(_Worker(index, command, env, out, cores[index] if cores else None))
        log.info("train: worker %d started, pid %d, port %d", index, procs[-1].process.pid, ports[index])
    grace_s = STOP_GRACE_S
    try:
        while True:
            codes = [w.process.poll() for w in procs]
            for w, code in zip(procs, codes):
                if code not in (None, 0):
                    return code, w.index, list(w.tail)
            if all(code == 0 for code in codes):
                return None
            time.sleep(0.2)
    except KeyboardInterrupt:
        # Stop now: a worker given time would go on training (and might finish), which Ctrl-C means not to do.
        # What it leaves is its last epoch backup, which the next run resumes from.
        grace_s = 0
        raise
    finally:
        for w in procs:
            w.stop(grace_s)
        with contextlib.suppress(OSError):
            named = named_attempts(layout.model_manifest_path)
            remove_uncommitted(layout.model_dir, None if named is None else (*named, *keep))


def epochs_done(config: PipelineConfig) -> int:
    """Epochs the chief has finished in the current training run (its history file), for a progress bar."""
    from tf_train.worker import HISTORY_FILE

    path = config.layout.training_dir / HISTORY_FILE
    return len(json.loads(path.read_text())) if path.exists() else 0


