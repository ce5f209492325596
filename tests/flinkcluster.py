"""A Flink session cluster on this machine, as a user runs one for Beam's portable runner: a JobManager, a TaskManager
of two slots (its own JVM, killable), Beam's Flink job server and an EXTERNAL pool of Python SDK workers.

Where each part comes from (fetched once into the tests' cache, `tests.s3server.cache_dir()`):
- Flink 1.19.3 from PyPI: `apache-flink-libraries` (lib/, flink-dist included) and `apache-flink` (bin/, conf/),
  downloaded with pip (no install) and unpacked into a FLINK_HOME;
- the job server: Beam 2.62.0's Flink runner and its dependencies from Maven Central, the jars and SHA-1s that
  tests/flink-job-server.lock lists (Beam publishes no job-server jar for recent versions), run with main class
  `FlinkJobServerDriver`;
- the SDK workers: this interpreter's `apache_beam.runners.worker.worker_pool_main`, the venv's bin first on PATH
  (its workers start `python`), with the environment given (the store's credentials), optionally in a mount
  namespace of its own that hides the directories given (so that a worker that reads the driver's paths fails).

    with flink_cluster(tmp_path, env=s3.env) as flink:
        run(["tfbridge", "features", "--config", c, *flink.beam_args()])
        flink.finished_jobs()
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterator

from tests.s3server import MAVEN, cache_dir, free_port

FLINK_VERSION = "1.19.3"
LOCK = Path(__file__).with_name("flink-job-server.lock")
JOB_SERVER_MAIN = "org.apache.beam.runners.flink.FlinkJobServerDriver"
START_TIMEOUT_S = 180

# The settings a TFT job needs here, measured: TFT's graph wants more network buffers than Flink's default gives
# ("Insufficient number of network buffers: required 512, but only 269 available" with 2 slots per TaskManager), so
# smaller segments and a larger network share. A dead TaskManager is noticed after `heartbeat.timeout`. Each failed
# task counts as one restart, and a lost TaskManager or SDK worker fails every pipelined region it ran at once
# (with 2 attempts allowed, both faults of the tests failed the job): 10 attempts. Beam's gRPC channels to the SDK
# workers take direct memory beyond Flink's network buffers: with none for tasks, the second 1M-row job on one
# cluster failed ("Cannot reserve 2097152 bytes of direct buffer memory"), so 512 MB of task off-heap, taken from
# Flink's managed memory (a fraction of 0.1 instead of 0.4: a portable pipeline's work runs in the SDK workers).
_SETTINGS = {
    "jobmanager.memory.process.size": "1024m",
    "taskmanager.memory.process.size": "2560m",
    "taskmanager.memory.segment-size": "8kb",
    "taskmanager.memory.network.fraction": "0.3",
    "taskmanager.memory.network.min": "512mb",
    "taskmanager.memory.network.max": "1gb",
    "taskmanager.memory.managed.fraction": "0.1",
    "taskmanager.memory.task.off-heap.size": "512mb",
    "restart-strategy.type": "fixed-delay",
    "restart-strategy.fixed-delay.attempts": "10",
    "restart-strategy.fixed-delay.delay": "2 s",
    "heartbeat.interval": "2000",
    "heartbeat.timeout": "10000",
}


def flink_home() -> Path:
    """FLINK_HOME of Flink 1.19.3 from PyPI's two packages, unpacked once."""
    home = cache_dir() / f"flink-{FLINK_VERSION}"
    if (home / "lib" / f"flink-dist-{FLINK_VERSION}.jar").is_file():
        return home
    with tempfile.TemporaryDirectory(dir=cache_dir().parent if cache_dir().exists() else None) as work:
        work = Path(work)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(work),
                        f"apache-flink=={FLINK_VERSION}", f"apache-flink-libraries=={FLINK_VERSION}"], check=True)
        staging = work / "home"
        (staging / "lib").mkdir(parents=True)
        with tarfile.open(next(work.glob("apache-flink-libraries-*.tar.gz"))) as sdist:
            for member in sdist.getmembers():
                parts = Path(member.name).parts
                if member.isfile() and parts[1:3] in (("deps", "lib"), ("deps", "bin")) and len(parts) == 4:
                    if parts[2] == "lib" and not re.match(r"(flink-dist|log4j)-", parts[3]):
                        continue  # the table and connector jars: not what Beam's runner uses
                    target = staging / parts[2] / parts[3]
                    target.parent.mkdir(exist_ok=True)
                    with sdist.extractfile(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        with zipfile.ZipFile(next(work.glob("apache_flink-*.whl"))) as wheel:
            for name in wheel.namelist():
                parts = Path(name).parts
                if parts[:1] == ("pyflink",) and len(parts) == 3 and parts[1] in ("bin", "conf"):
                    target = staging / parts[1] / parts[2]
                    target.parent.mkdir(exist_ok=True)
                    target.write_bytes(wheel.read(name))
                    target.chmod(0o755)
        home.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(home, ignore_errors=True)
        shutil.move(staging, home)
    return home


def job_server_classpath() -> list[Path]:
    """The job server's jars, downloaded in parallel once, each checked against the lock's SHA-1."""
    target = cache_dir() / "beam-flink-job-server-2.62.0"
    target.mkdir(parents=True, exist_ok=True)
    entries = [line.split() for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]

    def fetch(entry: list[str]) -> Path:
        coordinate, sha1 = entry
        group, artifact, version = coordinate.split(":")
        jar = target / f"{group}__{artifact}-{version}.jar"
        if jar.is_file():
            return jar
        url = f"{MAVEN}/{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.jar"
        with urllib.request.urlopen(url, timeout=300) as response:
            data = response.read()
        if hashlib.sha1(data).hexdigest() != sha1:
            raise RuntimeError(f"{url}: SHA-1 {hashlib.sha1(data).hexdigest()}, {LOCK.name} says {sha1}")
        staging = jar.with_name(f".{jar.name}-{os.getpid()}")
        staging.write_bytes(data)
        os.replace(staging, jar)
        return jar

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(fetch, entries))


class ClusterStartError(RuntimeError):
    """A part of the cluster did not come up (a port taken between choosing it and binding it, most often)."""


def _wait_for_port(port: int, process: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise ClusterStartError(f"{what} did not start; see {log}")
        time.sleep(0.3)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


class FlinkCluster:
    """One JobManager, one TaskManager of `slots` slots, a job server and an SDK worker pool, all on 127.0.0.1 with
    free ports; logs under `directory`.

    One TaskManager per worker pool, as Beam's Flink-on-Kubernetes layout has it (the pool a sidecar of each
    TaskManager): the ids a TaskManager gives its SDK workers ("1-1", "2-1", ...) repeat across TaskManagers, and the
    pool keys its workers by id, so with two TaskManagers on one pool, one restarting its environment stopped the
    other's workers and the job waited for them for good (seen here). A killed TaskManager is replaced by a new one,
    as a cluster manager does."""

    def __init__(self, directory: Path, slots: int = 2, env: dict[str, str] | None = None,
                 hidden: tuple[Path, ...] = ()):
        self.directory = Path(directory)
        self.home = flink_home()
        self.conf = self.directory / "conf"
        self.logs = self.directory / "log"
        self.slots, self.env, self.hidden = slots, dict(env or {}), hidden
        self.rest_port, self.job_port, self.worker_port = free_port(), free_port(), free_port()
        self.job_managers: list[subprocess.Popen] = []
        self.task_managers: list[subprocess.Popen] = []
        self.others: list[subprocess.Popen] = []

    # Starting and stopping.
    def start(self) -> None:
        self._write_conf()
        self.job_managers.append(self._flink("jobmanager.sh", "jobmanager"))
        self._wait_for_rest()
        self.start_task_manager()
        self.wait_for_task_managers(1)
        classpath = ":".join(str(jar) for jar in job_server_classpath())
        artifacts = self.directory / "artifacts"
        job_server = self._process("job-server", ["java", "-cp", classpath, JOB_SERVER_MAIN,
                                                  "--flink-master", f"127.0.0.1:{self.rest_port}",
                                                  "--flink-conf-dir", str(self.conf),
                                                  "--job-host", "127.0.0.1", "--job-port", str(self.job_port),
                                                  "--artifact-port", str(free_port()),
                                                  "--expansion-port", str(free_port()),
                                                  "--artifacts-dir", str(artifacts)])
        _wait_for_port(self.job_port, job_server, "Beam's Flink job server", self.logs / "job-server.log")
        self.start_worker_pool()

    def start_task_manager(self) -> None:
        self.task_managers.append(self._flink("taskmanager.sh", f"taskmanager-{len(self.task_managers)}"))

    def start_worker_pool(self) -> None:
        """The EXTERNAL environment: a pool that starts one SDK worker process per request of the TaskManagers."""
        command = [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                   f"--service_port={self.worker_port}"]
        if self.hidden:  # its own mount namespace, an empty tmpfs over each hidden directory
            mounts = " && ".join(f"mount -t tmpfs tfbridge-hidden {d}" for d in self.hidden)
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       f"{mounts} && exec \"$@\"", "sh", *command]
        pool = self._process("sdk-worker-pool", command,
                             env={**os.environ, **self.env,
                                  "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
        _wait_for_port(self.worker_port, pool, "the SDK worker pool", self.logs / "sdk-worker-pool.log")
        self.worker_pool = pool

    def stop(self) -> None:
        for process in [*self.others, *self.task_managers, *self.job_managers]:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)

    def _write_conf(self) -> None:
        self.conf.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        shipped = (self.home / "conf" / "config.yaml").read_text()
        java_opts = re.search(r"^\s*all:\s*(.*)$", shipped, re.M).group(1)  # the --add-opens Java 17 needs
        settings = {
            "env.java.opts.all": java_opts,
            "jobmanager.bind-host": "127.0.0.1", "jobmanager.rpc.address": "127.0.0.1",
            "jobmanager.rpc.port": str(free_port()),
            "taskmanager.bind-host": "127.0.0.1", "taskmanager.host": "127.0.0.1",
            "taskmanager.numberOfTaskSlots": str(self.slots),
            "parallelism.default": str(self.slots),
            "rest.address": "127.0.0.1", "rest.bind-address": "127.0.0.1", "rest.port": str(self.rest_port),
            **_SETTINGS,
        }
        (self.conf / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in settings.items()))
        for name in ("log4j-console.properties", "log4j.properties"):
            shutil.copy(self.home / "conf" / name, self.conf / name)

    def _flink(self, script: str, name: str) -> subprocess.Popen:
        env = {**os.environ, "FLINK_HOME": str(self.home), "FLINK_CONF_DIR": str(self.conf),
               "FLINK_LOG_DIR": str(self.logs), "FLINK_PID_DIR": str(self.directory)}
        return self._process(name, [str(self.home / "bin" / script), "start-foreground"], env=env, keep=False)

    def _process(self, name: str, command: list[str], env: dict[str, str] | None = None,
                 keep: bool = True) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        if keep:
            self.others.append(process)
        return process

    # What a test runs and looks at.
    def beam_args(self) -> list[str]:
        """The pipeline options that send a Beam job here, as a user types them."""
        return ["--runner=PortableRunner", f"--job_endpoint=127.0.0.1:{self.job_port}",
                "--environment_type=EXTERNAL", f"--environment_config=127.0.0.1:{self.worker_port}"]

    def rest(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}{path}", timeout=30) as response:
            return json.load(response)

    def _wait_for_rest(self) -> None:
        """Until the JobManager's REST API answers as Flink's. A port chosen free can be taken by another process
        before the JobManager binds it (a CI run once got HTTP 404 for /taskmanagers from whatever listened there):
        then the JobManager dies of the bind, and `flink_cluster` starts a new cluster on other ports."""
        deadline = time.monotonic() + START_TIMEOUT_S
        job_manager = self.job_managers[0]
        while True:
            with contextlib.suppress(OSError, ValueError):  # not listening yet, a 503 of its leader election
                if "flink-version" in self.rest("/config"):
                    return
            if job_manager.poll() is not None or time.monotonic() > deadline:
                raise ClusterStartError(f"Flink's JobManager did not answer on port {self.rest_port}; "
                                        f"see {self.logs / 'jobmanager.log'}")
            time.sleep(0.5)

    def wait_for_task_managers(self, count: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(self._registered_task_managers()) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {count} TaskManagers registered; see {self.logs}")
            time.sleep(0.5)

    def _registered_task_managers(self) -> list:
        try:
            return self.rest("/taskmanagers")["taskmanagers"]
        except urllib.error.HTTPError as error:  # 503 while the JobManager's REST port is open but its leader not up
            if error.code != 503:
                raise
            return []

    def jobs(self) -> list[dict]:
        """Every job the cluster ran, newest first (id, name, state, duration)."""
        return sorted(self.rest("/jobs/overview")["jobs"], key=lambda j: j["start-time"], reverse=True)

    def subtasks(self, job_id: str, vertex_name: str) -> list[dict]:
        """The subtasks of the job's vertex whose name contains `vertex_name`: each one's index, TaskManager and
        records read and written."""
        vertex = next(v for v in self.rest(f"/jobs/{job_id}")["vertices"] if vertex_name in v["name"])
        return [{"subtask": s["subtask"], "taskmanager": s["taskmanager-id"], "attempt": s["attempt"],
                 "read": s["metrics"]["read-records"], "written": s["metrics"]["write-records"]}
                for s in self.rest(f"/jobs/{job_id}/vertices/{vertex['id']}")["subtasks"]]

    def exceptions(self, job_id: str) -> list[str]:
        """The failures the job recovered from (or died of), oldest first: each one's exception, first line."""
        entries = self.rest(f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
        return [e["stacktrace"].splitlines()[0] for e in reversed(entries)]

    def parallelism(self, job_id: str) -> int:
        return max(v["parallelism"] for v in self.rest(f"/jobs/{job_id}")["vertices"])

    def kill_task_manager(self, index: int) -> None:
        """SIGKILL, as a lost host: Flink notices when its heartbeat times out."""
        os.killpg(self.task_managers[index].pid, signal.SIGKILL)
        self.task_managers[index].wait(30)

    def sdk_workers(self) -> list[int]:
        """The pids of the SDK worker processes the pool has started (Python, its descendants)."""
        found, todo = [], [self.worker_pool.pid]
        while todo:
            children = _children(todo.pop())
            found += children
            todo += children
        return [pid for pid in found if "sdk_worker_main" in _cmdline(pid) or "sdk_worker" in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


@contextlib.contextmanager
def flink_cluster(directory: Path, attempts: int = 3, **kwargs) -> Iterator[FlinkCluster]:
    """A started cluster under `directory` (each attempt at starting one in its own `start-N`, logs kept)."""
    for attempt in range(1, attempts + 1):
        cluster = FlinkCluster(Path(directory) / f"start-{attempt}", **kwargs)
        try:
            cluster.start()
            break
        except ClusterStartError:
            cluster.stop()
            if attempt == attempts:
                raise
    try:
        yield cluster
    finally:
        cluster.stop()
