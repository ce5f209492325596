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
