"""The scoring job: raw Parquet or CSV in, the input's columns plus predictions out, as Parquet.

    tfbridge score --model <output>/model --input raw/ --output scores/ [--master URL] [--mode error|overwrite]

Everything that can be wrong with the input (a missing column, a type that
does not convert, an existing output with --mode error) stops the job before
Spark runs a task. The output is written by Spark's committer into a staging
directory beside the target and renamed into place when the job succeeded, so
a failed job leaves no partial output and an earlier one stays intact.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from tfbridge.contracts import DataError, ModelManifest, replace_dir

log = logging.getLogger(__name__)

MODES = ("error", "overwrite")


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    output: Path
    rows: int
    seconds: float


def spark_session(master: str | None, app: str = "tfbridge-score"):
    """The session: --master when given, else spark-submit's (it starts this driver with a gateway), else local[*]."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app).config("spark.ui.showConsoleProgress", "false")
    if master or "PYSPARK_GATEWAY_PORT" not in os.environ:
        builder = builder.master(master or "local[*]")
    return builder.getOrCreate()


def read_input(spark, path: str, manifest: ModelManifest):
    """Parquet (file or directory), or CSV read with the model's types so nothing is guessed."""
    if path.lower().endswith(".csv"):
        from pyspark.sql.types import DoubleType, StringType, StructField, StructType

        header = spark.read.option("header", "true").csv(path).schema.names
        types = {name: StringType() if spec["dtype"] == "string" else DoubleType()
                 for name, spec in manifest.inputs.items()}
        schema = StructType([StructField(name, types.get(name, StringType())) for name in header])
        return spark.read.option("header", "true").option("mode", "FAILFAST").schema(schema).csv(path)
    return spark.read.parquet(path)


def run_score(model_dir: str, input_path: str, output: str, master: str | None = None, mode: str = "error",
              id_column: str | None = None, spark=None) -> ScoreResult:
    from spark_infer import score
    from spark_infer.udf import ScoringModel

    if mode not in MODES:
        raise DataError(f"--mode must be one of {MODES}, got {mode!r}")
    # Absolute paths: Spark's JVM resolves relative ones against its own working directory.
    model_dir, input_path = os.path.abspath(model_dir), os.path.abspath(input_path)
    final = Path(output).resolve()
    if final.exists() and mode == "error":
        raise DataError(f"output {output} exists; pass --mode overwrite to replace it")
    if not glob.glob(input_path):
        raise DataError(f"input {input_path} does not exist")
    start = time.monotonic()
    model = ScoringModel.load(model_dir)
    spark = spark or spark_session(master)
    df = read_input(spark, input_path, model.manifest)
    if id_column is not None and id_column not in df.columns:
        raise DataError(f"--id-column '{id_column}' is not a column of {input_path}")
    scored = score(df, model)
    predictions = [c for c in scored.columns if c not in df.columns]
    scored = scored.select(*([id_column] if id_column else df.columns), *predictions)
    staging = final.with_name(f".{final.name}-staging-{uuid.uuid4().hex[:8]}")
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        scored.write.parquet(str(staging))
        rows = spark.read.parquet(str(staging)).count()
        replace_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    seconds = time.monotonic() - start
    log.info("score: %s rows -> %s in %.1f s", f"{rows:,}", final, seconds)
    return ScoreResult(final, rows, seconds)
