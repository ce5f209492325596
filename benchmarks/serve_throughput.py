"""Online scoring over HTTP (`tfbridge serve`) next to a per-request server and onnxruntime alone, side by side.

    .venv/bin/python benchmarks/serve_throughput.py [--repeats 3] [--duration 10] [--model DIR] [--work DIR]
    .venv/bin/python benchmarks/serve_throughput.py --quick        # a smoke run: 3 s a point, one repeat

A diamonds model is trained cheaply (the demo's config, 2 epochs on 1 worker: features, train, export) unless
`--model` names one. Request bodies are real diamonds rows in the Open Inference Protocol (v2) form, one input
per raw column: single-row requests, and 1,000-row requests. Then, each point `--repeats` times, in turn:

  (a) ours           `tfbridge serve` with its default options (1 worker; and `--workers 2`, `--ours-workers`),
                     plus any `--variant NAME='OPTIONS'` (e.g. `--variant delay0='--max-delay-ms 0'`);
  (b) minimal        the same stack (Starlette on uvicorn with uvloop and httptools, the same
                     http_serve.protocol decoding and encoding, orjson, the same ServedModel and its session
                     of 1 intra-op thread, as ours) calling onnxruntime once per request in the event loop: no
                     batching, no metrics, no access log (`--minimal-server`, this file);
  (c) floor          onnxruntime in-process on the same batches, no HTTP: rows/s of `ServedModel.run(feeds)`
                     on feeds made beforehand; 1 session of `cores` threads one run at a time, and `cores`
                     runs at once on a session of 1 thread; the floor is the better of the two.

Each HTTP point is a load generator in another process (`--load`, this file: aiohttp on uvloop, a fixed number
of keep-alive connections, each sending its next request as soon as the last was answered), `--warmup` seconds
not counted then `--duration` seconds measured, loopback only, bounded by `--max-requests` and a per-request
timeout. Every answer must be 200 with one prediction per row sent; any other is counted and shown. Points:
single rows at concurrency 1, 16 and 64, and 1,000-row requests at concurrency 4. Reported: requests/s, rows/s,
p50/p99 latency as the client sees it, the server's mean rows per onnxruntime run (from its /metrics), and the
CPU cores the server and the load generator used, and "other cores": the rest of the machine's busy time
meanwhile (near 0 on a quiet machine; more, and the figures are disturbed). Also the in-process cost of each step of a request
(JSON parse, v2 decode, Arrow -> feeds, run, encode) as the server does them.

The load generator shares the machine's cores with the server it measures (on a 2-core machine it takes a good
part of one), so the absolute figures are a floor for the server on dedicated cores; the ratios compare servers
under the same handicap. Prints medians of `--repeats` runs, the ratios and whether the issue's targets are met:
at concurrency 64 at least 3x the minimal server's requests/s with p99 <= 25 ms; 1,000-row requests at >= 70%
of the in-process floor.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from processes import processes, tree  # noqa: E402 - this script's directory
from tests.s3server import free_port  # noqa: E402

NAME = "bench"  # the model's name in the URLs, for every server
TRAIN = {"model": "network", "epochs": 2, "workers": 1}  # the figures in the README are a network's
START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 30
C64_SPEEDUP, C64_P99_MS, FLOOR_SHARE = 3.0, 25.0, 0.70  # the targets


# --- the model and the request bodies --------------------------------------------------------------------------

def make_model(work: Path) -> Path:
    """The demo's diamonds config, trained briefly: features, train and export, each its own `tfbridge` job."""
    from importlib import resources

    import yaml

    from tfbridge.contracts import ModelManifest
    from tfbridge.datasets import materialize_diamonds

    model_dir = work / "run" / "model"
    manifest = model_dir / "manifest.json"
    if manifest.exists() and ModelManifest.read(manifest).onnx is not None:
        return model_dir
    config = yaml.safe_load(resources.files("tfbridge.configs").joinpath("diamonds.yaml").read_text())
    config["data"]["path"] = str(materialize_diamonds(work / "data" / "diamonds.parquet"))
    config["output"] = str(work / "run")
    config["train"].update(TRAIN)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    tfbridge = str(Path(sys.executable).with_name("tfbridge"))
    for stage in ("features", "train", "export"):
        done = subprocess.run([tfbridge, stage, "--config", str(work / "config.yaml")], check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"tfbridge {stage} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else f"{stage} done", flush=True)
    return model_dir


def write_bodies(model_dir: Path, path: Path, rows: int, count: int, seed: int) -> None:
    """`count` v2 request bodies of `rows` diamonds rows each (random rows, one JSON body a line)."""
    import numpy as np

    from tfbridge.contracts import ModelManifest
    from tfbridge.datasets import diamonds_table

    columns = ModelManifest.read(model_dir / "manifest.json").inputs
    table = diamonds_table()
    data = {name: table.column(name).to_pylist() for name in columns}
    order = np.random.default_rng(seed).permutation(table.num_rows)
    with open(path, "w") as out:
        for k in range(count):
            picked = [int(i) for i in np.take(order, range(k * rows, (k + 1) * rows), mode="wrap")]
            body = {"inputs": [{"name": name, "shape": [rows], "datatype": "BYTES" if column.dtype == "string" else
                                "FP64", "data": [data[name][i] for i in picked]} for name, column in columns.items()]}
            out.write(json.dumps(body, separators=(",", ":")) + "\n")


def decoder(model):
    """`parsed JSON body -> Rows` as the server decodes a v2 request (http_serve.protocol; its string limit,
    where it has one, the server's default)."""
    import inspect

    from http_serve.protocol import decode_infer

    limits = {"max_string_bytes": 256 << 10} if "max_string_bytes" in inspect.signature(decode_infer).parameters \
        else {}
    return lambda body: decode_infer(body, model.columns, model.output_names, 100_000, **limits)


def read_bodies(path: str) -> list[bytes]:
    return [line.rstrip(b"\n") for line in Path(path).read_bytes().splitlines() if line.strip()]


# --- (c) the floor, and the cost of each step of a request, in-process ----------------------------------------

def _run_rate(model, feeds: list[dict], rows: int, concurrent: int, seconds: float) -> float:
    """rows/s of `concurrent` threads each running the feeds in turn for `seconds` (onnxruntime releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()

    def loop(k: int) -> int:
        n = 0
        while time.perf_counter() - start < seconds:
            model.run(feeds[(n * concurrent + k) % len(feeds)])
            n += 1
        return n

    with ThreadPoolExecutor(concurrent) as pool:
        done = sum(pool.map(loop, range(concurrent)))
    return done * rows / (time.perf_counter() - start)


def floor(model_dir: str, bodies_paths: list[str], seconds: float, repeats: int) -> dict:
    """rows/s of ServedModel.run on feeds made beforehand, for each body file's batches; and the microseconds
    of each step of one request as the server takes them (parse, decode, feeds, run, encode)."""
    from http_serve.model import ServedModel
    from http_serve.protocol import encode_infer, parse_json

    cores = len(os.sched_getaffinity(0))
    models = {cores: ServedModel.load(model_dir, NAME, cores), 1: ServedModel.load(model_dir, NAME, 1)}
    model = models[cores]
    result = {"cores": cores}
    for path in bodies_paths:
        bodies = read_bodies(path)
        decode_rows = decoder(model)
        decoded = [decode_rows(parse_json(b)) for b in bodies]
        feeds = [model.feeds(model.arrays([rows.columns])) for rows in decoded]
        rows = decoded[0].count
        entry = {}
        for label, session_model, concurrent in ((f"1 session of {cores} threads, 1 run at a time", model, 1),
                                                  (f"{cores} runs at once, 1 thread each", models[1], cores)):
            rates = [_run_rate(session_model, feeds, rows, concurrent, seconds) for _ in range(repeats)]
            entry[label] = rates
        steps = collections.defaultdict(float)
        n = max(20, min(3000, 3000 // rows))
        for k in range(n):
            body = bodies[k % len(bodies)]
            t0 = time.perf_counter()
            parsed = parse_json(body)
            t1 = time.perf_counter()
            request_rows = decode_rows(parsed)
            t2 = time.perf_counter()
            request_feeds = model.feeds(model.arrays([request_rows.columns]))
            t3 = time.perf_counter()
            outputs = model.run(request_feeds)
            t4 = time.perf_counter()
            orjson.dumps(encode_infer(NAME, model.version, outputs, request_rows))  # as the server answers
            t5 = time.perf_counter()
            for step, a, b in (("parse", t0, t1), ("decode", t1, t2), ("feeds", t2, t3), ("run", t3, t4),
                               ("encode", t4, t5)):
                steps[step] += (b - a) * 1e6 / n
        result[str(rows)] = {"floor": entry, "steps_us": dict(steps), "body_bytes": len(bodies[0])}
    return result


# --- (b) the minimal per-request server ----------------------------------------------------------------------

def minimal_server(model_dir: str, port: int) -> None:
    """The same ASGI stack and request code as ours, one onnxruntime run per request, in the event loop."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from http_serve.model import ServedModel
    from http_serve.protocol import RequestError, encode_infer, parse_json

    model = ServedModel.load(model_dir, NAME, 1)  # as `tfbridge serve` by default
    decode = decoder(model)

    def answer(content: dict, status: int = 200) -> Response:
        return Response(orjson.dumps(content), status, media_type="application/json")  # as ours answers

    async def infer(request):
        body = await request.body()
        try:
            rows = decode(parse_json(body))
            outputs = model.score([rows.columns])
        except RequestError as e:
            return answer({"error": str(e)}, e.status)
        return answer(encode_infer(NAME, model.version, outputs, rows))

    async def ready(request):
        return answer({"ready": True})

    app = Starlette(routes=[Route("/v2/health/ready", ready),
                            Route("/v2/models/{name}/infer", infer, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


# --- the load generator ---------------------------------------------------------------------------------------

async def load(url: str, bodies: list[bytes], rows: int, concurrency: int, warmup: float, duration: float,
               max_requests: int) -> dict:
    """`concurrency` connections, each posting its next body as soon as the last was answered; the answers
    completed in the `duration` after `warmup` counted. Every answer checked: 200 and `rows` predictions."""
    import aiohttp

    latencies: list[float] = []
    errors: collections.Counter = collections.Counter()
    samples: list[str] = []
    sent = 0
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    start = time.perf_counter()
    measured_from, stop = start + warmup, start + warmup + duration

    def error(kind: str, detail: str) -> None:
        errors[kind] += 1
        if len(samples) < 5:
            samples.append(f"{kind}: {detail[:300]}")

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def connection(k: int) -> None:
            nonlocal sent
            while True:
                began = time.perf_counter()
                if began >= stop or sent >= max_requests:
                    return
                body = bodies[sent % len(bodies)]
                sent += 1
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        payload = await response.read()
                        status = response.status
                except Exception as e:  # noqa: BLE001 - counted, shown, and the connection goes on
                    error(type(e).__name__, str(e))
                    continue
                ended = time.perf_counter()
                if status != 200:
                    error(f"HTTP {status}", payload.decode(errors="replace"))
                    continue
                try:
                    shape = json.loads(payload)["outputs"][0]["shape"]
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    error("bad answer", f"{e}: {payload[:200]!r}")
                    continue
                if shape[0] != rows:
                    error("wrong rows", f"{shape} for {rows} rows")
                    continue
                if measured_from <= ended <= stop:
                    latencies.append(ended - began)

        cpu = os.times()
        await asyncio.gather(*(connection(k) for k in range(concurrency)))
        cpu_after = os.times()
    wall = time.perf_counter() - start
    import numpy as np

    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"requests": len(latencies), "requests_per_s": len(latencies) / duration,
            "rows_per_s": len(latencies) * rows / duration, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "errors": sum(errors.values()), "error_kinds": dict(errors),
            "error_samples": samples, "sent": sent, "wall_s": wall,
            "client_cores": (cpu_after.user + cpu_after.system - cpu.user - cpu.system) / wall}


def run_load(url: str, bodies: str, rows: int, concurrency: int, warmup: float, duration: float,
             max_requests: int) -> dict:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(load(url, read_bodies(bodies), rows, concurrency, warmup, duration, max_requests))


# --- the servers ----------------------------------------------------------------------------------------------

class Server:
    """A server process on a free loopback port, its stderr in `log`, ready (warmed up) once started."""

    def __init__(self, label: str, command: list[str], port: int, log: Path, has_metrics: bool):
        self.label, self.command, self.port, self.log, self.has_metrics = label, command, port, log, has_metrics
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "w") as err:
            self.process = subprocess.Popen(self.command, stdout=err, stderr=err)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{self.label} did not become ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def cpu_seconds(self) -> float:
        now = processes()
        return sum(now[pid][2] for pid in tree(self.process.pid, now))

    def batches(self) -> tuple[float, float]:
        """(rows, runs) the server's onnxruntime runs have scored so far, from its /metrics."""
        if not self.has_metrics:
            return 0.0, 0.0
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        found = dict(re.findall(r"^tfbridge_serve_batch_rows_(sum|count)\s+(\S+)$", text, re.MULTILINE))
        return float(found.get("sum", 0)), float(found.get("count", 0))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def machine_busy_seconds() -> float:
    """CPU seconds every core of this machine has spent busy so far (/proc/stat: all but idle and iowait)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def loaded_libraries(pid: int) -> str:
    """Which of uvloop and httptools the server's processes have loaded (uvicorn takes them when installed)."""
    now = processes()
    found = set()
    for member in tree(pid, now):
        try:
            maps = Path(f"/proc/{member}/maps").read_text()
        except OSError:
            continue
        found.update(name for name in ("uvloop", "httptools") if f"/{name}/" in maps)
    return ", ".join(sorted(found)) or "neither uvloop nor httptools"


def measure(server: Server, bodies: Path, rows: int, concurrency: int, args) -> dict:
    """One point against one server: the load generator in its own process; the server's CPU and batches."""
    url = f"{server.url}/v2/models/{NAME}/infer"
    rows_before, runs_before = server.batches()
    cpu_before, wall_before, busy_before = server.cpu_seconds(), time.perf_counter(), machine_busy_seconds()
    done = subprocess.run([sys.executable, __file__, "--load", url, str(bodies), str(rows), str(concurrency),
                           str(args.warmup), str(args.duration), str(args.max_requests)],
                          check=False, capture_output=True, text=True, timeout=args.warmup + args.duration + 120)
    if done.returncode != 0:
        raise SystemExit(f"the load generator failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    wall = time.perf_counter() - wall_before
    result["server_cores"] = (server.cpu_seconds() - cpu_before) / wall
    # Anything else on the machine meanwhile (the load generator's own process start included).
    result["other_cores"] = max(0.0, (machine_busy_seconds() - busy_before) / wall - result["server_cores"]
                                - result["client_cores"] * result["wall_s"] / wall)
    rows_after, runs_after = server.batches()
    result["rows_per_run"] = (rows_after - rows_before) / (runs_after - runs_before) if runs_after > runs_before \
        else None
    return result


# --- the report -----------------------------------------------------------------------------------------------

def _listed(values) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)


def median(results: list[dict], key: str):
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else None


def report(points: list[tuple[str, int, int]], labels: list[str], results: dict, floor_result: dict, args,
           minimal: str, wall_s: float) -> None:
    cores = floor_result["cores"]
    floors = {rows: max(statistics.median(v) for v in floor_result[str(rows)]["floor"].values())
              for rows in {rows for _, rows, _ in points}}
    print(f"\ndiamonds rows in v2 requests, loopback, {os.cpu_count()} cores shared by the server AND the load "
          f"generator (aiohttp, another process); {args.warmup:g} s warm-up + {args.duration:g} s measured per "
          f"point, median of {args.repeats}; whole run {wall_s / 60:.1f} min\n")
    print("| load | server | requests/s | rows/s | p50 ms | p99 ms | vs minimal (req/s) | vs floor (rows/s) | "
          "rows/run | server cores | client cores | other cores | errors | runs (req/s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for point, rows, _ in points:
        base = median(results[(point, minimal)], "requests_per_s") if (point, minimal) in results else None
        for label in labels:
            runs = results[(point, label)]
            rps, rows_s = median(runs, "requests_per_s"), median(runs, "rows_per_s")
            per_run = median(runs, "rows_per_run")
            print(f"| {point} | {label} | {rps:,.0f} | {rows_s:,.0f} | {median(runs, 'p50_ms'):.2f} | "
                  f"{median(runs, 'p99_ms'):.2f} | {rps / base:.2f}x | {rows_s / floors[rows]:.1%} | "
                  f"{'' if per_run is None else f'{per_run:,.1f}'} | {median(runs, 'server_cores'):.2f} | "
                  f"{median(runs, 'client_cores'):.2f} | {median(runs, 'other_cores'):.2f} | "
                  f"{sum(r['errors'] for r in runs)} | "
                  f"{_listed(r['requests_per_s'] for r in runs)} |")
    print("\nThe floor: onnxruntime in-process (`ServedModel.run` on feeds made beforehand, no HTTP, no JSON)\n")
    print("| batch | engine | rows/s | runs |\n|---|---|---:|---|")
    for rows in sorted(floors):
        for engine, rates in floor_result[str(rows)]["floor"].items():
            print(f"| {rows:,} row(s) | {engine} | {statistics.median(rates):,.0f} | "
                  f"{_listed(rates)} |")
    print("\nOne request's steps in-process, as the server takes them (µs; 1 session of "
          f"{cores} threads)\n")
    print("| batch | body | JSON parse | v2 decode | Arrow -> feeds | onnxruntime run | encode | total | "
          "rows/s at that total |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rows in sorted(floors):
        entry = floor_result[str(rows)]
        steps = entry["steps_us"]
        total = sum(steps.values())
        print(f"| {rows:,} row(s) | {entry['body_bytes']:,} B | " + " | ".join(
            f"{steps[s]:,.0f}" for s in ("parse", "decode", "feeds", "run", "encode")) +
            f" | {total:,.0f} | {rows / total * 1e6:,.0f} |")
    print("\nTargets (issue 26):")
    top = max(c for _, r, c in points if r == 1)
    single = next(p for p, r, c in points if r == 1 and c == top)
    batch = next(p for p, r, _ in points if r > 1)
    batch_rows = next(r for _, r, _ in points if r > 1)
    for label in labels:
        if label == minimal:
            continue
        runs = results[(single, label)]
        speedup = median(runs, "requests_per_s") / median(results[(single, minimal)], "requests_per_s")
        p99 = median(runs, "p99_ms")
        share = median(results[(batch, label)], "rows_per_s") / floors[batch_rows]
        print(f"- {label}: at concurrency {top}, {speedup:.2f}x the minimal server's requests/s (target >= "
              f"{C64_SPEEDUP:g}x: {'met' if speedup >= C64_SPEEDUP else 'NOT met'}), p99 {p99:.1f} ms (target <= "
              f"{C64_P99_MS:g} ms: {'met' if p99 <= C64_P99_MS else 'NOT met'}); {batch_rows:,}-row requests at "
              f"{share:.0%} of the floor (target >= {FLOOR_SHARE:.0%}: {'met' if share >= FLOOR_SHARE else 'NOT met'})")
    errors = [(key, r) for key, runs in results.items() for r in runs if r["errors"]]
    print(f"\nErrors: {sum(r['errors'] for _, r in errors) if errors else 'none'} (every answer checked: 200 and one "
          "prediction per row sent)")
    for (point, label), r in errors:
        print(f"- {point}, {label}: {r['error_kinds']}; {r['error_samples']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="serve this exported model directory (default: train one under --work)")
    parser.add_argument("--work", help="where the model, the bodies and the servers' logs go (default: a new "
                                       "temporary directory; a model there is reused)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each point's measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64], help="for single-row requests")
    parser.add_argument("--batch-rows", type=int, default=1000, help="rows in a batch request")
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument("--ours-workers", type=int, nargs="+", default=[1, 2], help="`tfbridge serve --workers`")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OPTIONS",
                        help="also `tfbridge serve OPTIONS` (e.g. delay0='--max-delay-ms 0'); repeatable")
    parser.add_argument("--max-requests", type=int, default=2_000_000, help="per point, at most")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 s warm-up, 3 s a point, one repeat")
    parser.add_argument("--load", nargs=7, help=argparse.SUPPRESS)
    parser.add_argument("--minimal-server", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--floor", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        url, bodies, rows, concurrency, warmup, duration, max_requests = args.load
        print(json.dumps(run_load(url, bodies, int(rows), int(concurrency), float(warmup), float(duration),
                                  int(max_requests))))
        return
    if args.minimal_server:
        minimal_server(args.minimal_server[0], int(args.minimal_server[1]))
        return
    if args.floor:
        model, seconds, repeats, *bodies = args.floor
        print(json.dumps(floor(model, bodies, float(seconds), int(repeats))))
        return
    if args.quick:
        args.repeats, args.duration, args.warmup = 1, 3.0, 1.0

    started = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model) if args.model else make_model(work)
    print(f"model {model_dir}, work {work}", flush=True)
    single, batch = work / "bodies-1.jsonl", work / f"bodies-{args.batch_rows}.jsonl"
    write_bodies(model_dir, single, 1, 5000, seed=0)
    write_bodies(model_dir, batch, args.batch_rows, 20, seed=1)

    done = subprocess.run([sys.executable, __file__, "--floor", str(model_dir), str(min(args.duration, 3.0)),
                           str(args.repeats), str(single), str(batch)], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the floor failed:\n{done.stderr[-3000:]}")
    floor_result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"floor: {json.dumps(floor_result)}", flush=True)

    tfbridge = str(Path(sys.executable).with_name("tfbridge"))
    servers: list[Server] = []
    for workers in args.ours_workers:
        port = free_port()
        label = "ours" if workers == 1 else f"ours --workers {workers}"
        servers.append(Server(label, [tfbridge, "serve", "--model", str(model_dir), "--name", NAME, "--port",
                                      str(port), "--workers", str(workers)], port, work / f"serve-{workers}.log", True))
    for variant in args.variant:
        name, _, options = variant.partition("=")
        port = free_port()
        servers.append(Server(f"ours {options}", [tfbridge, "serve", "--model", str(model_dir), "--name", NAME,
                                                  "--port", str(port), *shlex.split(options)], port,
                              work / f"serve-{name}.log", True))
    port = free_port()
    minimal = "minimal (per request)"
    servers.append(Server(minimal, [sys.executable, __file__, "--minimal-server", str(model_dir), str(port)], port,
                          work / "minimal.log", False))
    points = [*((f"1 row, c={c}", 1, c) for c in args.concurrency),
              (f"{args.batch_rows:,} rows, c={args.batch_concurrency}", args.batch_rows, args.batch_concurrency)]
    results: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
    try:
        for server in servers:
            server.start()
            print(f"{server.label}: ready on {server.url} ({shlex.join(server.command[1:])}; "
                  f"{loaded_libraries(server.process.pid)} loaded)", flush=True)
        for repeat in range(args.repeats):
            for point, rows, concurrency in points:
                for server in servers:  # in turn, so that drift on the machine falls on every server alike
                    r = measure(server, batch if rows > 1 else single, rows, concurrency, args)
                    results[(point, server.label)].append(r)
                    print(f"[{repeat + 1}/{args.repeats}] {point} {server.label}: {r['requests_per_s']:,.0f} req/s, "
                          f"{r['rows_per_s']:,.0f} rows/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                          f"rows/run {r['rows_per_run']}, server {r['server_cores']:.2f} cores, client "
                          f"{r['client_cores']:.2f}, other {r['other_cores']:.2f}, errors {r['errors']}", flush=True)
    finally:
        for server in servers:
            server.stop()
    report(points, [s.label for s in servers], results, floor_result, args, minimal, time.perf_counter() - started)


if __name__ == "__main__":
    main()
