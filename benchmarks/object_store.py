"""The demo's stages with the data and the output on an S3-compatible server against the same on local disk.

    .venv/bin/python benchmarks/object_store.py --repeats 3 [--rows 53940]

The demo's config (diamonds, 40 epochs on 1 worker) run by `tfbridge run --force` twice per repeat, in turn: with
`data.path` and `output` on local disk, and on s3proxy on 127.0.0.1 (tests/s3server.py: the jar from Maven Central,
its buckets as directories on the same disk). Each stage's seconds are read off the console's lines. Prints the
median per stage, and the ratio S3 / local disk.

What the ratio measures here is the cost of going through a store's API (requests, multipart uploads, Spark's
s3a connector and its copy-on-rename commit), not a network: the server is on loopback and writes to the same
disk. `--rows` scales the diamonds table up by repeating it (ids kept unique).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("features", "train", "export", "score", "report")
_STAGE = re.compile(r"^✓ (\w+) +([\d.]+) s", re.M)


def diamonds(rows: int):
    import pyarrow as pa

    from tfbridge.datasets import diamonds_table

    table = diamonds_table()
    parts, count = [], 0
    while count < rows:
        parts.append(table.slice(0, min(table.num_rows, rows - count)))
        count += parts[-1].num_rows
    return pa.concat_tables(parts)


def run(config: Path, env: dict, cwd: Path) -> dict[str, float]:
    done = subprocess.run([str(Path(sys.executable).with_name("tfbridge")), "run", "--force", "--config", str(config)],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(done.stdout + done.stderr)
    seconds = {stage: float(value) for stage, value in _STAGE.findall(done.stdout)}
    return {**seconds, "total": sum(seconds.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=53_940)
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from tests.s3server import s3_server

    work = Path(tempfile.mkdtemp(prefix="object-store-bench-"))
    raw = yaml.safe_load(resources.files("tfbridge.configs").joinpath("diamonds.yaml").read_text())
    pq.write_table(diamonds(args.rows), work / "diamonds.parquet")
    with s3_server(work / "s3") as s3:
        s3.create_bucket("data")
        s3.create_bucket("runs")
        subprocess.run([sys.executable, "-c", "import sys; from tfbridge.storage import Location; "
                        "Location.of(sys.argv[2]).write_bytes(open(sys.argv[1], 'rb').read())",
                        str(work / "diamonds.parquet"), "s3://data/diamonds/part-0.parquet"],
                       env={**os.environ, **s3.env}, check=True)  # through the S3 API, as a user uploads
        spark_conf = work / "spark-conf"
        spark_conf.mkdir()
        # s3proxy implements no bulk delete (DeleteObjects): s3a deletes key by key.
        (spark_conf / "spark-defaults.conf").write_text("spark.hadoop.fs.s3a.multiobjectdelete.enable false\n")
        env = {**os.environ, **s3.env, "TFBRIDGE_CACHE": str(work / "cache"), "SPARK_CONF_DIR": str(spark_conf),
               "SPARK_LOCAL_IP": "127.0.0.1"}
        configs = {"local disk": {**raw, "data": {"path": str(work / "diamonds.parquet")}, "output": str(work / "out")},
                   "S3 (s3proxy)": {**raw, "data": {"path": "s3://data/diamonds/"}, "output": "s3://runs/demo"}}
        paths = {}
        for name, config in configs.items():
            paths[name] = work / f"{name.split()[0]}.yaml"
            paths[name].write_text(yaml.safe_dump(config))
        measured: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
        for repeat in range(args.repeats):
            for name, path in paths.items():
                measured[name].append(run(path, env, work))
                print(f"repeat {repeat + 1}: {name}: {measured[name][-1]}", file=sys.stderr, flush=True)

    print(f"\nThe demo's stages, {args.rows:,} rows, medians of {args.repeats} (seconds)\n")
    names = list(configs)
    print(f"| stage | {' | '.join(names)} | S3 / local |")
    print("|---|" + "---:|" * (len(names) + 1))
    for stage in (*STAGES, "total"):
        medians = [statistics.median(m[stage] for m in measured[name]) for name in names]
        print(f"| {stage} | {' | '.join(f'{v:.1f}' for v in medians)} | {medians[1] / medians[0]:.2f}x |")
    runs = {name: ", ".join(f"{m['total']:.0f}" for m in measured[name]) for name in names}
    print("\ntotals of each run: " + "; ".join(f"{name}: {v}" for name, v in runs.items()))


if __name__ == "__main__":
    main()
