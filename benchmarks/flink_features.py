"""The feature stage on a Flink cluster (Beam's portable runner) against the in-process runner, same data, same run.

    .venv/bin/python benchmarks/flink_features.py --rows 1000000 --repeats 1 [--configs small wide]

Synthetic Parquet (tfbridge.datasets.write_synthetic: 250K-row files, one row group each) on local disk, and for each
config of benchmarks/features_vs_spark_ml.py, `tfbridge features --config C` as a user types it:
  in-process  the default runner (FnApiRunner) in the tfbridge process;
  flink       `--runner=PortableRunner --environment_type=EXTERNAL` on the cluster of tests/flinkcluster.py (a
              JobManager, a TaskManager of two slots, Beam's job server, an SDK worker pool), parallelism 2,
              `--temp_location` on the same disk. A fresh cluster per config, started before its runs (not timed).
Checks that both wrote the same row counts and statistics (floats within 1e-6 relative; quantile boundaries by
their rank in the column, within 1e-3: see compare_stats), then prints the median
seconds and rows/s of each, the ratio flink / in-process, and for the last flink run of each config where its time
went: the peak resident memory and the CPU seconds of each process (sampled every 0.5 s), by component.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.features_vs_spark_ml import CONFIGS  # noqa: E402
from benchmarks.processes import processes, tree  # noqa: E402
from tests.flinkcluster import flink_cluster  # noqa: E402
from tests.tft_features.test_flink_runner import assert_close  # noqa: E402
from tfbridge.datasets import write_synthetic  # noqa: E402


class Usage:
    """Peak resident memory and CPU seconds per process, summed by component (the named roots' process trees)."""

    def __init__(self, roots: dict[str, int]):
        self.roots = roots
        self.peak: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.start_cpu: dict[int, float] = {}
        self.component: dict[int, str] = {}
        self.sample(first=True)

    def sample(self, first: bool = False) -> None:
        now = processes()
        for name, root in self.roots.items():
            for pid in tree(root, now):
                _, rss, cpu = now[pid]
                self.component[pid] = name
                self.peak[pid] = max(self.peak.get(pid, 0), rss)
                self.cpu[pid] = cpu
                if first:
                    self.start_cpu[pid] = cpu

    def table(self) -> list[tuple[str, int, float, float]]:
        """(component, processes, peak GiB of its largest process, CPU seconds used since the start)."""
        rows = []
        for name in self.roots:
            pids = [pid for pid, c in self.component.items() if c == name]
            rows.append((name, len(pids), max((self.peak[p] for p in pids), default=0) / 2**20,
                         sum(self.cpu[p] - self.start_cpu.get(p, 0.0) for p in pids)))
        return rows


def timed(command: list[str], roots: dict[str, int], cwd: Path) -> tuple[float, Usage]:
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    usage = Usage({"driver (tfbridge)": process.pid, **roots})
    while process.poll() is None:
        usage.sample()
        time.sleep(0.5)
    seconds = time.perf_counter() - start
    output = process.stdout.read()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-4000:]}")
    return seconds, usage


def compare_stats(flink: dict, local: dict, data: Path, name: str) -> float | None:
    """Asserts that the runners' statistics are the same: equal, floats within 1e-6 relative, except quantile
    boundaries. TFT's quantiles are an approximate sketch whose result depends on how rows are grouped into
    batches: above the sketch's size the runners' boundaries differ a little, so each is compared by its rank in
    the column (the fraction of values at or below it), within 1e-3. Returns the largest rank difference."""
    flink, local = json.loads(json.dumps(flink)), json.loads(json.dumps(local))
    worst = None
    for column, values in local["features"].items():
        if "boundaries" not in values:
            continue
        column_values = np.sort(pq.read_table(data, columns=[column]).column(column).to_numpy(zero_copy_only=False))
        ranks = [np.searchsorted(column_values, np.array(stats["features"][column].pop("boundaries")), "right")
                 / len(column_values) for stats in (flink, local)]
        difference = float(np.max(np.abs(ranks[0] - ranks[1])))
        assert difference <= 1e-3, (name, column, ranks)
        worst = max(worst or 0.0, difference)
    assert_close(flink, local, f"{name}: stats.json")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--configs", nargs="+", default=["small", "wide"], choices=sorted(CONFIGS))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tfbridge-flink-bench-"))
    write_synthetic(work / "data", args.rows)
    tfbridge = str(Path(sys.executable).with_name("tfbridge"))
    results, usage = {}, {}
    for name in args.configs:
        with flink_cluster(work / f"flink-{name}") as flink:
            roots = {"jobmanager": flink.job_managers[0].pid,
                     **{f"taskmanager {i}": p.pid for i, p in enumerate(flink.task_managers)},
                     "job server": flink.others[0].pid, "SDK workers": flink.worker_pool.pid}
            for runner in ("in-process", "flink"):
                config = work / f"{name}-{runner}.yaml"
                config.write_text(yaml.safe_dump({
                    "data": {"path": str(work / "data")}, "label": "target", "task": "regression",
                    "features": CONFIGS[name], "output": str(work / f"out-{name}-{runner}")}))
                extra = [*flink.beam_args(), f"--temp_location={work / 'temp'}"] if runner == "flink" else []
                for _ in range(args.repeats):
                    seconds, used = timed([tfbridge, "features", "--force", "--config", str(config), *extra],
                                          roots if runner == "flink" else {}, work)
                    results.setdefault((name, runner), []).append(seconds)
                    print(f"{name} {runner}: {seconds:.1f} s", flush=True)
                    if runner == "flink":
                        usage[name] = used
    for name in args.configs:  # the cluster's features are the in-process run's: row counts, statistics
        manifests = [json.loads((work / f"out-{name}-{r}" / "features" / "manifest.json").read_text())
                     for r in ("in-process", "flink")]
        assert manifests[0]["rows"] == manifests[1]["rows"], (name, manifests[0]["rows"], manifests[1]["rows"])
        stats = [json.loads((work / f"out-{name}-{r}" / "features" / m["attempt"] / "stats.json").read_text())
                 for r, m in zip(("in-process", "flink"), manifests)]
        worst = compare_stats(stats[1], stats[0], work / "data", name)
        if worst is not None:
            print(f"{name}: quantile boundaries, largest difference in rank between the runners: {worst:.2e}")
    print(f"\n{args.rows:,} rows, medians of {args.repeats} (seconds, 2 vCPUs); the same rows and statistics\n")
    print("| config | in-process | flink | flink / in-process | in-process rows/s | flink rows/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.configs:
        local, cluster = (statistics.median(results[(name, r)]) for r in ("in-process", "flink"))
        print(f"| {name} | {local:.1f} | {cluster:.1f} | {cluster / local:.2f}x | {args.rows / local:,.0f} | "
              f"{args.rows / cluster:,.0f} |")
    print("\nThe last flink run of each config, by process:\n")
    print("| config | component | processes | peak resident GiB (largest process) | CPU seconds |")
    print("|---|---|---:|---:|---:|")
    for config in args.configs:
        for name, count, peak, cpu in usage[config].table():
            print(f"| {config} | {name} | {count} | {peak:.2f} | {cpu:.1f} |")


if __name__ == "__main__":
    main()
