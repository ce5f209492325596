"""The scoring job: raw Parquet or CSV in, the input's columns plus predictions out, as Parquet.

    tfbridge score --model <output>/model --input raw/ --output scores/ [--master URL] [--mode error|overwrite] [--format csv|parquet]

Everything that can be wrong with the input's schema (a missing column, a type
that does not convert, an existing output with --mode error) stops the job
before Spark runs a task; a file Spark cannot read, a CSV value that does not
parse, or nulls in a column the model does not impute fail the job with a
DataError naming the file or the column. The output is written by Spark's
committer into a staging directory beside the target and put in place when the
job succeeded and its first rows, scored again by onnxruntime in this process,
agree with what Spark wrote (`check_scores`); so a failed job leaves no partial
output, a job beyond tolerance leaves none either, and an earlier one stays
intact. On a store, putting it in place is a copy after the earlier output is
deleted: a failure in that step loses the earlier scores, and `_tfbridge_score.json`,
written last, says whether the scores there are whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import time
import uuid
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyspark.sql import functions as F

from spark_infer import column_ref, score, stores
from tfbridge.scoring import MissingValues, ScoringModel
from tfbridge.scoring.parity import CHECK_ROWS, SPARK_VS_ONNXRUNTIME, HandOff, compare
from tfbridge.contracts import (CSV_NULL_VALUES, DATA_FORMATS, SCORE_RECORD, DataError, ModelManifest, fingerprints,
                                staged, write_json_atomic)
from tfbridge import storage
from tfbridge.storage import Location, StorageError

log = logging.getLogger(__name__)

MODES = ("error", "overwrite")


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    output: Location
    rows: int
    seconds: float


def spark_session(master: str | None, app: str = "tfbridge-score", uris=()):
    """The session: --master when given, else spark-submit's (it starts this driver with a gateway), else local[*];
    with the connector of each store that `uris` name (`spark_infer.stores`)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app).config("spark.ui.showConsoleProgress", "false")
    for key, value in stores.spark_options(uris).items():
        builder = builder.config(key, value)
    if master or "PYSPARK_GATEWAY_PORT" not in os.environ:
        builder = builder.master(master or "local[*]")
    return builder.getOrCreate()


def scoring_progress() -> tuple[int, int | None]:
    """(tasks done, tasks) over the stages Spark is running now in this process, for a progress bar."""
    from pyspark import SparkContext

    context = SparkContext._active_spark_context
    if context is None:
        return 0, None
    tracker = context.statusTracker()
    stages = [info for info in map(tracker.getStageInfo, tracker.getActiveStageIds()) if info is not None]
    return sum(s.numCompletedTasks for s in stages), sum(s.numTasks for s in stages) or None


def input_format(path: str, fmt: str | None = None) -> str:
    """"csv" or "parquet": as given, else CSV for a path ending in .csv."""
    if fmt is not None and fmt not in DATA_FORMATS:
        raise DataError(f"--format must be one of {DATA_FORMATS}, got {fmt!r}")
    return fmt or ("csv" if path.lower().endswith(".csv") else "parquet")


def read_input(spark, path: str, manifest: ModelManifest, fmt: str | None = None):
    """Parquet (file, directory or glob), or CSV read as the feature stage reads it, so that nothing is guessed.

    CSV as RFC 4180 writes it (quoted fields may hold commas, quotes as "", newlines), every field as
    text; the model's number columns then take CSV_NULL_VALUES (empty, NA, NaN, ...) as missing and any
    other value that is not a number fails the job naming the column and the value. Dates and times stay
    text: `tfbridge.scoring` reads them with the column's datetime format, as the feature stage did.
    """
    if input_format(path, fmt) == "parquet":
        return spark.read.parquet(path)
    from pyspark.sql.types import StringType, StructField, StructType

    csv = spark.read.option("header", "true").option("escape", '"').option("multiLine", "true")
    header = csv.csv(path).schema.names
    df = csv.option("mode", "FAILFAST").schema(StructType([StructField(n, StringType()) for n in header])).csv(path)
    numbers = [name for name, column in manifest.inputs.items() if column.dtype in ("float", "int") and name in header]
    for name in numbers:
        text = F.col(column_ref(name))
        number = text.try_cast("double")
        df = df.withColumn(name, F.when(text.isNull() | text.isin(*CSV_NULL_VALUES), F.lit(None).cast("double"))
                           .when(number.isNull(), F.raise_error(F.concat(
                               F.lit(f"column '{name}' of {path} {NOT_A_NUMBER} '"), text, F.lit("'"))))
                           .otherwise(number))
    return df


NOT_A_NUMBER = "has a value that is not a number:"
_NOT_A_NUMBER = re.compile(rf"(column '[^']+' of .*? {re.escape(NOT_A_NUMBER)} '[^'\n]*')")
_UNREADABLE_FILE = re.compile(r"Encountered error while reading file (\S+?)\.?(?:\s|$)([^\n]*)")
_CAUSE = re.compile(r"Caused by: [\w.$]+(?:: (?:\[[A-Z_.]+\] )?([^\n]+))?")
_MISSING = re.compile(rf"column '([^']+)' {re.escape(MissingValues.MARKER)}")
_WORKER_DATA_ERROR = re.compile(r"tfbridge\.contracts\.errors\.DataError: ([^\n]+)")  # e.g. a value beyond float32


def input_error(error: Exception, df, input_path: str) -> DataError | None:
    """A failed Spark job as a DataError naming the file or column, when bad input caused it; None otherwise."""
    text = str(error)
    not_a_number = _NOT_A_NUMBER.search(text)
    if not_a_number:
        return DataError(not_a_number.group(1))
    missing = _MISSING.search(text)
    if missing:  # the UDF saw nulls in one batch: count them over the whole input for the message
        name = missing.group(1)
        column = F.col(column_ref(name))
        is_missing = column.isNull() | F.isnan(column) | (F.abs(column) == float("inf")) \
            if df.schema[name].dataType.simpleString() != "string" else column.isNull()
        missing_rows, rows = df.agg(F.sum(is_missing.cast("long")), F.count(F.lit(1))).first()  # one pass
        return MissingValues(name, missing_rows or 0, rows, where=f"of {input_path}")
    worker_data_error = _WORKER_DATA_ERROR.search(text)
    if worker_data_error:
        return DataError(worker_data_error.group(1))
    unreadable = _UNREADABLE_FILE.search(text)
    if unreadable:
        path = re.sub(r"^file:(//)?", "", unreadable.group(1))
        reasons = [re.sub(r"\s*SQLSTATE: \w+", "", r).strip() for r in (unreadable.group(2), *_CAUSE.findall(text))]
        reasons = [r for r in reasons if r]
        return DataError(f"{path}: cannot be read: {'; '.join(reasons[-2:]) or 'no reason given'}")
    return None


def run_score(model_dir: str, input_path: str, output: str, master: str | None = None, mode: str = "error",
              id_column: str | None = None, spark=None, fmt: str | None = None) -> ScoreResult:
    """Scores the input into `output` (paths or URIs), committed only once Spark's scores agree with onnxruntime
    here (`check_scores`): a job beyond tolerance raises ParityError and leaves any earlier output intact."""
    if mode not in MODES:
        raise DataError(f"--mode must be one of {MODES}, got {mode!r}")
    final = Location.of(output)
    if final.exists() and mode == "error":
        raise DataError(f"output {output} exists; pass --mode overwrite to replace it")
    input_files = storage.glob(Location.of(input_path))
    if not input_files and not Location.of(input_path).is_dir():
        raise DataError(f"input {input_path} does not exist")
    # Spark's JVM resolves a relative path against its own working directory, and names S3 `s3a://`.
    spark_input = Location.of(input_path).hadoop_uri()
    start = time.monotonic()
    model = ScoringModel.load(model_dir)
    owned = spark is None and _active_session() is None  # a session this job starts, it stops
    spark = spark or spark_session(master, uris=(input_path, output))
    df = None
    try:
        with staged_scores(spark, final) as staging:
            df = read_input(spark, spark_input, model.manifest, fmt)
            if id_column is not None and id_column not in df.columns:
                raise DataError(f"--id-column '{id_column}' is not a column of {input_path}")
            scored = score(_model_columns(df, model, id_column) if id_column else df, model)
            predictions = [c for c in scored.columns if c not in df.columns]
            kept = [id_column] if id_column else df.columns
            scored = scored.select(*[F.col(column_ref(c)) for c in [*kept, *predictions]])
            job_start = time.monotonic()
            scored.write.parquet(staging.hadoop_uri())
            job_seconds = time.monotonic() - job_start
            written = written_scores(staging)
            rows = written.count_rows()
            if id_column:
                _check_unique_ids(written, id_column, input_path, rows)
            if model.onnx_bytes is not None:
                hand_off = check_scores(model, _written_rows(written, df, model, id_column)).check()
                log.info("score: %s, largest differences %s", hand_off.name, hand_off.max_abs_diff)
            input_files = input_files or storage.glob(Location.of(input_path) / "*")
            # seconds: the whole job, Spark's start included; job_seconds: the Spark job that read, scored, wrote.
            record = {"rows": rows, "seconds": time.monotonic() - start, "input": input_path,
                      "job_seconds": job_seconds, "model": str(model_dir), "output": str(final),
                      "fingerprint": fingerprints.scores_fingerprint(model.manifest, input_files)}
            if final.is_local:  # in place with the scores, in one step
                write_json_atomic(record, staging / SCORE_RECORD)
    except BaseException as error:
        explained = input_error(error, df, input_path) if isinstance(error, Exception) else None
        if explained is None:
            raise
        raise explained from None
    finally:
        if owned:
            spark.stop()
    if not final.is_local:  # after the move: the record says the scores are whole
        write_json_atomic(record, final / SCORE_RECORD)
    seconds = time.monotonic() - start
    log.info("score: %s rows -> %s in %.1f s", f"{rows:,}", final, seconds)
    return ScoreResult(final, rows, seconds)


@contextlib.contextmanager
def staged_scores(spark, final: Location) -> Iterator[Location]:
    """Where Spark writes the scores, put in place of `final` when the block ends: on local disk through `staged`
    (one exchange of directories); on a store, written beside it and moved by Hadoop's file system once checked
    (a store's move is a copy: its record, `_tfbridge_score.json`, is written after it, and a reader that goes by
    the record never reads scores half moved)."""
    if final.is_local:
        with staged(final.local) as staging:
            yield Location.of(str(staging))
        return
    staging = final.with_name(f".{final.name}-attempt-{uuid.uuid4().hex[:12]}")
    try:
        yield staging
        jvm = spark.sparkContext._jvm
        conf = spark.sparkContext._jsc.hadoopConfiguration()
        source, target = (jvm.org.apache.hadoop.fs.Path(location.hadoop_uri()) for location in (staging, final))
        filesystem = target.getFileSystem(conf)
        filesystem.delete(target, True)
        if not filesystem.rename(source, target):
            raise StorageError(f"{final}: Spark's file system could not move the scores there from {staging}")
    finally:
        staging.remove()


def written_scores(directory: Location):
    """What Spark wrote (its Parquet part files), as a pyarrow dataset read where it lies."""
    filesystem, path = directory.filesystem()
    return pads.dataset([f"{path}/{part.name}" for part in directory.files("*.parquet")], format="parquet",
                        filesystem=filesystem)


def _active_session():
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession()


def check_scores(model: ScoringModel, table, output_col: str = "prediction") -> HandOff:
    """Rows Spark scored (a pyarrow Table or pandas frame holding the model's input columns and the predictions
    Spark wrote) scored again by onnxruntime in this process, row by row."""
    frame = table if isinstance(table, pd.DataFrame) else table.to_pandas()
    if model.manifest.task == "regression":
        spark_out = {"prediction": frame[output_col].to_numpy()}
    else:
        spark_out = {"label": frame[output_col].to_numpy(dtype=object),
                     "probabilities": np.stack(frame[f"{output_col}_probabilities"].to_list())}

    def describe(i: int) -> str:
        values = ", ".join(f"{name}={frame[name].iloc[i]!r}" for name in model.manifest.inputs)
        return f"scored row {i} ({values})"

    return compare("Spark vs onnxruntime (scored rows)", model.predict(frame), spark_out, SPARK_VS_ONNXRUNTIME,
                   describe)


def _written_rows(dataset, df, model: ScoringModel, id_column: str | None) -> pd.DataFrame:
    """Up to CHECK_ROWS rows Spark wrote, with the input columns the model read (joined back by id when only the
    id was written)."""
    written = dataset.head(CHECK_ROWS).to_pandas()
    if not id_column:
        return written
    ids = written[id_column].tolist()
    inputs = (df.filter(F.col(column_ref(id_column)).isin(ids))
              .select(*[F.col(column_ref(c)) for c in dict.fromkeys([id_column, *model.manifest.inputs])]).toPandas())
    return written.merge(inputs, on=id_column, how="left", validate="one_to_one")


def _check_unique_ids(dataset, id_column: str, input_path: str, rows: int) -> None:
    ids = dataset.to_table(columns=[id_column]).column(id_column)
    distinct = len(pc.unique(ids))
    if distinct != rows:
        raise DataError(f"--id-column '{id_column}' is not unique in {input_path}: {rows - distinct:,} of "
                        f"{rows:,} rows repeat an id, so predictions could not be joined back by it; give a "
                        f"column with one value per row")


def _model_columns(df, model: ScoringModel, id_column: str):
    """Only the id and the columns the model reads: with --id-column nothing else is written, so nothing else need
    travel through the Python workers (the schema is checked first, for its messages)."""
    model.check_schema(df.schema, f"scoring with {model.directory}")
    return df.select(*[F.col(column_ref(c)) for c in dict.fromkeys([id_column, *model.manifest.inputs])])


def add_score_arguments(parser) -> None:
    """The scoring job's options, for `python -m spark_infer` and `tfbridge score` alike."""
    parser.add_argument("--model", required=True, help="the training stage's <output>/model")
    parser.add_argument("--input", required=True, help="raw Parquet (file, directory, glob) or CSV")
    parser.add_argument("--output", required=True, help="Parquet directory to write")
    parser.add_argument("--mode", default="error", choices=MODES, help="an existing output: stop (default) or replace it")
    parser.add_argument("--id-column", help="keep only this input column next to the predictions")
    parser.add_argument("--format", choices=DATA_FORMATS,
                        help="the input's format (default: csv for a path ending in .csv, else parquet)")
    parser.add_argument("--master", help="Spark master URL (default local[*], or spark-submit's)")


def score_job(model: str, input_path: str, output: str, master: str | None, mode: str,
              id_column: str | None = None, fmt: str | None = None) -> None:
    """The stage as a job (`python -m spark_infer`, `tfbridge score`): score, report one line."""
    result = run_score(model, input_path, output, master, mode, id_column, fmt=fmt)
    print(f"score: {result.rows:,} rows -> {result.output} ({result.seconds:.1f} s)")
