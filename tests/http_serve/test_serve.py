"""`tfbridge serve` as users run it: a real server process on a free loopback port, spoken to over HTTP.

One server for most tests (the `server` fixture, small limits so that the limits can be reached); the SIGTERM
and `--workers 2` tests start their own. Expected answers come from the `tfbridge run` that made the model: its
Spark scores (Parquet), joined by the raw data's unique `target`; edge rows that run never scored are held to
the scoring core run in this process. Both within the scoring job's own hand-off tolerance
(`serving.beyond_tolerance`).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import committed
from tests.http_serve.serving import (START_TIMEOUT_S, TFBRIDGE, assert_as_bulk, infer, instances, metric, predict,
                                      running, spark_scores, v2_inputs)
from tests.s3server import free_port
from tfbridge.contracts import ModelManifest

MAX_REQUEST_ROWS = 500
MAX_BODY_MB = 16  # above the 10 MB string the string limit refuses
ROUTES = ["/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{name}", "/v2/models/{name}/ready",
          "/v2/models/{name}/infer", "/v1/models/{name}:predict", "/v2/repository/models/{name}/load", "/metrics",
          "/openapi.json"]


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with running(model["dir"], log, "--max-delay-ms", "5", "--max-batch-rows", "64",
                 "--max-body-mb", str(MAX_BODY_MB), "--max-request-rows", str(MAX_REQUEST_ROWS)) as (process, client):
        yield process, client, log


def test_every_row_as_the_bulk_scores_single_batched_and_as_instances(model, server):
    _, client, _ = server
    raw, columns = model["raw"], model["columns"]
    assert model["outputs"] == ["prediction"]  # the service's names are the Spark scorer's
    for start in range(0, len(raw), MAX_REQUEST_ROWS):
        batch = raw.iloc[start:start + MAX_REQUEST_ROWS]
        assert_as_bulk(model, infer(client, batch, columns), spark_scores(model, batch))
        assert_as_bulk(model, predict(client, batch, columns), spark_scores(model, batch))
    for i in range(0, len(raw), 30):  # 100 single rows, alternating the forms
        row = raw.iloc[i:i + 1]
        single = infer(client, row, columns) if i % 60 else predict(client, row, columns)
        assert_as_bulk(model, single, spark_scores(model, row))


def test_edge_rows_as_the_scoring_core_scores_them(exported, model, server):
    """Unseen categories, empty strings, missing values where the model imputes, boundaries, huge magnitudes,
    non-ASCII and long text: the service equals `ScoringModel.predict` in this process."""
    from tests.onnx_export.test_parity import EDGE_ROWS, fresh_rows
    from tfbridge.scoring import ScoringModel

    _, client, _ = server
    stats = json.loads(committed(exported.layout).stats_path.read_text())["features"]
    frame = fresh_rows(seed=41, stats=stats).to_pandas().head(200)
    frame.loc[len(EDGE_ROWS), "text"] = "Größe ÉTÉ naïve — 東京 😀 ΣΑΣ İstanbul"
    frame.loc[len(EDGE_ROWS) + 1, "cat"] = "ünseen 東京"
    frame.loc[len(EDGE_ROWS) + 2, "text"] = "long words, " * 20_000  # 240 KB of text in one row
    want = ScoringModel.load(model["dir"]).predict(frame)["prediction"]
    assert_as_bulk(model, predict(client, frame, model["columns"]), want)
    assert_as_bulk(model, infer(client, frame, model["columns"]), want)
    singles = [infer(client, frame.iloc[i:i + 1], model["columns"])[0] for i in range(len(EDGE_ROWS) + 3)]
    assert_as_bulk(model, singles, want[:len(singles)])


def test_concurrent_clients_each_get_their_own_rows_and_requests_are_batched(model, server):
    _, client, _ = server
    raw, columns = model["raw"], model["columns"]
    batches_before = metric(client, "tfbridge_serve_batch_requests_count")
    alone_before = metric(client, "tfbridge_serve_batch_requests_bucket", {"le": "1.0"})
    rows_before = metric(client, "tfbridge_serve_rows_total")

    def one_client(k: int) -> int:
        with httpx.Client(base_url=client.base_url, timeout=60) as own:
            sent = 0
            for j in range(8):  # 1 to 3 rows a request, rows of its own; both forms
                start = (k * 8 + j) * 3
                rows = raw.iloc[start:start + 1 + (k + j) % 3]
                got = (infer if j % 2 else predict)(own, rows, columns)
                assert_as_bulk(model, got, spark_scores(model, rows))
                sent += len(rows)
            return sent

    with ThreadPoolExecutor(32) as pool:
        sent = sum(pool.map(one_client, range(32)))
    assert metric(client, "tfbridge_serve_rows_total") - rows_before == sent
    batches = metric(client, "tfbridge_serve_batch_requests_count") - batches_before
    coalesced = batches - (metric(client, "tfbridge_serve_batch_requests_bucket", {"le": "1.0"}) - alone_before)
    assert batches < 32 * 8 and coalesced > 0, (batches, coalesced)  # some runs scored several requests
    assert metric(client, "tfbridge_serve_requests_total",
                  {"route": "/v2/models/{name}/infer", "status": "200"}) >= 32 * 4
    assert metric(client, "tfbridge_serve_model_info") == 1


def _bad_requests(good: dict, columns) -> list[tuple[str, object, int, str]]:
    """(route, body, status, what the error must say): one of each way a request can be wrong."""
    v2 = v2_inputs(pd.DataFrame([good, good, good]), columns)

    def v2_with(name, **changes):
        return {"inputs": [{**entry, **changes} if entry["name"] == name else entry for entry in v2["inputs"]]}

    others = [entry for entry in v2["inputs"] if entry["name"] != "z"]
    instances_route, v2_route = "/v1/models/out:predict", "/v2/models/out/infer"
    return [
        (instances_route, {"instances": [{k: v for k, v in good.items() if k != "z"}]}, 400, "column 'z' is missing"),
        (instances_route, {"instances": [{**good, "bogus": 1}]}, 400, "column 'bogus' is not one the model takes"),
        (instances_route, {"instances": [{**good, "z": "abc"}]}, 400, "column 'z' takes numbers or booleans; "
                                                                      "instance 0 holds 'abc'"),
        (instances_route, {"instances": [good, {**good, "cat": 1.5}]}, 400, "column 'cat' takes strings, integers "
                                                                            "or booleans; instance 1 holds 1.5"),
        (instances_route, {"instances": [{**good, "z": None}]}, 400, "column 'z' has missing values the model "
                                                                     "cannot score"),
        (instances_route, {"instances": [{**good, "pos_a": -1.0}]}, 400, "column 'pos_a' has the value -1.0"),
        (instances_route, {"instances": [{**good, "z": 1e39}]}, 400, "column 'z' in one batch has the value 1e+39, "
                                                                     "beyond float32's range"),
        (instances_route, {"instances": [good] * (MAX_REQUEST_ROWS + 1)}, 413, f"at most {MAX_REQUEST_ROWS}"),
        (instances_route, {"instances": []}, 400, '"instances": a non-empty list'),
        (instances_route, [good], 400, "must be a JSON object, not list"),
        (instances_route, b'{"instances": [', 400, "not valid JSON"),
        (instances_route, b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
        (instances_route, b'{"instances": "\xff"}', 400, "not valid JSON"),
        (instances_route, {"instances": [{**good, "text": "x" * (17 << 20)}]}, 413, "limit of 16,777,216 bytes"),
        (instances_route, {"instances": [good, {**good, "text": "x" * 10_000_000}]}, 413,
         "column 'text': instance 1 holds a string of 10,000,000 bytes; this server takes at most 262,144 bytes per "
         "string (--max-string-kb)"),
        (v2_route, v2_with("cat", data=["a", "b", "é" * 300_000]), 413, "input 'cat': row 2 holds a string of "
                                                                       "600,000 bytes"),
        (v2_route, {"inputs": others}, 400, "input 'z' is missing"),
        (v2_route, {"inputs": [*v2["inputs"], {**others[0], "name": "bogus"}]}, 400, "input 'bogus' is not one"),
        (v2_route, v2_with("z", datatype="BYTES", data=["1", "2", "3"]), 400, "input 'z' has datatype 'BYTES'; the "
                                                                              "model takes numbers or booleans"),
        (v2_route, v2_with("z", data=[1.0, "2", 3.0]), 400, "input 'z' (FP64) takes numbers; row 1 holds '2'"),
        (v2_route, v2_with("cat", datatype="FP64", data=[1.0, 2.0, 3.0]), 400, "input 'cat' has datatype 'FP64'"),
        (v2_route, v2_with("z", shape=[2], data=[1.0, 2.0]), 400, "the inputs differ in rows"),
        (v2_route, v2_with("z", shape=[3], data=[1.0, 2.0]), 400, "input 'z' has shape [3] but 2 values"),
        (v2_route, v2_with("z", shape=[3, 2]), 400, "input 'z' has shape [3, 2]; a column is [rows] or [rows, 1]"),
        (v2_route, v2_with("z", shape=[1_000_000]), 413, "the request has 1,000,000 rows"),
        (v2_route, v2_with("z", data=[None, 1.0, 2.0]), 400, "column 'z' has missing values"),
        (v2_route, {**v2, "outputs": [{"name": "nope"}]}, 400, '"outputs" must be a list'),
        ("/v2/models/nope/infer", v2, 404, "model 'nope' is not served here; this server serves 'out'"),
    ]


def test_bad_requests_get_a_4xx_naming_the_column_and_the_server_keeps_serving(model, server):
    process, client, _ = server
    good = instances(model["raw"].head(1), model["columns"])[0]
    for route, body, status, says in _bad_requests(good, model["columns"]):
        if isinstance(body, bytes):
            response = client.post(route, content=body, headers={"content-type": "application/json"})
        else:
            response = client.post(route, json=body)
        assert response.status_code == status, (route, says, response.text[:500])
        assert says in response.json()["error"], (says, response.json())
    assert client.get("/v2/models/out/infer").status_code == 405
    assert client.get("/no/such/route").json() == {"error": "Not Found: GET /no/such/route"}
    assert process.poll() is None
    assert_as_bulk(model, predict(client, model["raw"].head(3), model["columns"]),
                               spark_scores(model, model["raw"].head(3)))
    assert metric(client, "tfbridge_serve_requests_total", {"status": "500"}) == 0


def test_health_metadata_and_the_access_log(model, server):
    _, client, log = server
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/models/out/ready").json() == {"name": "out", "ready": True}
    assert client.get("/v2").json()["name"] == "tfbridge"
    metadata = client.get("/v2/models/out").json()
    version = ModelManifest.read(Path(str(model["dir"])) / "manifest.json").onnx.sha256[:12]
    assert metadata["versions"] == [version]
    assert [i["name"] for i in metadata["inputs"]] == list(model["columns"])
    assert metadata["outputs"] == [{"name": "prediction", "datatype": "FP64", "shape": [-1]}]
    predict(client, model["raw"].head(2), model["columns"])
    time.sleep(0.2)  # the line is written once the response is sent
    assert " access: POST /v1/models/out:predict 200 rows=2 " in log.read_text()
    assert metric(client, "tfbridge_serve_model_info", {"model": "out", "version": version}) == 1


def test_the_openapi_document_lists_every_route_and_the_models_columns(model, server):
    _, client, _ = server
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.") and sorted(document["paths"]) == sorted(ROUTES)
    schemas = document["components"]["schemas"]
    instance = schemas["Instance"]
    assert list(instance["properties"]) == instance["required"] == list(model["columns"])
    kinds = {name: [kind.get("type", "const") for kind in column["anyOf"]]
             for name, column in instance["properties"].items()}
    assert kinds["z"] == ["number", "boolean"]  # no null: the model does not impute z
    assert "null" in kinds["miss_mean"] and kinds["cat"] == ["string", "integer", "boolean", "null"]
    assert instance["properties"]["pos_a"]["anyOf"][0]["minimum"] > 0  # its steps take only values > 0
    per_column = schemas["InferRequest"]["properties"]["inputs"]["prefixItems"]
    assert [i["anyOf"][0]["properties"]["name"]["const"] for i in per_column] == list(model["columns"])
    for route in ("/v2/models/{name}/infer", "/v1/models/{name}:predict"):
        assert {"200", "400", "413"} <= set(document["paths"][route]["post"]["responses"])


def test_sigterm_finishes_the_requests_in_flight_then_exits_0(model, tmp_path):
    """Requests held in the batcher's queue (a 1.5 s delay) when SIGTERM arrives are answered, then exit 0."""
    raw, columns = model["raw"], model["columns"]
    log = tmp_path / "serve.log"
    with running(model["dir"], log, "--max-delay-ms", "1500") as (process, client):
        with ThreadPoolExecutor(4) as pool:
            answers = [pool.submit(predict, client, raw.iloc[i:i + 2], columns) for i in range(0, 8, 2)]
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            got = [answer.result() for answer in answers]
        assert process.wait(30) == 0
    for i, scores in zip(range(0, 8, 2), got):
        assert_as_bulk(model, scores, spark_scores(model, raw.iloc[i:i + 2]))
    lines = log.read_text().splitlines()
    shutting_down = next(i for i, line in enumerate(lines) if "Shutting down" in line)
    answered = [i for i, line in enumerate(lines) if "access: POST /v1/models/out:predict 200 rows=2" in line]
    assert len(answered) == 4 and min(answered) > shutting_down, lines  # they were in flight at SIGTERM


def test_two_workers_serve_and_their_metrics_add_up(model, tmp_path):
    raw, columns = model["raw"], model["columns"]
    with running(model["dir"], tmp_path / "serve.log", "--workers", "2") as (process, client):
        def workers() -> set[str]:
            text = client.get("/metrics").text
            return {s.labels["pid"] for family in text_string_to_metric_families(text) for s in family.samples
                    if s.name == "tfbridge_serve_model_info"}

        deadline = time.monotonic() + START_TIMEOUT_S
        while len(workers()) < 2:  # the second worker may still be warming up
            assert time.monotonic() < deadline
            time.sleep(0.2)

        def one_client(k: int) -> int:
            with httpx.Client(base_url=client.base_url, timeout=60) as own:  # a connection each: both workers take some
                rows = raw.iloc[k * 5:k * 5 + 5]
                assert_as_bulk(model, predict(own, rows, columns), spark_scores(model, rows))
                return len(rows)

        with ThreadPoolExecutor(8) as pool:
            sent = sum(pool.map(one_client, range(40)))
        assert metric(client, "tfbridge_serve_rows_total") == sent
        assert metric(client, "tfbridge_serve_requests_total", {"route": "/v1/models/{name}:predict"}) == 40
    assert process.returncode == 0


def test_a_damaged_graph_is_refused_at_start_and_nothing_serves(exported, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(str(exported.layout.model_dir), model_dir)
    graph = model_dir / ModelManifest.read(model_dir / "manifest.json").onnx.path
    graph.write_bytes(graph.read_bytes() + b"\0")
    done = subprocess.run([str(TFBRIDGE), "serve", "--model", str(model_dir), "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{graph} has sha256" in done.stderr and "Uvicorn running" not in done.stderr


FUZZ_EXAMPLES = 50  # per operation and generation mode: about 10 s for all of them


def test_fuzzed_from_its_own_openapi_document_never_a_5xx(model, server):
    """schemathesis generates requests from `/openapi.json`: ones the document allows (each must be answered 200,
    as the document describes it) and ones it does not (each a 4xx), for every operation; then a good request
    still gets its scores. The v2 inputs are aligned in rows, the one rule a schema cannot state."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

    process, client, _ = server
    base_url = str(client.base_url)
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")

    def aligned(case):
        inputs = case.body.get("inputs") if isinstance(case.body, dict) else None
        if isinstance(inputs, list):
            rows = min(len(entry["data"]) for entry in inputs)
            for entry in inputs:
                entry["data"], entry["shape"] = entry["data"][:rows], [rows, *entry["shape"][1:]]
        return case

    answered = []
    for operation in (result.ok() for result in schema.get_all_operations()):
        modes = [schemathesis.GenerationMode.POSITIVE]
        if operation.path_parameters or operation.body:  # something a request can get wrong
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:
            @settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode).map(aligned))
            def fuzz(case):
                response = case.call(base_url=base_url)
                case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                         response_schema_conformance])
                if mode == schemathesis.GenerationMode.POSITIVE:
                    assert response.status_code == 200, (response.status_code, response.text[:500])
                else:
                    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
                answered.append(response.status_code)

            fuzz()
    assert answered.count(200) >= 2 * FUZZ_EXAMPLES  # the scoring routes were reached, not only refused
    assert process.poll() is None
    assert_as_bulk(model, predict(client, model["raw"].head(3), model["columns"]),
                   spark_scores(model, model["raw"].head(3)))
    assert metric(client, "tfbridge_serve_requests_total", {"status": "500"}) == 0


def test_the_runs_summary_prints_the_command_that_serves_its_model(exported, tmp_path):
    from tfbridge.cli import summary

    lines = summary(exported, json.loads(exported.layout.report_results_path.read_text())).splitlines()
    (command,) = [line.removeprefix("  serve it  ") for line in lines if line.startswith("  serve it  ")]
    assert command == f"tfbridge serve --model {exported.layout.model_dir}"
    with running(command.split()[-1], tmp_path / "serve.log") as (_, client):
        assert client.get("/v2/health/ready").json() == {"ready": True}
