"""The service as a process: its options, uvicorn, and N worker processes.

    tfbridge serve --model DIR [--host 127.0.0.1] [--port 8080] [--workers 1] [--threads 1] [--max-batch-rows 256]
                   [--max-delay-ms 0]

The model is read, verified and warmed up before the port opens (a model that fails stops the command with
exit 2, or 1 for a broken text-op library, and nothing serves). With `--workers N` uvicorn starts N processes
on one socket, each loading its own session (`--threads` intra-op threads each); their metrics
meet in a temporary PROMETHEUS_MULTIPROC_DIR. SIGTERM (as Kubernetes stops a pod) is uvicorn's graceful
shutdown: no new connections, the requests in flight answered, then exit 0.

A new model version (`http_serve.reload`): SIGHUP reloads it in place, in every worker (the parent of `--workers
N` passes it on); the load endpoint reloads the worker that answers it; `--watch-seconds` reloads every worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile

from tfbridge.contracts import ConfigError

ENVIRONMENT = "TFBRIDGE_SERVE"  # the options, as JSON, for the worker processes uvicorn spawns
WORKER_START_TIMEOUT_S = 60
log = logging.getLogger(__name__)


def add_serve_arguments(parser) -> None:
    """The service's options, for `python -m http_serve` and `tfbridge serve` alike."""
    parser.add_argument("--model", required=True, help="the exported model directory (<output>/model), or its URI")
    parser.add_argument("--name", help="the model's name in the URLs (default: the run's directory name)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="default 8080")
    parser.add_argument("--workers", type=int, default=1, help="worker processes, one session each (default 1)")
    parser.add_argument("--max-batch-rows", type=int, default=256,
                        help="rows coalesced into one onnxruntime run at most (default 256)")
    parser.add_argument("--max-delay-ms", type=float, default=0.0,
                        help="how long a request waits for others to join its batch, at most (default 0: the "
                             "requests that arrive while a run is in progress make the next batch)")
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads per worker (default 1; keep workers x threads within "
                             "the cores)")
    parser.add_argument("--max-request-rows", type=int, default=100_000,
                        help="rows one request may hold (default 100000; more: 413)")
    parser.add_argument("--max-body-mb", type=float, default=64.0,
                        help="the largest request body in MiB (default 64; more: 413)")
    parser.add_argument("--max-string-kb", type=float, default=256.0,
                        help="the longest string value in KiB of UTF-8 (default 256; longer: 413)")
    parser.add_argument("--watch-seconds", type=float,
                        help="every worker reloads the model when its manifest names another graph, checked this "
                             "often (default: only on SIGHUP or POST /v2/repository/models/NAME/load)")
    parser.add_argument("--log", help="also append the access log to this file (it always goes to stderr)")


def serve(args) -> None:
    """Loads and checks the model, then serves until SIGTERM or Ctrl-C."""
    import uvicorn

    from http_serve.model import ServedModel, default_name

    if min(args.workers, args.threads, args.max_batch_rows, args.max_request_rows) < 1 or args.max_delay_ms < 0 \
            or args.max_body_mb <= 0 or args.max_string_kb <= 0 or (args.watch_seconds or 1) <= 0:
        raise ConfigError("--workers, --threads, --max-batch-rows and --max-request-rows take 1 or more, "
                          "--max-delay-ms 0 or more, --max-body-mb, --max-string-kb and --watch-seconds a positive "
                          "number")
    options = {"model": args.model, "name": args.name or default_name(args.model), "log": args.log,
               "threads": args.threads, "watch_seconds": args.watch_seconds,
               "limits": {"max_body_bytes": int(args.max_body_mb * (1 << 20)),
                          "max_request_rows": args.max_request_rows,
                          "max_string_bytes": int(args.max_string_kb * (1 << 10)),
                          "max_batch_rows": args.max_batch_rows, "max_delay_ms": args.max_delay_ms}}
    model = ServedModel.load(options["model"], options["name"], options["threads"])  # checked before a port opens
    log.info("serving %s (version %s, %s) as '%s' on http://%s:%d with %d worker(s) of %d onnxruntime thread(s)",
             args.model, model.version, model.scoring.manifest.onnx.path, model.name, args.host, args.port,
             args.workers, options["threads"])
    # A worker started in place of one that died must answer uvicorn's health check (its model loaded and warmed
    # up) within this time: uvicorn's 5 s are too few for a process's imports and a model's load.
    common = {"host": args.host, "port": args.port, "access_log": False, "log_level": "info",
              "timeout_graceful_shutdown": None, "timeout_worker_healthcheck": WORKER_START_TIMEOUT_S}
    # uvicorn raises the SIGTERM it handled again once it has shut down gracefully; a handler of our own takes it,
    # so that the process exits 0, as an orchestrator expects of a clean stop.
    signal.signal(signal.SIGTERM, lambda *_: None)
    if args.workers == 1:
        uvicorn.run(_app(model, options), **common)
        return
    del model  # each worker loads its own
    with _multiprocess_metrics():
        os.environ[ENVIRONMENT] = json.dumps(options)
        _supervise(uvicorn.Config("http_serve.server:worker_app", factory=True, workers=args.workers, **common))


def _supervise(config) -> None:
    """uvicorn's supervisor of N workers on one socket (what `uvicorn.run` does with workers > 1), with SIGHUP passed
    on to every worker, each of which reloads its model in place (http_serve.reload), rather than taken as uvicorn's
    rolling restart: a worker stopped by that restart closes its clients' idle keep-alive connections, and a request
    sent on one at that moment fails (1 of 932 under load, tests/http_serve/test_reload.py); in place, none does."""
    from uvicorn.supervisors import Multiprocess

    supervisor = Multiprocess(config, sockets=[config.bind_socket()])

    def forward(signum, frame):
        log.info("SIGHUP: every worker reloads the model in place")
        for process in supervisor.processes:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)

    signal.signal(signal.SIGHUP, forward)
    supervisor.run()


def worker_app():
    """A worker process's app (uvicorn's factory): the model loaded again, from the options the server left."""
    from http_serve.model import ServedModel

    options = json.loads(os.environ[ENVIRONMENT])
    return _app(ServedModel.load(options["model"], options["name"], options["threads"]), options)


def _app(model, options: dict):
    from http_serve.app import Limits, create_app
    from http_serve.reload import ModelSlot

    _access_log(options["log"])
    return create_app(ModelSlot(model, options["model"], options["threads"]), Limits(**options["limits"]),
                      options["watch_seconds"])


def _access_log(path: str | None) -> None:
    """The access log on stderr (and in `path`), one line per request, in every worker process; and, in a worker
    uvicorn spawned (whose logging nobody configured), the service's own lines (a reload's) with their time."""
    from http_serve.app import ACCESS_LOG

    ACCESS_LOG.setLevel(logging.INFO)
    ACCESS_LOG.propagate = False
    handlers = [logging.StreamHandler(sys.stderr), *([logging.FileHandler(path)] if path else [])]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s access: %(message)s"))
        ACCESS_LOG.addHandler(handler)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)


@contextlib.contextmanager
def _multiprocess_metrics():
    """A PROMETHEUS_MULTIPROC_DIR for the workers (yours, when set; else a temporary one, removed at exit)."""
    from http_serve.metrics import MULTIPROCESS_DIR

    if os.environ.get(MULTIPROCESS_DIR):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="tfbridge-serve-metrics-") as directory:
        os.environ[MULTIPROCESS_DIR] = directory
        try:
            yield
        finally:
            del os.environ[MULTIPROCESS_DIR]
