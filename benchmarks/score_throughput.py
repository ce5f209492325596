"""Scoring throughput on Spark next to onnxruntime alone, measured side by side in one run.

    .venv/bin/python benchmarks/score_throughput.py --rows 1000000 --repeats 3

A model is trained on 100,000 synthetic rows (tfbridge.datasets.write_synthetic: numbers,
Zipf categories, short text as words and word pairs, a time's cyclical calendar) and exported; then `--rows` FRESH raw rows (another seed) are
scored, each `--repeats` times, by:
  (a) onnxruntime    the ONNX graph in one process on the rows already in memory as model
                     inputs, one `run` per Arrow batch: 1 thread; all cores as intra-op threads;
                     all cores as concurrent runs of 1 thread. The best of them is the floor;
  (b) score()        spark_infer.score on local[N]: Parquet read, the ONNX graph over mapInArrow;
  (b2) scoring_udf   the column UDF (an Arrow UDF over a struct) with the same graph;
  (c) saved_model    the pandas UDF on the SavedModel (TensorFlow inside the UDF, our fallback);
  (d) predict_batch  pyspark.ml.functions.predict_batch_udf calling the SavedModel's signature;
  (e) Spark alone    a pandas UDF over the same input struct that returns zeros: the hand-off of
                     (c) and (d) with no model;
  (f) Spark alone    mapInArrow turning each input column into the arrays onnxruntime takes and
                     returning zeros: the hand-off of (b) with no model.
  (g) TF alone       the SavedModel's signature on the same in-memory batches, 1 thread, each batch's
                     numpy arrays made tensors inside the timed run as onnxruntime takes them in its
                     `run`; (g2) the same with the tensors made beforehand (no string conversion).
"bound" is what (b) could reach given its two costs measured here if they added up: 1 / (1/(a) + 1/(f)),
with (a) the best floor (Spark's JVM and the Python workers overlap, so (b) can pass it).
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

# The training benchmark's features plus a min-max column, the comment's word pairs and a time's calendar:
# every kind of transform inside the graph.
FEATURES = {**TRAIN_BENCHMARK_FEATURES, "visits": ["min_max"],
            "comment": ["normalize_text", {"ngrams": [1, 2]}, {"vocabulary": {"top_k": 5000}}],
            "when": [{"cyclical": ["day_of_year", "weekday", "hour"]}]}
TRAIN = {"batch_size": 1024, "epochs": 2, "hidden_units": [64, 32], "workers": 1}
TRAIN_ROWS = 100_000


def floor(model_dir: str, data: str, batch: int, threads: int, concurrent: int, repeats: int,
          engine: str = "onnxruntime") -> list[float]:
    """rows/s of one engine alone on inputs already in memory, each in its own process: onnxruntime (no TensorFlow
    loaded) or the TF SavedModel's signature, `threads` intra-op threads, `concurrent` batches run at once."""
    import pyarrow.parquet as pq

    from tfbridge.scoring import ScoringModel

    model = ScoringModel.load(model_dir)
    frame = pq.read_table(data, columns=model.input_names).to_pandas()
    chunks = [model.feeds(frame.iloc[i:i + batch]) for i in range(0, len(frame), batch)]
    if engine == "onnxruntime":
        session = model.session(threads)

        def run(chunk):
            return session.run(["prediction"], chunk)
    else:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        saved_model = model.manifest.saved_model_dir(model_dir)
        signature = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
        if engine == "tensorflow-tensors":
            chunks = [{k: tf.constant(v) for k, v in c.items()} for c in chunks]

        def run(chunk):  # tf.constant of a tensor is the tensor: no second conversion
            return signature(**{k: tf.constant(v) for k, v in chunk.items()})["prediction"].numpy()
    run(chunks[0])
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrent) as pool:  # both release the GIL while they compute
            list(pool.map(run, chunks))
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

    from tfbridge.scoring import ScoringModel

    model = ScoringModel.load(model_dir)
    names, inputs, path = model.input_names, model.manifest.inputs, str(model.manifest.saved_model_dir(model_dir))

    def make_predict_fn():
        import tensorflow as tf

        signature = tf.saved_model.load(path).signatures["serving_default"]

        def value(a: np.ndarray, dtype: str):
            if dtype == "string":
                return a.astype(str)
            if dtype == "timestamp":  # the graph's float64 epoch seconds
                return pd.to_datetime(a, utc=True).asi8 / 1e9
            return a.astype(np.float32)

        def predict(*arrays):
            tensors = {model.manifest.input_names[name]: tf.constant(value(a, inputs[name].dtype))
                       for name, a in zip(names, arrays)}
            return signature(**tensors)["prediction"].numpy().astype(np.float64)

        # predict_batch_udf passes one array per column and counts the function's parameters.
        predict.__signature__ = inspect.Signature(
            [inspect.Parameter(f"x{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(len(names))])
        return predict

    udf = predict_batch_udf(make_predict_fn, return_type=DoubleType(), batch_size=batch)
    return udf(*[F.col(n) for n in names])


def zeros_arrow(model_dir: Path):
    """What score()'s hand-off costs alone: every batch's inputs converted as for the graph, zeros returned."""
    import pyarrow as pa

    from tfbridge.scoring import ScoringModel, arrow_feeds, graph_inputs

    inputs = graph_inputs(ScoringModel.load(model_dir).manifest)

    def zeros(batches):
        for batch in batches:
            arrow_feeds({name: batch.column(raw.name) for name, raw in inputs.items()}, inputs)
            yield pa.RecordBatch.from_arrays([*batch.columns, pa.array(np.zeros(batch.num_rows))],
                                             names=[*batch.schema.names, "prediction"])

    return zeros


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
    from pyspark.sql import types as T

    from spark_infer import model_inputs, score, scoring_udf
    from tfbridge.scoring import ScoringModel

    onnx = ScoringModel.load(model_dir)
    saved = ScoringModel(onnx.directory, onnx.manifest, None)  # the fallback engine on the same export
    engines = {
        "(e) Spark alone: pandas UDF returning zeros": lambda df: df.withColumn("prediction", zeros_udf()(
            F.struct(*onnx.input_names))),
        "(f) Spark alone: mapInArrow returning zeros": lambda df: df.mapInArrow(
            zeros_arrow(model_dir), T.StructType([*df.schema.fields, T.StructField("prediction", T.DoubleType())])),
        "(b) score(): mapInArrow": lambda df: score(df, onnx),
        "(b2) scoring_udf: Arrow UDF": lambda df: df.withColumn("prediction", scoring_udf(model_dir)(
            model_inputs(onnx))),
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
    parser.add_argument("--floor", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        model, data, threads, concurrent, repeats, engine = args.floor
        print(json.dumps(floor(model, data, args.batch, int(threads), int(concurrent), int(repeats), engine)))
        return

    from tfbridge.cli import main as tfbridge
    from tfbridge.contracts import ModelManifest
    from tfbridge.datasets import write_synthetic
    from tfbridge.jobs import setup_logging

    setup_logging()
    work = Path(args.work or tempfile.mkdtemp(prefix="score-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir, data = work / "run" / "model", work / f"score-{args.rows}"
    if not (model_dir / "manifest.json").exists() or ModelManifest.read(model_dir / "manifest.json").onnx is None:
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
    floors = {"(a) onnxruntime, 1 thread": (1, 1, "onnxruntime"),
              f"(a) onnxruntime, {args.cores} threads": (args.cores, 1, "onnxruntime"),
              f"(a) onnxruntime, {args.cores} batches at once": (1, args.cores, "onnxruntime"),
              "(g) TF SavedModel alone, 1 thread": (1, 1, "tensorflow"),
              "(g2) TF SavedModel alone, 1 thread, tensors made beforehand": (1, 1, "tensorflow-tensors")}
    for name, (threads, concurrent, engine) in floors.items():
        done = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--floor", str(model_dir),
                               str(data), str(threads), str(concurrent), str(args.repeats), engine],
                              capture_output=True, text=True, check=True)
        floors_measured[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name}: {floors_measured[name]}", flush=True)
    tf_alone = floors_measured.pop("(g) TF SavedModel alone, 1 thread")
    tf_tensors = floors_measured.pop("(g2) TF SavedModel alone, 1 thread, tensors made beforehand")
    runs = spark_runs(str(data), model_dir, args.cores, args.batch, args.repeats)

    base = max(statistics.median(v) for v in floors_measured.values())
    ours = statistics.median(runs["(b) score(): mapInArrow"].rates)
    hand_off = statistics.median(runs["(f) Spark alone: mapInArrow returning zeros"].rates)
    bound = 1 / (1 / base + 1 / hand_off)
    stock = statistics.median(runs["(d) predict_batch_udf (TF)"].rates)
    print(f"\n{args.rows:,} fresh raw rows (9 columns, text n-grams, a calendar and categories in the graph), "
          f"local[{args.cores}], Arrow batch {args.batch:,}, median of {args.repeats}\n")
    ort_1 = statistics.median(floors_measured["(a) onnxruntime, 1 thread"])
    print(f"score(): {ours:,.0f} rows/s = {ours / stock:.2f}x predict_batch_udf with TF, {ours / bound:.0%} of the "
          f"bound {bound:,.0f} rows/s (1 / (1/floor {base:,.0f} + 1/hand-off {hand_off:,.0f}))")
    print(f"one thread: onnxruntime {ort_1:,.0f} rows/s, the TF SavedModel {statistics.median(tf_alone):,.0f} "
          f"({ort_1 / statistics.median(tf_alone):.2f}x)\n")
    floors_measured["(g) TF SavedModel alone, 1 thread"] = tf_alone
    floors_measured["(g2) TF SavedModel alone, 1 thread, tensors made beforehand"] = tf_tensors
    print("| engine | rows/s | vs floor | score() vs this | first run | peak worker RSS | runs |\n"
          "|---|---:|---:|---:|---:|---:|---|")
    table = {**{k: (v, None) for k, v in floors_measured.items()}, **{k: (v.rates, v) for k, v in runs.items()}}
    for name, (values, run) in sorted(table.items()):
        median = statistics.median(values)
        cold = f"{run.cold_s:.1f} s" if run else ""
        memory = f"{run.peak_mib:,.0f} MiB" if run else ""
        print(f"| {name} | {median:,.0f} | {median / base:.2f}x | {ours / median:.2f}x | {cold} | {memory} | "
              f"{', '.join(f'{v:,.0f}' for v in values)} |")


if __name__ == "__main__":
    main()
