"""Helpers the test modules import: decoding the feature stage's outputs, the all-transforms config."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np


def decode_split(features_dir, split: str) -> dict[str, np.ndarray]:
    """Every row of one split's TFRecords, as arrays (VarLen features as lists of arrays)."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from tfbridge.contracts import ArtifactLayout, materialized_feature_spec

    spec = materialized_feature_spec(tft.TFTransformOutput(str(features_dir)).transformed_feature_spec())
    layout = ArtifactLayout(Path(features_dir).parent)
    files = sorted(glob.glob(layout.transformed_pattern(split)))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1 << 20)
    columns: dict[str, list] = {k: [] for k in spec}
    for serialized in dataset:
        parsed = tf.io.parse_example(serialized, spec)
        for key, value in parsed.items():
            if isinstance(value, tf.SparseTensor):
                dense = tf.RaggedTensor.from_sparse(value)
                columns[key].extend(row.numpy() for row in dense)
            else:
                columns[key].append(value.numpy())
    out = {}
    for key, parts in columns.items():
        if isinstance(spec[key], tf.io.VarLenFeature):
            out[key] = parts
        else:
            out[key] = np.concatenate(parts) if parts else np.array([])
    return out


def all_features() -> dict:
    """Every transform of the feature library (the feature-stage parity config), plus a vocabulary with
    no OOV bucket (unseen -> -1); the model exported from it is shared by the export and scoring tests."""
    from tests.tft_features.test_pipeline_parity import FEATURES

    return {**FEATURES, "cat_exact": [{"vocabulary": {"num_oov_buckets": 0}}]}


def with_exact_copy(table):
    return table.append_column("cat_exact", table.column("cat"))


def serving_inputs(table, manifest) -> dict[str, np.ndarray]:
    """A pyarrow table as the graph's raw inputs, keyed by graph input name (ModelManifest.input_names): NaN for a
    missing number, "" for a missing string, strings as `str` (onnxruntime mangles bytes)."""
    out = {}
    for name, spec in manifest.inputs.items():
        values = table.column(name).to_pylist()
        if spec["dtype"] == "string":
            values = np.array(["" if v is None else v for v in values], object)
        else:
            values = np.array([np.nan if v is None else v for v in values], np.float32)
        out[manifest.input_names[name]] = values
    return out


def tf_inputs(feeds: dict[str, np.ndarray]) -> dict:
    """The same inputs as tensors, for the SavedModel's signature."""
    import tensorflow as tf

    return {k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in feeds.items()}


def onnx_session(model):
    """onnxruntime on the CPU with the text-op library loaded as the scorer loads it; `model` is a path or bytes."""
    from spark_infer.session import make_session

    return make_session(model, text_ops=True)
