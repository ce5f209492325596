"""Eval metrics against scikit-learn on random data, ties and edge cases included."""

import numpy as np
import pytest
from sklearn import metrics as sk

from tf_train.metrics import classification_metrics, regression_metrics, roc_auc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.lognormal(5, 1, 500)
    pred = y * rng.normal(1, 0.1, 500)
    got = regression_metrics(y, pred)
    assert got["r2"] == pytest.approx(sk.r2_score(y, pred), rel=1e-12)
    assert got["rmse"] == pytest.approx(np.sqrt(sk.mean_squared_error(y, pred)), rel=1e-12)
    assert got["mae"] == pytest.approx(sk.mean_absolute_error(y, pred), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(1000) < 0.3
    score = np.round(rng.random(1000) + 0.3 * y, 1)  # rounding makes many ties
    assert roc_auc(y, score) == pytest.approx(sk.roc_auc_score(y, score), abs=1e-12)
    assert np.isnan(roc_auc(np.ones(5, bool), np.arange(5.0)))


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(800, 3))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    got = classification_metrics(y, p)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(y, p.argmax(axis=1)))
    assert got["log_loss"] == pytest.approx(sk.log_loss(y, p), rel=1e-9)
    assert got["auc"] == pytest.approx(sk.roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
    binary = classification_metrics(y[y < 2], p[y < 2][:, :2] / p[y < 2][:, :2].sum(axis=1, keepdims=True))
    assert binary["auc"] == pytest.approx(sk.roc_auc_score(y[y < 2], p[y < 2][:, 1] / p[y < 2][:, :2].sum(axis=1)))
