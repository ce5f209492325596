"""Shared fixtures: small datasets made in the test, decoders for the feature stage's outputs."""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


@pytest.fixture(scope="session")
def python_env():
    """Environment for subprocesses: the test's interpreter and the repo on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), env.get("PYTHONPATH", "")])
    return env, sys.executable
