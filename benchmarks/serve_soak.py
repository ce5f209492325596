"""A soak of `tfbridge serve`: a fixed request rate for minutes, the resident memory of every process sampled.

    .venv/bin/python benchmarks/serve_soak.py [--minutes 5] [--rate 1000] [--workers 2] [--model DIR] [--work DIR]

The model and the request bodies are those of benchmarks/serve_throughput.py (a diamonds model trained briefly
unless `--model` names one; v2 bodies of real rows): single-row requests, and every 20th a 100-row one. The load
is open-loop: request k is sent at start + k / rate whatever the answers before it (at most 256 in flight), from
this process (aiohttp), loopback only. Every answer is checked (200, one prediction per row). Every 5 s the
resident memory of each of the server's processes is sampled. Reported: errors, the rate reached, latency, and
for each process its resident memory at the end of the warm-up (`--warmup-s`, default 60 s) and at the end, and
the largest sample after the warm-up. The issue's check: no error, and every worker's memory flat after warm-up
(the largest sample within 10% of the sample at the warm-up's end).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from processes import processes, tree  # noqa: E402 - this script's directory
from serve_throughput import (NAME, REQUEST_TIMEOUT_S, Server, free_port, make_model, read_bodies,  # noqa: E402
                              write_bodies)

SAMPLE_S = 5.0
IN_FLIGHT = 256
FLAT = 0.10  # the bound on growth after warm-up
LARGE_EVERY, LARGE_ROWS = 20, 100


async def soak(server: Server, small: list[bytes], large: list[bytes], rate: float, seconds: float) -> dict:
    """Sends at `rate` requests/s for `seconds`; the answers' count, errors, latencies and the memory samples."""
    import aiohttp
    import numpy as np

    url = f"{server.url}/v2/models/{NAME}/infer"
    latencies: list[float] = []
    errors: collections.Counter = collections.Counter()
    samples: dict[int, list[tuple[float, int]]] = collections.defaultdict(list)
    in_flight = asyncio.Semaphore(IN_FLIGHT)
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    start = time.perf_counter()

    async def one(session, k: int) -> None:
        body, rows = (large[k % len(large)], LARGE_ROWS) if k % LARGE_EVERY == 0 else (small[k % len(small)], 1)
        async with in_flight:
            began = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                    payload, status = await response.read(), response.status
            except Exception as e:  # noqa: BLE001 - counted
                errors[type(e).__name__] += 1
                return
            if status != 200:
                errors[f"HTTP {status}"] += 1
            elif json.loads(payload)["outputs"][0]["shape"][0] != rows:
                errors["wrong rows"] += 1
            else:
                latencies.append(time.perf_counter() - began)

    async def sample() -> None:
        while True:
            now = processes()
            for pid in tree(server.process.pid, now):
                samples[pid].append((time.perf_counter() - start, now[pid][1]))
            await asyncio.sleep(SAMPLE_S)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sampler = asyncio.get_running_loop().create_task(sample())
        tasks, k = [], 0
        while (due := k / rate) < seconds:
            await asyncio.sleep(max(0.0, due - (time.perf_counter() - start)))
            tasks.append(asyncio.get_running_loop().create_task(one(session, k)))
            k += 1
        await asyncio.gather(*tasks)
        sampler.cancel()
    lat = np.array(latencies) * 1000
    return {"sent": k, "answered": len(latencies), "errors": dict(errors), "seconds": time.perf_counter() - start,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s")
    parser.add_argument("--workers", type=int, default=2, help="`tfbridge serve --workers`")
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--model", help="serve this exported model directory (default: train one under --work)")
    parser.add_argument("--work", help="where the model, the bodies and the server's log go (default: a new "
                                       "temporary directory)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="tfbridge-serve-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model) if args.model else make_model(work)
    write_bodies(model_dir, work / "soak-small.jsonl", 1, 2000, seed=11)
    write_bodies(model_dir, work / "soak-large.jsonl", LARGE_ROWS, 100, seed=12)
    port = free_port()
    server = Server(f"tfbridge serve --workers {args.workers}",
                    [str(Path(sys.executable).with_name("tfbridge")), "serve", "--model", str(model_dir), "--name",
                     NAME, "--port", str(port), "--workers", str(args.workers)], port, work / "soak-server.log", True)
    server.start()
    try:
        result = asyncio.run(soak(server, read_bodies(str(work / "soak-small.jsonl")),
                                  read_bodies(str(work / "soak-large.jsonl")), args.rate, args.minutes * 60))
    finally:
        server.stop()
    print(f"\n{args.minutes:g} min at {args.rate:g} requests/s (every {LARGE_EVERY}th of {LARGE_ROWS} rows), "
          f"`tfbridge serve --workers {args.workers}`, loopback, 2 cores shared with this load generator\n")
    print(f"sent {result['sent']:,}, answered 200 {result['answered']:,} "
          f"({result['answered'] / result['seconds']:,.0f}/s), errors {result['errors'] or 'none'}; "
          f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms\n")
    print(f"| process | resident MiB at {args.warmup_s:g} s | at the end | largest after warm-up | growth |")
    print("|---|---:|---:|---:|---:|")
    flat = True
    for pid, series in sorted(result["samples"].items()):
        after = [rss for t, rss in series if t >= args.warmup_s]
        if not after:
            continue
        growth = max(after) / after[0] - 1
        flat = flat and growth <= FLAT
        print(f"| {pid} | {after[0] / 1024:,.0f} | {after[-1] / 1024:,.0f} | "
              f"{max(after) / 1024:,.0f} | {growth:+.1%} |")
    ok = flat and not result["errors"] and result["answered"] == result["sent"]
    print(f"\nthe issue's check (no error, every process within {FLAT:.0%} after warm-up): "
          f"{'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
