"""Training throughput: 1 and 2 workers on Parquet and on TFRecord shards next to the in-memory floor, in one run.

    .venv/bin/python benchmarks/train_throughput.py --rows 1000000 --repeats 3

On synthetic rows (tfbridge.datasets.write_synthetic) through the feature stage
twice, `output_format: parquet` and `tfrecord` (numbers, ids, a one-hot vector
and token ids), then, each `--repeats` times:
  floor      one worker, the same model, strategy and thread settings, on per-replica batches
             already read and cached in memory (the step-time floor);
  1 worker   `tfbridge train` on 1 worker: shards read, shuffled and batched every step;
  2 workers  the same on 2 workers on loopback (RING all-reduce over gRPC).
Throughput is examples/s of the last epoch (the first one traces and warms up),
as the workers log it. Prints medians and the ratios to the floor.
"""

from __future__ import annotations

import argparse
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
_EPOCH = re.compile(r"\[worker 0\].*: epoch \d+/\d+ .*\(([\d.]+) s, ([\d,]+) examples/s\)")


def config_dict(data: Path, out: Path, output_format: str) -> dict:
    return {"data": {"path": str(data)}, "label": "target", "task": "regression", "features": FEATURES,
            "output": str(out), "output_format": output_format, "train": {**TRAIN, "validation_fraction": 0}}


def floor(config_path: str, steps: int) -> float:
    """Runs in its own process (the strategy must come first): examples/s on cached, parsed batches."""
    from tf_train.worker import make_strategy

    strategy = make_strategy()
    import tf_keras

    from tf_train import data as training_data
    from tf_train.model import build_model
    from tfbridge.contracts import PipelineConfig

    config = PipelineConfig.from_yaml(config_path)
    data = training_data.load_training_data(config)
    batch = config.train.batch_size
    cached = training_data.train_dataset(data, 0, 1, batch, config.train.seed).take(steps).cache().repeat()
    tf_keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():
        model = build_model(data.features, data.label, config.train)
    times = []

    class Timer(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(strategy.experimental_distribute_dataset(cached), epochs=3, steps_per_epoch=steps, verbose=0,
              callbacks=[Timer()])
    return steps * batch / times[-1]  # epochs 1-2 fill the cache and trace


def trained_throughput(config, workers: int) -> float:
    from tf_train.launcher import launch

    out = io.StringIO()
    launch(config, workers, out=out)
    examples_per_s = [float(m.group(2).replace(",", "")) for m in _EPOCH.finditer(out.getvalue())]
    return examples_per_s[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", help="reuse synthetic Parquet written here (made if missing)")
    parser.add_argument("--floor", nargs=2, metavar=("CONFIG", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    from tfbridge.jobs import setup_logging

    setup_logging()
    if args.floor:
        print(json.dumps({"floor": floor(args.floor[0], int(args.floor[1]))}))
        return

    import yaml

    from tf_train.launcher import thread_env
    from tfbridge.contracts import PipelineConfig
    from tfbridge.datasets import write_synthetic
    from tft_features.pipeline import run_features

    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    data = Path(args.data_dir or work / "data") / f"synthetic-{args.rows}"
    if not data.exists():
        write_synthetic(data, args.rows, seed=0)
    configs = {}
    for output_format in ("parquet", "tfrecord"):
        configs[output_format] = PipelineConfig.from_dict(config_dict(data, work / output_format, output_format))
        run_features(configs[output_format])
    (work / "config.yaml").write_text(yaml.safe_dump(configs["parquet"].to_dict()))
    steps = 200
    runs = {f"{workers} worker{'s' if workers > 1 else ''}, {output_format}": (configs[output_format], workers)
            for workers in (1, 2) for output_format in configs}
    results: dict[str, list[float]] = {"floor (in memory)": [], **{name: [] for name in runs}}
    for repeat in range(args.repeats):
        done = subprocess.run([sys.executable, __file__, "--floor", str(work / "config.yaml"), str(steps)],
                              capture_output=True, text=True, check=True, env={**os.environ, **thread_env(1)})
        results["floor (in memory)"].append(json.loads(done.stdout.strip().splitlines()[-1])["floor"])
        for name, (config, workers) in runs.items():
            results[name].append(trained_throughput(config, workers))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in results.items()), flush=True)

    base = statistics.median(results["floor (in memory)"])
    print(f"\n{args.rows:,} rows, global batch {TRAIN['batch_size']}, model {TRAIN['hidden_units']}, "
          f"median of {args.repeats}, examples/s of the last epoch\n")
    print("| run | examples/s | vs floor | runs |\n|---|---:|---:|---|")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} | {median / base:.2f}x | {', '.join(f'{v:,.0f}' for v in values)} |")


if __name__ == "__main__":
    main()
