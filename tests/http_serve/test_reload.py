"""A new model version taken without a restart, as users replace one: the same `--model` path replaced by another
export, then `POST /v2/repository/models/{name}/load`, SIGHUP, or the workers' own watch of the manifest.

Model A is the shared run's export. Model B is a copy whose graph adds 1000 to every prediction, its manifest
recording the new graph's sha256 as the one the export proved (as the export records a graph its parity check
passed): another valid version in a second, where a second `tfbridge run` would take minutes. The damaged model
is a copy of A with one byte of model.onnx changed. The expected answers of A and B come from the scoring core in
this process, for the same rows.
"""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from tests.http_serve.serving import START_TIMEOUT_S, beyond_tolerance, instances, metric, running, v2_inputs
from tfbridge.contracts import ModelManifest
from tfbridge.contracts.files import file_sha256
from tfbridge.scoring import ScoringModel

NAME = "m"
SHIFT = 1000.0
LOAD = f"/v2/repository/models/{NAME}/load"


@pytest.fixture(scope="module")
def versions(model, tmp_path_factory):
    """Model A, model B and the damaged model, each a directory to install; each version's predictions of `rows`."""
    root = tmp_path_factory.mktemp("versions")
    a, b, damaged = root / "a", root / "b", root / "damaged"
    shutil.copytree(str(model["dir"]), a)
    _shifted_copy(a, b)
    shutil.copytree(a, damaged)
    graph = damaged / ModelManifest.read(damaged / "manifest.json").onnx.path
    graph.write_bytes(_one_byte_changed(graph.read_bytes()))
    rows = model["raw"].head(300)
    want = {_version(d): ScoringModel.load(d).predict(rows)["prediction"] for d in (a, b)}
    return {"a": a, "b": b, "damaged": damaged, "rows": rows, "columns": model["columns"], "want": want}


def _shifted_copy(source: Path, to: Path) -> None:
    """A copy of the model whose graph's `prediction` is A's plus SHIFT, recorded as a proven graph."""
    shutil.copytree(source, to)
    manifest = json.loads((to / "manifest.json").read_text())
    path = to / manifest["onnx"]["path"]
    graph = onnx.load(path)
    for node in graph.graph.node:
        node.output[:] = ["unshifted" if name == "prediction" else name for name in node.output]
    graph.graph.initializer.append(numpy_helper.from_array(np.array([SHIFT], np.float32), "shift"))
    graph.graph.node.append(helper.make_node("Add", ["unshifted", "shift"], ["prediction"]))
    onnx.save(graph, path)
    manifest["onnx"]["sha256"] = manifest["onnx"]["parity"]["sha256"] = file_sha256(path)
    (to / "manifest.json").write_text(json.dumps(manifest))


def _one_byte_changed(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:]


def _version(model_dir: Path) -> str:
    return ModelManifest.read(model_dir / "manifest.json").onnx.sha256[:12]


_installs = itertools.count()


def install(source: Path, live: Path) -> None:
    """`source` at the path `live`, replacing what was there by a rename: as a deployment replaces a directory."""
    staging = live.with_name(f"{live.name}.new")
    shutil.copytree(source, staging)
    if live.exists():
        live.rename(live.with_name(f"{live.name}.old{next(_installs)}"))
    staging.rename(live)


class Load:
    """Clients scoring rows of their own in a loop, both forms, until the block ends: every answer recorded with
    the time its request was sent, the rows it asked for and the version the v2 form names."""

    def __init__(self, base_url, rows, columns, clients: int = 6):
        self.base_url, self.rows, self.columns, self.clients = base_url, rows, columns, clients
        self.answers: list[dict] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(k,)) for k in range(clients)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _client(self, k: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            for j in itertools.count():
                if self._stop.is_set():
                    return
                start = (k * 50 + j * 3) % (len(self.rows) - 3)
                rows = self.rows.iloc[start:start + 1 + j % 3]
                sent = time.monotonic()
                try:
                    self.answers.append({"sent": sent, "rows": slice(start, start + len(rows)),
                                         **self._ask(client, rows, j)})
                except httpx.TransportError as e:  # a connection the server closed, or refused: a failed request
                    self.answers.append({"sent": sent, "rows": slice(start, start + len(rows)), "version": None,
                                         "status": type(e).__name__, "values": None, "text": str(e)[:300]})

    def _ask(self, client, rows, j: int) -> dict:
        """One request of `rows`, in the v2 form when `j` is odd, else as instances."""
        if j % 2:
            response = client.post(f"/v2/models/{NAME}/infer", json=v2_inputs(rows, self.columns))
            values = response.json()["outputs"][0]["data"] if response.status_code == 200 else None
            version = response.json().get("model_version")
        else:
            response = client.post(f"/v1/models/{NAME}:predict", json={"instances": instances(rows, self.columns)})
            values = [p["prediction"] for p in response.json()["predictions"]] if response.status_code == 200 else None
            version = None
        return {"version": version, "status": response.status_code, "values": values, "text": response.text[:300]}


def versions_answered(model, versions, answers: list[dict]) -> list[str]:
    """The version each answer came from: the one whose predictions all its rows equal (the one it names in v2)."""
    found = []
    for answer in answers:
        assert answer["status"] == 200, answer
        matching = [version for version, want in versions["want"].items()
                    if beyond_tolerance(model, np.array(answer["values"]), want[answer["rows"]]).size == 0]
        assert len(matching) == 1, answer
        assert answer["version"] in (None, matching[0]), answer
        found.append(matching[0])
    return found


def served(client, versions) -> tuple[str, list]:
    """The version a v2 request is answered by now, and its predictions of the first two rows."""
    rows = versions["rows"].head(2)
    response = client.post(f"/v2/models/{NAME}/infer", json=v2_inputs(rows, versions["columns"]))
    assert response.status_code == 200, response.text
    return response.json()["model_version"], response.json()["outputs"][0]["data"]


def wait_for(condition, what: str, timeout: float = START_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not {what} in {timeout} s"
        time.sleep(0.2)
    return value


def test_a_new_version_is_taken_under_load_and_a_damaged_one_refused(model, versions, tmp_path):
    a, b = _version(versions["a"]), _version(versions["b"])
    live, log = tmp_path / "live" / "model", tmp_path / "serve.log"
    live.parent.mkdir()
    install(versions["a"], live)
    with running(live, log, "--name", NAME, "--max-delay-ms", "5") as (process, client):
        with Load(client.base_url, versions["rows"], model["columns"]) as load:
            time.sleep(1)
            install(versions["b"], live)
            reloaded = client.post(LOAD)
            answered_at = time.monotonic()
            time.sleep(1)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json() == {"name": NAME, "version": b, "previous_version": a, "loaded": True}
        found = versions_answered(model, versions, load.answers)
        after = [v for answer, v in zip(load.answers, found) if answer["sent"] > answered_at]
        assert a in found and after and set(after) == {b}, (len(found), found.count(a), len(after))
        assert served(client, versions)[0] == b

        install(versions["damaged"], live)
        refused = client.post(LOAD)
        assert refused.status_code == 422, refused.text
        assert f"still serving version {b}: DataError: " in refused.json()["error"]
        assert "has sha256" in refused.json()["error"]
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: refused the model" in log.read_text(), "refused on SIGHUP")
        version, values = served(client, versions)
        assert version == b and beyond_tolerance(model, np.array(values), versions["want"][b][:2]).size == 0

        install(versions["a"], live)
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: served(client, versions)[0] == a, "serving A again after SIGHUP")
        assert client.post(LOAD).json() == {"name": NAME, "version": a, "previous_version": a, "loaded": False}
        assert metric(client, "tfbridge_serve_model_info", {"version": a}) == 1
        assert metric(client, "tfbridge_serve_model_info", {"version": b}) == 0
        assert metric(client, "tfbridge_serve_reloads_total", {"result": "loaded"}) == 2
        assert metric(client, "tfbridge_serve_reloads_total", {"result": "refused"}) == 2
        assert metric(client, "tfbridge_serve_requests_total", {"status": "500"}) == 0
        assert process.poll() is None


def workers_on(client) -> dict[str, str]:
    """Each live worker's pid and the version it serves, from the model gauge."""
    text = client.get("/metrics").text
    return {s.labels["pid"]: s.labels["version"] for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "tfbridge_serve_model_info" and s.value == 1}


def both_on(client, version: str, other_than=()) -> dict[str, str] | None:
    """The two live workers (pid: version) once both serve `version`, neither of them one of `other_than`."""
    workers = workers_on(client)
    ready = len(workers) == 2 and set(workers.values()) == {version} and not set(workers) & set(other_than)
    return workers if ready else None


def test_two_workers_take_a_new_version_under_load_by_their_watch_and_on_sighup(model, versions, tmp_path):
    """`--watch-seconds`: each worker reloads in place. SIGHUP to the parent: passed on to every worker, each of
    which reloads in place too (a damaged version refused, the old one serving on). Under load, both times: every
    answer 200 and from exactly one version, and only the new one's once both workers serve it."""
    a, b = _version(versions["a"]), _version(versions["b"])
    live, log = tmp_path / "live" / "model", tmp_path / "serve.log"
    live.parent.mkdir()
    install(versions["a"], live)

    def replaced_under_load(client, version: str, replace) -> None:
        with Load(client.base_url, versions["rows"], model["columns"], clients=8) as load:
            time.sleep(1)
            replace()
            wait_for(lambda: workers_on(client) == {pid: version for pid in first}, f"both workers on {version}")
            on_new = time.monotonic()
            time.sleep(1)
        found = versions_answered(model, versions, load.answers)  # every answer 200, from exactly one version
        after = [v for answer, v in zip(load.answers, found) if answer["sent"] > on_new]
        assert len(set(found)) == 2 and after and set(after) == {version}, (len(found), len(after))

    with running(live, log, "--name", NAME, "--workers", "2", "--watch-seconds", "0.5") as (process, client):
        first = wait_for(lambda: both_on(client, a), "two workers on A")
        replaced_under_load(client, b, lambda: install(versions["b"], live))
        assert metric(client, "tfbridge_serve_requests_total", {"status": "500"}) == 0
    assert process.returncode == 0

    log = tmp_path / "sighup.log"  # no watch: only SIGHUP reloads
    with running(live, log, "--name", NAME, "--workers", "2") as (process, client):
        first = wait_for(lambda: both_on(client, b), "two workers on B")
        install(versions["damaged"], live)
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: log.read_text().count("SIGHUP: refused the model") == 2, "refused by both workers")
        assert workers_on(client) == {pid: b for pid in first}

        install(versions["a"], live)
        replaced_under_load(client, a, lambda: process.send_signal(signal.SIGHUP))
        assert log.read_text().count(f"SIGHUP: now serving version {a}") == 2
        assert metric(client, "tfbridge_serve_requests_total", {"status": "500"}) == 0
    assert process.returncode == 0
