"""Training throughput and how it scales: workers on loopback, pinned to cores, and in network namespaces.

    .venv/bin/python benchmarks/train_throughput.py --rows 1000000 --repeats 3 [--hosts 2,4]

Synthetic rows (tfbridge.datasets.write_synthetic: numbers, ids, a one-hot
vector and token ids) through the feature stage as Parquet shards, then, each
`--repeats` times, side by side:
  floor          the same model, strategy, thread settings and step function on per-replica batches already
                 read and cached in memory: 1 worker on core 0, and 2 workers on a core each (TF_CONFIG on
                 loopback): the step's compute, and its compute plus the all-reduce;
  ceiling        two one-worker floors at once, a core each, summed: what the two cores give together with no
                 collective at all (on a VM, two vCPUs need not be two cores' worth);
  N worker(s)    `tfbridge train` on N workers on loopback, sharing the cores as the launcher starts them;
  pinned         the same with each worker on cores of its own (tf_train.launcher.worker_cores): 2 workers
                 against 1 worker on one core is the machine's scaling efficiency with no core shared;
  sync_every 8   local SGD (train.sync_every): each worker takes 8 steps of 1024 rows on its own shards,
                 then the workers' weights are averaged, one collective per 8 steps.
With --hosts, the workers also run as hosts of their own (tests/netns.py, root only): a network namespace
each, a veth pair to a bridge, an address of its own, a 10 Gbit/s token bucket on each link, TF_CONFIG
across those addresses, worker i on core i mod cores. (The kernel these were measured on has no netem
qdisc, so no added delay.)
Throughput is examples/s of the last epoch (the first one traces and warms up), as worker 0 logs it.
Prints medians, their ratio to one pinned worker, and a synchronous step's time with and without input
(from the floors).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FEATURES = {
    "amount": ["box_cox", "z_score"],
    "duration": ["log1p", "z_score"],
    "score": ["z_score"],
    "ratio": [{"bucketize": {"num_buckets": 10}}],
    "region": [{"vocabulary": {"top_k": 50}}, "one_hot"],
    "category": [{"vocabulary": {"top_k": 1000}}],
    "comment": ["normalize_text", "vocabulary"],
}
TRAIN = {"batch_size": 1024, "epochs": 2, "hidden_units": [64, 32]}
LOCAL_STEPS = 8
FLOOR_STEPS = 160
_EPOCH = re.compile(r"worker 0: epoch \d+/\d+ .*\(([\d.]+) s, ([\d,]+) examples/s\)")


def config_dict(data: Path, out: Path, **train) -> dict:
    return {"data": {"path": str(data)}, "label": "target", "task": "regression", "features": FEATURES,
            "output": str(out), "split": {"eval_fraction": 0.05},  # the eval after training is not timed
            "train": {**TRAIN, "validation_fraction": 0, **train}}


def floor(config_path: str, steps: int) -> float:
    """Runs in its own process (the strategy must come first; TF_CONFIG, if set, names the cluster):
    examples/s on cached, parsed batches."""
    from tf_train.worker import make_strategy, worker_count

    strategy = make_strategy()
    import tf_keras

    from tf_train import data as training_data
    from tf_train.model import build_model
    from tfbridge.contracts import PipelineConfig

    config = PipelineConfig.from_yaml(config_path)
    data = training_data.load_training_data(config)
    batch, workers = config.train.batch_size, worker_count(strategy)
    index = strategy.cluster_resolver.task_id or 0
    cached = (training_data.train_dataset(data, index, workers, batch // workers, config.train.seed)
              .take(steps).cache().repeat())
    tf_keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():
        model = build_model(data.features, data.label, config.train)
    times = []

    class Timer(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(strategy.distribute_datasets_from_function(lambda context: cached), epochs=3, steps_per_epoch=steps,
              verbose=0, callbacks=[Timer()])
    return steps * batch / times[-1]  # epochs 1-2 fill the cache and trace


def pinned(core: int):
    return lambda: os.sched_setaffinity(0, {core})


def floor_throughput(config_path: Path, workers: int, independent: bool = False) -> float:
    """examples/s of worker 0 of `workers` floor processes, worker i on core i; `independent`: each a
    one-worker cluster of its own, all at once, and the sum of their examples/s (what the cores give
    together with no collective at all)."""
    from tf_train.launcher import free_ports, tf_config, thread_env

    ports = free_ports(workers)
    procs = []
    for index in range(workers):
        cluster = {"TF_CONFIG": tf_config(ports, index)} if workers > 1 and not independent else {}
        env = {**os.environ, **thread_env(workers), **cluster}
        procs.append(subprocess.Popen([sys.executable, __file__, "--floor", str(config_path), str(FLOOR_STEPS)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                      preexec_fn=pinned(index % os.cpu_count())))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a floor worker failed: {[p.returncode for p in procs]}")
    rates = [json.loads(output.strip().splitlines()[-1])["floor"] for output in outputs]
    return sum(rates) if independent else rates[0]


def last_epoch_rate(log: str) -> float:
    rates = [float(m.group(2).replace(",", "")) for m in _EPOCH.finditer(log)]
    if not rates:
        raise RuntimeError(f"no epoch line from worker 0 in:\n{log[-3000:]}")
    return rates[-1]


def trained_throughput(config, workers: int, pin: bool) -> float:
    from tf_train.launcher import launch

    out = io.StringIO()
    launch(config, workers, out=out, pin=pin)
    return last_epoch_rate(out.getvalue())


def hosts_throughput(config, hosts: int) -> float:
    """Workers `python -m tf_train` in network namespaces of their own (tests/netns.py), TF_CONFIG across the
    namespaces' addresses, worker i on core i mod cores."""
    import yaml

    from tests import netns
    from tf_train.launcher import thread_env

    config_path = Path(config.output) / "hosts-config.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    env = {**os.environ, **thread_env(min(hosts, os.cpu_count())),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    with netns.hosts(hosts, prefix="tfbench") as addresses:
        procs = netns.start_workers(config_path, addresses, env, pin=True)
        outputs = [p.communicate(timeout=1200)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a worker failed: {[p.returncode for p in procs]}\n{outputs[0][-3000:]}")
    return last_epoch_rate(outputs[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hosts", help="worker counts to run in network namespaces, e.g. 2,4 (root only)")
    parser.add_argument("--data-dir", help="reuse synthetic Parquet written here (made if missing)")
    parser.add_argument("--floor", nargs=2, metavar=("CONFIG", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    from tfbridge.jobs import setup_logging

    setup_logging()
    if args.floor:
        print(json.dumps({"floor": floor(args.floor[0], int(args.floor[1]))}))
        return

    import yaml

    from tfbridge.contracts import PipelineConfig
    from tfbridge.datasets import write_synthetic
    from tft_features.pipeline import run_features

    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    data = Path(args.data_dir or work / "data") / f"synthetic-{args.rows}"
    if not data.exists():
        write_synthetic(data, args.rows, seed=0)
    synchronous = PipelineConfig.from_dict(config_dict(data, work / "run"))
    run_features(synchronous)
    local = dataclasses.replace(synchronous, train=dataclasses.replace(synchronous.train, sync_every=LOCAL_STEPS))
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(synchronous.to_dict()))
    cores = os.cpu_count()
    runs = {  # name: (run, the cores it may use)
        "floor, 1 worker on core 0 (in memory)": (lambda: floor_throughput(config_path, 1), 1),
        "floor, 2 workers on a core each (in memory)": (lambda: floor_throughput(config_path, 2), 2),
        "ceiling: 2 one-worker floors at once, a core each": (lambda: floor_throughput(config_path, 2, True), 2),
        "1 worker": (lambda: trained_throughput(synchronous, 1, pin=False), cores),
        "2 workers": (lambda: trained_throughput(synchronous, 2, pin=False), cores),
        "1 worker, pinned to one core": (lambda: trained_throughput(synchronous, 1, pin=True), 1),
        "2 workers, pinned, a core each": (lambda: trained_throughput(synchronous, 2, pin=True), 2),
        f"2 workers, pinned, sync_every {LOCAL_STEPS}": (lambda: trained_throughput(local, 2, pin=True), 2),
    }
    for hosts in [int(h) for h in args.hosts.split(",")] if args.hosts else []:
        for name, config in (("", synchronous), (f", sync_every {LOCAL_STEPS}", local)):
            runs[f"{hosts} workers in namespaces{name}"] = (
                lambda hosts=hosts, config=config: hosts_throughput(config, hosts), min(hosts, cores))
    results: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name, (run, _) in runs.items():
            results[name].append(run())
            print(f"repeat {repeat + 1}: {name} {results[name][-1]:,.0f}", flush=True)

    median = {name: statistics.median(values) for name, values in results.items()}
    base = median["1 worker, pinned to one core"]
    print(f"\n{args.rows:,} rows, global batch {TRAIN['batch_size']}, model {TRAIN['hidden_units']}, "
          f"{cores} cores, median of {args.repeats}, examples/s of the last epoch\n")
    print("| run | examples/s | vs 1 worker pinned | per core used | runs |\n|---|---:|---:|---:|---|")
    for name, values in results.items():
        print(f"| {name} | {median[name]:,.0f} | {median[name] / base:.2f}x | {median[name] / base / runs[name][1]:.2f}x "
              f"| {', '.join(f'{v:,.0f}' for v in values)} |")
    batch = TRAIN["batch_size"]
    ms = {name: batch / median[name] * 1e3 for name in median}  # one global step of `batch` rows
    print(f"\nA synchronous step of {batch} rows, from the medians: 1 worker on one core "
          f"{ms['1 worker, pinned to one core']:.2f} ms, of which {ms['floor, 1 worker on core 0 (in memory)']:.2f} "
          f"in memory (compute); 2 pinned workers ({batch // 2} rows each) {ms['2 workers, pinned, a core each']:.2f} "
          f"ms, of which {ms['floor, 2 workers on a core each (in memory)']:.2f} in memory (compute and the "
          f"all-reduce) and the rest input.")


if __name__ == "__main__":
    main()
