"""Stage 3: bulk scoring of RAW data on Spark with the exported model (see spark_infer.udf).

    from spark_infer import score
    scored = score(spark.read.parquet("raw/"), "runs/demo/model")

`score` checks the DataFrame against the model manifest before any job runs and
adds the prediction (regression: `prediction`; classification: `prediction`,
the label, and `prediction_probabilities`, one per class in the manifest's
order). The model path decides the engine: the ONNX graph when the export
exists, else the SavedModel (TensorFlow inside the UDF).
"""

from __future__ import annotations

from pathlib import Path


def onnx_udf(model_path: str | Path, *, threads: int | None = None, use_gpu: bool = False):
    """A pandas UDF (iterator form) over a struct of the model's input columns.

    threads: intra-op threads per session, default `spark.task.cpus` (1).
    use_gpu: use CUDA when the executor's onnxruntime has it.
    """
    from spark_infer.udf import ScoringModel

    return _udf(ScoringModel.load(model_path), threads, use_gpu)


def _udf(model, threads: int | None, use_gpu: bool):
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import pandas_udf

    from spark_infer.udf import predictor, result_type

    spark = SparkSession.getActiveSession()
    if spark is None:
        raise RuntimeError("onnx_udf needs an active SparkSession")
    threads = threads or int(spark.conf.get("spark.task.cpus", "1"))
    model_bytes = spark.sparkContext.broadcast(model.onnx_bytes) if model.onnx_bytes is not None else None
    return pandas_udf(predictor(model, model_bytes, threads, use_gpu), result_type(model.manifest))


def score(df, model, output_col: str = "prediction", *, threads: int | None = None, use_gpu: bool = False):
    """df with the model's prediction columns added; raises DataError naming a bad column before any job.

    model: the model directory, or a ScoringModel already read from it.
    """
    from pyspark.sql import functions as F

    from spark_infer.udf import ScoringModel

    if not isinstance(model, ScoringModel):
        model = ScoringModel.load(model)
    model.check_schema(df.schema, f"scoring with {model.directory}")
    udf = _udf(model, threads, use_gpu)
    scored = df.withColumn(output_col, udf(F.struct(*[F.col(c) for c in model.input_names])))
    if model.manifest.task == "regression":
        return scored
    return (scored.withColumn(f"{output_col}_probabilities", F.col(f"{output_col}.probabilities"))
            .withColumn(output_col, F.col(f"{output_col}.label")))
