"""Feature stage throughput next to its peers, measured side by side in one run.

    .venv/bin/python benchmarks/features_vs_spark_ml.py --rows 1000000 --repeats 3
    .venv/bin/python benchmarks/features_vs_spark_ml.py --processes --configs wide --rows 1000000 4000000 10000000 --repeats 1

On the same synthetic Parquet (tfbridge.datasets.write_synthetic), for two configs:
  small: z-score + vocabulary + 10 quantile buckets (3 features);
  wide:  the 10-feature config below (power transforms, scaling, buckets, vocabularies, one-hot, text).
each of
  tfbridge  run_features: check, analyze (train split), transform both splits, write Parquet shards;
  spark_ml  the equivalent Spark ML pipeline on local[2]: fit, transform, write Parquet
            (first repeat cold: JVM and Python workers start; the median covers warm repeats too);
  numpy     a single-process numpy/pyarrow pass computing the same statistics and outputs, written
            as Parquet: the floor.
Prints medians of `--repeats` runs and the ratios to Spark ML.

With `--processes`, each run is instead a whole process as a user starts it, start-up included:
`tfbridge features --config C` against this script's own Spark ML job in a fresh process (a new JVM
and session, fit, transform, write, stop), with the peak resident memory of each process tree (the
Python driver and Spark's JVM together), sampled every 0.2 s. Several `--rows` make a scale curve: one
table per size, on synthetic data of that size (written once under --data-dir).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfbridge.jobs import setup_logging  # noqa: E402
from tfbridge.contracts import PipelineConfig  # noqa: E402
from tfbridge.datasets import write_synthetic  # noqa: E402
from benchmarks.processes import processes, tree  # noqa: E402

CONFIGS = {
    "small": {
        "amount": ["z_score"],
        "category": ["vocabulary"],
        "duration": [{"bucketize": {"num_buckets": 10}}],
    },
    "wide": {
        "amount": ["box_cox", "z_score"],
        "duration": ["log1p", "z_score"],
        "score": ["yeo_johnson"],
        "ratio": [{"bucketize": {"num_buckets": 10}}],
        "visits": ["min_max"],
        "category": [{"vocabulary": {"top_k": 1000}}],
        "region": [{"vocabulary": {"top_k": 50}}, "one_hot"],
        "comment": [{"normalize_text": {"stopwords": "english"}}, "vocabulary"],
    },
}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_tfbridge(data: Path, features: dict, out: Path) -> None:
    from tft_features.pipeline import run_features

    config = PipelineConfig.from_dict({"data": {"path": str(data)}, "label": "target", "task": "regression",
                                       "features": features, "output": str(out)})
    run_features(config)


def spark_session():
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    return (SparkSession.builder.master("local[2]").appName("features-benchmark")
            .config("spark.driver.memory", "6g").config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "4").getOrCreate())


def run_spark_ml(spark, data: Path, name: str, out: Path) -> None:
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import (CountVectorizer, MinMaxScaler, OneHotEncoder, QuantileDiscretizer,
                                    RegexTokenizer, StandardScaler, StopWordsRemover, StringIndexer,
                                    VectorAssembler)
    from pyspark.sql import functions as F

    df = spark.read.parquet(str(data))
    if name == "small":
        stages = [VectorAssembler(inputCols=["amount"], outputCol="amount_v"),
                  StandardScaler(inputCol="amount_v", outputCol="amount_z", withMean=True),
                  StringIndexer(inputCol="category", outputCol="category_id"),
                  QuantileDiscretizer(inputCol="duration", outputCol="duration_b", numBuckets=10)]
    else:
        # Spark ML has no Box-Cox / Yeo-Johnson: log and plain scaling stand in (less work than ours).
        df = df.withColumn("amount_log", F.log("amount")).withColumn("duration_log", F.log1p("duration"))
        stages = [VectorAssembler(inputCols=["amount_log", "duration_log", "score"], outputCol="num_v"),
                  StandardScaler(inputCol="num_v", outputCol="num_z", withMean=True),
                  QuantileDiscretizer(inputCol="ratio", outputCol="ratio_b", numBuckets=10),
                  VectorAssembler(inputCols=["visits"], outputCol="visits_v"),
                  MinMaxScaler(inputCol="visits_v", outputCol="visits_mm"),
                  StringIndexer(inputCol="category", outputCol="category_id"),
                  StringIndexer(inputCol="region", outputCol="region_id"),
                  OneHotEncoder(inputCol="region_id", outputCol="region_1h"),
                  RegexTokenizer(inputCol="comment", outputCol="tokens", pattern="\\W+"),
                  StopWordsRemover(inputCol="tokens", outputCol="words"),
                  CountVectorizer(inputCol="words", outputCol="words_v")]
    model = Pipeline(stages=stages).fit(df)
    model.transform(df).write.mode("overwrite").parquet(str(out))


def run_numpy_floor(data: Path, name: str, out: Path) -> None:
    """One process, vectorised: the statistics and the outputs of the config, written as Parquet."""
    table = pq.read_table(str(data))
    cols = {}

    def z(x):
        return (x - x.mean()) / x.std()

    def vocab_ids(column):
        values, counts = np.unique(column.to_numpy(zero_copy_only=False), return_inverse=False, return_counts=True)
        order = values[np.argsort(-counts, kind="stable")]
        return pc.index_in(column, value_set=pa.array(order)).to_numpy(zero_copy_only=False)

    def buckets(x, n):
        return np.searchsorted(np.quantile(x, np.linspace(0, 1, n + 1)[1:-1]), x, side="right")

    amount = table.column("amount").to_numpy()
    duration = table.column("duration").to_numpy()
    if name == "small":
        cols = {"amount": z(amount), "category": vocab_ids(table.column("category")),
                "duration": buckets(duration, 10)}
    else:
        from scipy import stats

        visits = table.column("visits").to_numpy().astype(float)
        tokens = pc.utf8_split_whitespace(pc.replace_substring_regex(
            pc.utf8_lower(table.column("comment")), r"[^\w\s]", " "))
        flat = pc.list_flatten(tokens)
        cols = {"amount": z(stats.boxcox(amount)[0]), "duration": z(np.log1p(duration)),
                "score": stats.yeojohnson(table.column("score").to_numpy())[0],
                "ratio": buckets(table.column("ratio").to_numpy(), 10),
                "visits": (visits - visits.min()) / (visits.max() - visits.min()),
                "category": vocab_ids(table.column("category")),
                "region": vocab_ids(table.column("region")),
                "comment": pa.ListArray.from_arrays(tokens.combine_chunks().offsets, vocab_ids(flat))}
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), str(out / "part.parquet"))


def tree_rss_kib(root: int) -> int:
    """Resident memory of a process and all its descendants (Spark's JVM is a child of its Python driver)."""
    now = processes()
    return sum(now[pid][1] for pid in tree(root, now))


def timed_process(command: list[str]) -> tuple[float, float]:
    """(seconds, peak resident GiB of the whole process tree, sampled every 0.2 s) of one process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss_kib(process.pid))
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    if process.returncode:
        raise RuntimeError(f"{command} failed:\n{process.stderr.read()[-3000:]}")
    return seconds, peak / 2**20


def whole_processes(data: Path, configs: list[str], rows: int, repeats: int) -> None:
    """--processes: each engine as the process a user starts, start-up included."""
    import yaml

    work = Path(tempfile.mkdtemp(prefix="tfbridge-bench-"))
    results = {}
    try:
        for name in configs:
            config = work / f"{name}.yaml"
            config.write_text(yaml.safe_dump({"data": {"path": str(data)}, "label": "target", "task": "regression",
                                              "features": CONFIGS[name], "output": str(work / f"{name}-out")}))
            tfbridge = str(Path(sys.executable).with_name("tfbridge"))
            commands = {"tfbridge": [tfbridge, "features", "--config", str(config)],
                        "spark_ml": [sys.executable, __file__, "--spark-ml-job", name, str(data),
                                     str(work / f"{name}-spark")]}
            for engine, command in commands.items():
                results[name, engine] = [timed_process(command) for _ in range(repeats)]
                print(f"{name:6s} {engine:9s} {results[name, engine]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{rows:,} rows, 2 cores, whole processes (start-up included), median of {repeats} runs")
    print("| config | engine | rows/s | vs Spark ML | peak RSS (GiB) | runs (s) |\n|---|---|---:|---:|---:|---|")
    for name in configs:
        spark_rate = rows / statistics.median(t for t, _ in results[name, "spark_ml"])
        for engine in ("tfbridge", "spark_ml"):
            runs = results[name, engine]
            rate = rows / statistics.median(t for t, _ in runs)
            print(f"| {name} | {engine} | {rate:,.0f} | {rate / spark_rate:.2f}x | {max(m for _, m in runs):.2f} | "
                  f"{', '.join(f'{t:.1f}' for t, _ in runs)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "tfbridge-bench"))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--processes", action="store_true", help="time whole processes, start-up included")
    parser.add_argument("--spark-ml-job", nargs=3, metavar=("CONFIG", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.spark_ml_job:
        name, data, out = args.spark_ml_job
        spark = spark_session()
        try:
            run_spark_ml(spark, Path(data), name, Path(out))
        finally:
            spark.stop()
        return
    setup_logging()
    for rows in args.rows:
        data = Path(args.data_dir) / f"synthetic-{rows}"
        if not data.exists():
            print(f"writing {rows} synthetic rows to {data} ...", flush=True)
            write_synthetic(data, rows, seed=0)
        if args.processes:
            whole_processes(data, args.configs, rows, args.repeats)
        else:
            in_session(data, args.configs, rows, args.repeats)


def in_session(data: Path, configs: list[str], rows: int, repeats: int) -> None:
    """Each engine warm, in this process (Spark's session shared), fit + transform + write."""
    work = Path(tempfile.mkdtemp(prefix="tfbridge-bench-"))
    spark = spark_session()
    results = {}
    try:
        for name in configs:
            for engine, fn in (("tfbridge", lambda o: run_tfbridge(data, CONFIGS[name], o)),
                               ("spark_ml", lambda o: run_spark_ml(spark, data, name, o)),
                               ("numpy", lambda o: run_numpy_floor(data, name, o))):
                times = []
                for i in range(repeats):
                    out = work / f"{name}-{engine}-{i}"
                    times.append(timed(lambda: fn(out)))
                    shutil.rmtree(out, ignore_errors=True)
                    print(f"{name:6s} {engine:9s} run {i + 1}: {times[-1]:.1f} s", flush=True)
                results[name, engine] = times
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{rows:,} rows, 2 cores, median of {repeats} runs (seconds per run in brackets)")
    print(f"{'config':8s} {'engine':10s} {'rows/s':>10s} {'vs spark_ml':>12s}   runs")
    for name in configs:
        spark_rate = rows / statistics.median(results[name, "spark_ml"])
        for engine in ("tfbridge", "spark_ml", "numpy"):
            times = results[name, engine]
            rate = rows / statistics.median(times)
            print(f"{name:8s} {engine:10s} {rate:10,.0f} {rate / spark_rate:11.2f}x   "
                  f"[{', '.join(f'{t:.1f}' for t in times)}]")




if __name__ == "__main__":
    main()
