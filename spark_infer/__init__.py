"""Stage 3: bulk scoring of RAW data on Spark with the exported model (see spark_infer.udf).

    from spark_infer import score
    scored = score(spark.read.parquet("raw/"), "runs/demo/model")

`score` checks the DataFrame against the model manifest before any job runs and
adds the prediction (regression: `prediction`; classification: `prediction`,
the label, and `prediction_probabilities`, one per class in the manifest's
order). Columns keep the user's names, whatever they are (`Home Team`,
`sample.yr`): the model manifest maps each to its graph input. The model
path decides the engine: the ONNX graph when the export exists, else the
SavedModel (TensorFlow inside the UDF). `load_model` reads a model for
scoring outside Spark (onnxruntime in this process).
"""

from spark_infer.api import column_ref, load_model, model_inputs, score, scoring_udf

__all__ = ["column_ref", "load_model", "model_inputs", "score", "scoring_udf"]
