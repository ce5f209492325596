"""Eval-split quality in label units, in numpy (no sklearn at run time)."""

from __future__ import annotations

import numpy as np


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    residual = y - pred
    total = ((y - y.mean()) ** 2).sum()
    return {"r2": float(1.0 - (residual ** 2).sum() / total) if total > 0 else float("nan"),
            "rmse": float(np.sqrt((residual ** 2).mean())),
            "mae": float(np.abs(residual).mean()),
            "rows": int(len(y))}


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties counted half."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    sorted_scores = np.asarray(score)[order]
    ranks = np.empty(len(score), np.float64)
    # Average rank for each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(score)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(y_index: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, log loss and AUC (binary; for multiclass the mean of one-vs-rest AUCs)."""
    y_index = np.asarray(y_index, np.int64)
    p = np.clip(np.asarray(probabilities, np.float64), 1e-15, 1.0)
    classes = p.shape[1]
    if classes == 2:
        auc = roc_auc(y_index == 1, p[:, 1])
    else:
        aucs = [roc_auc(y_index == k, p[:, k]) for k in range(classes)]
        auc = float(np.nanmean(aucs)) if not all(np.isnan(aucs)) else float("nan")
    return {"accuracy": float((p.argmax(axis=1) == y_index).mean()),
            "auc": auc,
            "log_loss": float(-np.log(p[np.arange(len(y_index)), y_index]).mean()),
            "rows": int(len(y_index))}
