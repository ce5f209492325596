"""Scoring throughput on Spark next to onnxruntime alone, measured side by side in one run.

    .venv/bin/python benchmarks/score_throughput.py --rows 1000000 --repeats 3

A model is trained on 100,000 synthetic rows (tfbridge.datasets.write_synthetic: numbers,
Zipf categories, short text) and exported; then `--rows` FRESH raw rows (another seed) are
scored, each `--repeats` times, by:
  (a) onnxruntime    the ONNX graph in one process on the rows already in memory as model
                     inputs, one `run` per Arrow batch: 1 thread; all cores as intra-op threads;
                     all cores as concurrent runs of 1 thread. The best of them is the floor;
  (b) onnx_udf       spark_infer.score on local[N]: Parquet read, our ONNX pandas UDF;
  (c) saved_model    the same UDF on the SavedModel (TensorFlow inside the UDF, our fallback);
  (d) predict_batch  pyspark.ml.functions.predict_batch_udf calling the SavedModel's signature;
  (e) Spark alone    a pandas UDF over the same input struct that returns zeros: the cost of
                     Spark's Parquet scan and Arrow hand-off to Python, the ceiling of (b)-(d).
Spark runs end in the `noop` sink (every row scored, nothing written). Each engine gets its own
Spark session; its first run starts the Python workers and loads the model: reported as "first
run", not counted in rows/s. "peak worker RSS" is the largest Python worker's resident memory.
Prints medians of `--repeats` runs and the ratios to the floor (the best (a)).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_throughput import FEATURES as TRAIN_BENCHMARK_FEATURES  # noqa: E402 (this script's directory)

# The training benchmark's features plus a min-max column: every kind of transform inside the graph.
FEATURES = {**TRAIN_BENCHMARK_FEATURES, "visits": ["min_max"]}
TRAIN = {"batch_size": 1024, "epochs": 2, "hidden_units": [64, 32], "workers": 1}
TRAIN_ROWS = 100_000


def floor(model_dir: str, data: str, batch: int, threads: int, concurrent: int, repeats: int) -> list[float]:
    """rows/s of onnxruntime alone on inputs already in memory (run in a process without TensorFlow):
    one session with `threads` intra-op threads, `concurrent` batches run at once."""
    import pyarrow.parquet as pq

    from spark_infer.udf import ScoringModel

    model = ScoringModel.load(model_dir)
    session = model.session(threads)
    frame = pq.read_table(data, columns=model.input_names).to_pandas()
    chunks = [model.feeds(frame.iloc[i:i + batch]) for i in range(0, len(frame), batch)]
    session.run(["prediction"], chunks[0])
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrent) as pool:  # onnxruntime releases the GIL in run
            list(pool.map(lambda chunk: session.run(["prediction"], chunk), chunks))
        rates.append(len(frame) / (time.perf_counter() - start))
    return rates


def spark_session(cores: int, batch: int):
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    return (SparkSession.builder.master(f"local[{cores}]").appName("score-benchmark")
            .config("spark.driver.memory", "6g").config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch)).getOrCreate())


def predict_batch_column(model_dir: Path, batch: int):
    """Spark's own recipe: predict_batch_udf with a predict function over the SavedModel's signature."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType

    from spark_infer.udf import ScoringModel

    model = ScoringModel.load(model_dir)
    names, inputs, path = model.input_names, model.manifest.inputs, str(model_dir / "saved_model")

    def make_predict_fn():
        import tensorflow as tf

        signature = tf.saved_model.load(path).signatures["serving_default"]

        def predict(*arrays):
            tensors = {model.manifest.input_names[name]: tf.constant(
                a.astype(str) if inputs[name].dtype == "string" else a.astype(np.float32))
                for name, a in zip(names, arrays)}
            return signature(**tensors)["prediction"].numpy().astype(np.float64)

        # predict_batch_udf passes one array per column and counts the function's parameters.
        predict.__signature__ = inspect.Signature(
            [inspect.Parameter(f"x{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(len(names))])
        return predict

    udf = predict_batch_udf(make_predict_fn, return_type=DoubleType(), batch_size=batch)
    return udf(*[F.col(n) for n in names])


def zeros_udf():
    """What Spark's hand-off to Python costs alone: the same input struct, no model."""
    from pyspark.sql.functions import pandas_udf

    def zeros(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        for batch in batches:
            yield pd.Series(np.zeros(len(batch)))

    return pandas_udf(zeros, "double")


class PeakWorkerMemory:
    """Samples the resident memory of Spark's Python workers (pyspark.daemon and its forks) while open."""

    def __init__(self):
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    if b"pyspark.daemon" not in (proc / "cmdline").read_bytes():
                        continue
                    rss = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("VmRSS"))
                except (OSError, StopIteration):
                    continue
                self.peak_mib = max(self.peak_mib, int(rss.split()[1]) / 1024)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@dataclasses.dataclass
class EngineRun:
    rates: list[float]  # rows/s of the warm runs
    cold_s: float  # the first run: Python workers start, the model loads
    peak_mib: float  # the largest Python worker


def spark_runs(data: str, model_dir: Path, cores: int, batch: int, repeats: int) -> dict[str, EngineRun]:
    """Each engine in its own Spark session (fresh Python workers): one cold run, then `repeats` warm ones."""
    from pyspark.sql import functions as F

    from spark_infer import score
    from spark_infer.udf import ScoringModel

    onnx = ScoringModel.load(model_dir)
    saved = ScoringModel(onnx.directory, onnx.manifest, None)  # the fallback engine on the same export
    engines = {
        "(e) Spark alone: pandas UDF returning zeros": lambda df: df.withColumn("prediction", zeros_udf()(
            F.struct(*onnx.input_names))),
        "(b) onnx_udf": lambda df: score(df, onnx),
        "(c) saved_model udf": lambda df: score(df, saved),
        "(d) predict_batch_udf (TF)": lambda df: df.withColumn("prediction", predict_batch_column(model_dir, batch)),
    }
    runs: dict[str, EngineRun] = {}
    for name, scored in engines.items():
        spark = spark_session(cores, batch)
        rows = spark.read.parquet(data).count()
        seconds = []
        with PeakWorkerMemory() as memory:
            for _ in range(repeats + 1):
                start = time.perf_counter()
                scored(spark.read.parquet(data)).write.format("noop").mode("overwrite").save()
                seconds.append(time.perf_counter() - start)
        spark.stop()
        runs[name] = EngineRun([rows / s for s in seconds[1:]], seconds[0], memory.peak_mib)
        print(f"{name}: {', '.join(f'{r:,.0f}' for r in runs[name].rates)} rows/s, cold run {seconds[0]:.1f} s, "
              f"peak worker {memory.peak_mib:,.0f} MiB", flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=10_000, help="Arrow batch (spark.sql.execution.arrow.maxRecordsPerBatch)")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--work", help="reuse the data and model under this directory (made if missing)")
    parser.add_argument("--floor", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        model, data, threads, concurrent, repeats = args.floor
        print(json.dumps(floor(model, data, args.batch, int(threads), int(concurrent), int(repeats))))
        return

    from tfbridge.cli import main as tfbridge
    from tfbridge.jobs import setup_logging
    from tfbridge.datasets import write_synthetic

    setup_logging()
    work = Path(args.work or tempfile.mkdtemp(prefix="score-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir, data = work / "run" / "model", work / f"score-{args.rows}"
    if not (model_dir / "model.onnx").exists():
        import yaml

        write_synthetic(work / "train", TRAIN_ROWS, seed=0)
        config = {"data": {"path": str(work / "train")}, "label": "target", "task": "regression",
                  "features": FEATURES, "output": str(work / "run"), "train": TRAIN}
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        for stage in ("features", "train", "export"):
            assert tfbridge([stage, "--config", str(work / "config.yaml")]) == 0
    if not data.exists():
        write_synthetic(data, args.rows, seed=1000)

    floors_measured: dict[str, list[float]] = {}
    floors = {"1 thread": (1, 1), f"{args.cores} threads": (args.cores, 1),
              f"{args.cores} batches at once": (1, args.cores)}
    for name, (threads, concurrent) in floors.items():
        done = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--floor", str(model_dir),
                               str(data), str(threads), str(concurrent), str(args.repeats)],
                              capture_output=True, text=True, check=True)
        floors_measured[f"(a) onnxruntime, {name}"] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"(a) onnxruntime, {name}: {floors_measured[f'(a) onnxruntime, {name}']}", flush=True)
    runs = spark_runs(str(data), model_dir, args.cores, args.batch, args.repeats)

    base = max(statistics.median(v) for v in floors_measured.values())
    onnx_udf = statistics.median(runs["(b) onnx_udf"].rates)
    print(f"\n{args.rows:,} fresh raw rows (8 columns, text and categories in the graph), local[{args.cores}], "
          f"Arrow batch {args.batch:,}, median of {args.repeats}\n")
    print("| engine | rows/s | vs floor | onnx_udf vs this | first run | peak worker RSS | runs |\n"
          "|---|---:|---:|---:|---:|---:|---|")
    table = {**{k: (v, None) for k, v in floors_measured.items()}, **{k: (v.rates, v) for k, v in runs.items()}}
    for name, (values, run) in sorted(table.items()):
        median = statistics.median(values)
        cold = f"{run.cold_s:.1f} s" if run else ""
        memory = f"{run.peak_mib:,.0f} MiB" if run else ""
        print(f"| {name} | {median:,.0f} | {median / base:.2f}x | {onnx_udf / median:.2f}x | {cold} | {memory} | "
              f"{', '.join(f'{v:,.0f}' for v in values)} |")


if __name__ == "__main__":
    main()
