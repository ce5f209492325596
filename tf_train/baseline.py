"""A linear baseline trained in the same run on the same transformed features: the figure the model must beat.

scikit-learn's Ridge (regression, on the model's own target: standardised, and log when `label_transform`
is log) or multinomial LogisticRegression (classification), on the transformed train split as a sparse
design matrix: numbers and vectors as they are, ids one-hot, token ids as counts. It reads at most
BASELINE_ROWS train rows (the first in file order), so its cost stays a few seconds on any table.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from tfbridge.contracts import FeatureKind, graph_input_name
from tf_train import data as training_data

BASELINE_ROWS = 200_000


def design_matrix(batches, data: training_data.TrainingData) -> tuple[sp.csr_matrix, np.ndarray]:
    """(X, raw labels) from batches of (model inputs, raw label), features in sorted order."""
    blocks, labels = [], []
    for inputs, raw_label in batches:
        parts = []
        for name, output in sorted(data.features.items()):
            x = inputs[graph_input_name(name)].numpy()
            if output.kind == FeatureKind.NUMBER:
                parts.append(sp.csr_matrix(x.reshape(-1, 1).astype(np.float64)))
            elif output.kind == FeatureKind.VECTOR:
                parts.append(sp.csr_matrix(x.astype(np.float64)))
            else:  # ids [batch] or token ids [batch, tokens] padded with PAD_ID: counts per id
                ids = x.reshape(len(x), -1)
                rows = np.repeat(np.arange(len(ids)), ids.shape[1])
                flat = ids.reshape(-1)
                keep = (flat >= 0) & (flat < output.width)
                parts.append(sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], flat[keep])),
                                           shape=(len(ids), output.width)))
        blocks.append(sp.hstack(parts, format="csr"))
        labels.append(raw_label.numpy())
    if not blocks:
        return sp.csr_matrix((0, 0)), np.zeros([0])
    return sp.vstack(blocks, format="csr"), np.concatenate(labels)


def fit_baseline(data: training_data.TrainingData):
    """The fitted scikit-learn model, on up to BASELINE_ROWS train rows."""
    from sklearn.linear_model import LogisticRegression, Ridge

    batches = (training_data.labelled_batches(data, data.train_files)
               .take(-(-BASELINE_ROWS // training_data.EVAL_BATCH)))
    x, raw_label = design_matrix(batches, data)
    y = training_data.target(tf.constant(raw_label), data.label).numpy()
    if data.label.task == "regression":
        return Ridge(alpha=1.0).fit(x, y)
    known = y >= 0
    return LogisticRegression(max_iter=500).fit(x[known], y[known])


def baseline_outputs(model, x: sp.csr_matrix, data: training_data.TrainingData) -> dict[str, np.ndarray]:
    """The baseline's predictions in label units, as the model's: `prediction`, or `probabilities` per class."""
    label = data.label
    if label.task == "regression":
        y = model.predict(x) * label.std + label.mean
        return {"prediction": np.exp(y) if label.transform == "log" else y}
    probabilities = np.zeros((x.shape[0], len(label.classes)))
    probabilities[:, model.classes_] = model.predict_proba(x)  # a class absent from the sample keeps 0
    return {"probabilities": probabilities}
