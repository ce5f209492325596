"""The HTTP routes (Starlette), one access-log line and the metrics of every request.

    GET  /v2/health/live, /v2/health/ready, /v2, /v2/models/{name}, /v2/models/{name}/ready
    POST /v2/models/{name}/infer        the Open Inference Protocol (KServe v2) REST form
    POST /v1/models/{name}:predict      {"instances": [...]} -> {"predictions": [...]} (TF Serving's and KServe
                                        v1's URL, so their clients work)
    POST /v2/repository/models/{name}/load   a new version of the model directory, if any (http_serve.reload)
    GET  /metrics, /openapi.json

Every request takes the model served when it arrives and keeps it to its answer (decoded, run and answered by
one version), whatever a reload meanwhile serves to the requests after it.

A request the model cannot score as sent gets a 4xx with `{"error": "..."}` naming the column and what was
expected (`protocol.RequestError`, or the scoring core's DataError and MissingValues); a body over the size
limit 413 before it is read whole. Nothing a client sends reaches the scoring thread unchecked, and an error
is always answered as JSON: the worker keeps serving.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from importlib import metadata
from typing import Callable

import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from http_serve import metrics, openapi
from http_serve.batching import Batcher
from http_serve.model import ServedModel, settle_heap
from http_serve.protocol import (RequestError, Rows, column_kind, decode_infer, decode_instances, encode_infer,
                                 encode_predictions, parse_json)
from http_serve.reload import ModelSlot
from tfbridge.contracts import DataError

ACCESS_LOG = logging.getLogger("http_serve.access")
log = logging.getLogger(__name__)
_IN_LOOP_BYTES = 256 << 10  # bodies above this are decoded and answered off the event loop, which keeps serving


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may hold, and how requests are batched (the defaults: `tfbridge serve --help`)."""

    max_body_bytes: int
    max_request_rows: int
    max_string_bytes: int
    max_batch_rows: int
    max_delay_ms: float


def create_app(slot: ModelSlot, limits: Limits, watch_seconds: float | None = None) -> Starlette:
    """The service for a loaded, warmed-up model, and the versions that replace it (`slot`)."""
    batcher = Batcher(limits.max_batch_rows, limits.max_delay_ms / 1000, metrics.observe_batch)
    ready = {"ready": False}
    server = {"name": "tfbridge", "version": metadata.version("tfbridge"), "extensions": ["model_repository"]}

    def served(request: Request) -> ServedModel:
        """The model served now, the one this request keeps; 404 when the URL names another."""
        model = slot.model
        name = request.path_params["name"]
        if name != model.name:
            raise RequestError(f"model '{name}' is not served here; this server serves '{model.name}'", status=404)
        return model

    def scoring(decode_rows: Callable[[ServedModel, dict], Rows],
                encode: Callable[[ServedModel, Rows, dict], dict]) -> Callable:
        """A scoring route: the body read within its limit, decoded and checked (off the loop when big), the rows
        scored in the batcher, the answer encoded; all by the model served when the request arrived."""

        async def endpoint(request: Request) -> Response:
            model = served(request)
            body = await _read_body(request, limits.max_body_bytes)

            rows = await _off_loop(len(body), lambda: decode_rows(model, parse_json(body)))
            request.state.rows = rows.count
            if rows.count < limits.max_batch_rows:  # converted with the requests it is batched with
                outputs = await batcher.score(model.score, rows.columns, rows.count)
            else:  # it runs alone: converted here, in a thread, while the scoring thread runs the ones before it
                feeds = await anyio.to_thread.run_sync(lambda: model.feeds(model.arrays([rows.columns])))
                outputs = await batcher.score(model.run_each, feeds, rows.count)
            return await _off_loop(rows.count * 32, lambda: _answer(encode(model, rows, outputs)))  # ~32 bytes a row

        return _answering(endpoint)

    async def load(request: Request) -> Response:
        """KServe's repository extension: the model directory's version loaded, if it is another; refused with
        the reason (the old version serving on) when it fails verification."""
        served(request)
        outcome = await slot.reload(f"{request.method} {request.url.path}")
        if outcome.refused is not None:
            raise RequestError(f"the model in --model was refused; still serving version {outcome.version}: "
                               f"{outcome.refused}", status=outcome.status)
        return _answer({"name": slot.model.name, "version": outcome.version, "previous_version": outcome.previous,
                        "loaded": outcome.loaded})

    async def model_metadata(request: Request) -> Response:
        model = served(request)
        return _answer({"name": model.name, "versions": [model.version], "platform": "onnxruntime_onnx",
                        "inputs": [{"name": name, "datatype": "FP32" if column_kind(column) == "float" else "BYTES",
                                    "shape": [-1]} for name, column in model.columns.items()],
                        "outputs": _output_metadata(model)})

    async def model_ready(request: Request) -> Response:
        return _answer({"name": served(request).name, "ready": ready["ready"]}, 200 if ready["ready"] else 503)

    async def health_ready(request: Request) -> Response:
        return _answer(ready, 200 if ready["ready"] else 503)

    async def metrics_text(request: Request) -> Response:
        text, content_type = metrics.exposition()
        return Response(text, media_type=content_type)

    async def openapi_document(request: Request) -> Response:
        model = slot.model
        return _answer(openapi.document(model.name, model.version, model.columns, model.output_names, model.task))

    routes = [
        Route("/v2/health/live", _constant({"live": True})),
        Route("/v2/health/ready", health_ready),
        Route("/v2", _constant(server)),
        Route("/v2/models/{name}", _answering(model_metadata)),
        Route("/v2/models/{name}/ready", _answering(model_ready)),
        Route("/v2/models/{name}/infer", scoring(
            lambda model, body: decode_infer(body, model.columns, model.output_names, limits.max_request_rows,
                                             limits.max_string_bytes),
            lambda model, rows, outputs: encode_infer(model.name, model.version, outputs, rows)), methods=["POST"]),
        Route("/v1/models/{name}:predict", scoring(
            lambda model, body: decode_instances(body, model.columns, limits.max_request_rows,
                                                 limits.max_string_bytes),
            lambda model, rows, outputs: encode_predictions(outputs)), methods=["POST"]),
        Route("/v2/repository/models/{name}/load", _answering(load), methods=["POST"]),
        Route("/metrics", metrics_text),
        Route("/openapi.json", openapi_document),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        slot.start(watch_seconds)
        model = slot.model
        metrics.model_loaded(model.name, model.version, model.sha256)
        settle_heap()
        ready["ready"] = True
        try:
            yield
        finally:  # uvicorn has answered every request it took by now
            ready["ready"] = False
            await slot.stop()
            await batcher.close()
            metrics.process_stopped()

    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(AccessLog)],
                     exception_handlers={HTTPException: _http_error})


def _output_metadata(model: ServedModel) -> list[dict]:
    if model.task == "regression":
        return [{"name": model.output_names[0], "datatype": "FP64", "shape": [-1]}]
    classes = model.scoring.manifest.classes
    label = "BYTES" if isinstance(classes[0], str) else "INT64"
    return [{"name": model.output_names[0], "datatype": label, "shape": [-1]},
            {"name": model.output_names[1], "datatype": "FP64", "shape": [-1, len(classes)]}]


def _constant(content: dict) -> Callable:
    """A route that always answers `content` (encoded once)."""
    response = _answer(content)

    async def endpoint(request: Request) -> Response:
        return Response(response.body, media_type="application/json")

    return endpoint


def _answering(handler: Callable) -> Callable:
    """The handler, its errors answered as JSON: 4xx for what the client sent, 500 (logged) for anything else."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestError as e:
            return _answer({"error": str(e)}, e.status)
        except DataError as e:  # the scoring core's check of the values: MissingValues, a value out of range
            return _answer({"error": str(e)}, 400)
        except ClientDisconnect:  # gone before its body arrived: nobody to answer (499, as nginx logs it)
            return Response(status_code=499)
        except Exception as e:  # noqa: BLE001 - a bug of ours: answered and logged, the worker keeps serving
            log.exception("%s %s failed", request.method, request.url.path)
            return _answer({"error": f"internal error: {type(e).__name__}: {e}"}, 500)

    return endpoint


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed `limit` bytes: by its Content-Length, or while read."""
    declared = request.headers.get("content-length", "")
    too_big = RequestError(f"the body exceeds this server's limit of {limit:,} bytes (--max-body-mb): send fewer rows "
                           f"per request", status=413)
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _off_loop(size: int, work: Callable):
    """`work()`, in a worker thread when the request is big, so that other requests are not held up meanwhile."""
    return await anyio.to_thread.run_sync(work) if size > _IN_LOOP_BYTES else work()


def _answer(content: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers,
                    media_type="application/json")


async def _http_error(request: Request, error: HTTPException) -> Response:
    """Starlette's own refusals (no such route, a wrong method) as JSON too."""
    return _answer({"error": f"{error.detail}: {request.method} {request.url.path}"}, error.status_code,
                   error.headers)


class AccessLog:
    """One line per request on the `http_serve.access` logger (method, path, status, rows, milliseconds), and the
    request metrics by route template (so that the metrics have one series per route, not per model name)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500  # if the app fails before it answers

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - start
            route = scope.get("route")
            rows = scope.get("state", {}).get("rows", 0)
            metrics.observe_request(scope["method"], route.path if route is not None else "unmatched", status,
                                    seconds)
            ACCESS_LOG.info("%s %s %d rows=%d %.1fms", scope["method"], scope["path"], status, rows, seconds * 1000)
