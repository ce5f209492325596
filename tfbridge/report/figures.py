"""The report's plots, one matplotlib figure each, labelled in the user's units.

Each function takes plain arrays and returns a Figure; `tfbridge.report` gathers the arrays from the run's
artifacts and saves every figure as a PNG under `<output>/report/`.
"""

from __future__ import annotations

import unicodedata

import matplotlib

matplotlib.use("Agg")  # files only: no display, whatever the host has

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

OURS, BASELINE = "#1f77b4", "#ff7f0e"
BINS = 50


def _figure(columns: int = 1, width: float = 5.2, height: float = 3.6) -> tuple[Figure, list]:
    figure, axes = plt.subplots(1, columns, figsize=(width * columns, height), squeeze=False, layout="constrained")
    return figure, list(axes[0])


def _finite(values) -> np.ndarray:
    values = np.asarray(values, np.float64).reshape(-1)
    return values[np.isfinite(values)]


def numeric_feature(column: str, raw, transformed, steps: str, stats: dict) -> Figure:
    """The column's distribution as read and as the model gets it, with the statistics of its steps."""
    figure, (before, after) = _figure(2)
    before.hist(_finite(raw), bins=BINS, color="#7f7f7f")
    before.set(title=f"{column}: raw", xlabel=column, ylabel="rows")
    after.hist(_finite(transformed), bins=BINS, color=OURS)
    shown = ", ".join(f"{k} {_short(v)}" for k, v in stats.items() if np.ndim(v) == 0)
    after.set(title=f"after {steps}" + (f"\n{shown}" if shown else ""), xlabel=f"{column} (transformed)",
              ylabel="rows")
    return figure


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def categorical_feature(column: str, top: list[tuple[str, int]], vocabulary_size: int, oov_rate: float | None) -> Figure:
    """The most frequent values (or tokens), with the vocabulary size and the eval split's out-of-vocabulary rate."""
    figure, (axis,) = _figure(1, width=6.5, height=max(2.5, 0.28 * len(top) + 1.2))
    labels = [_category_label(value) for value, _ in top][::-1]
    axis.barh(labels, [count for _, count in top][::-1], color=OURS)
    oov = f"\n{oov_rate:.2%} of eval values out of vocabulary" if oov_rate is not None else ""
    axis.set(title=f"{column}: top {len(top)} of {vocabulary_size:,} in the vocabulary{oov}", xlabel="rows (sample)")
    return figure


def _category_label(value: str) -> str:
    """A category as a bar's label: "" as `""`, one holding a line break or another control character as Python
    writes it (`'a\\nb'`: the font has no glyph for them, and a line break would split the label), others as
    they are."""
    if value == "":
        return '""'
    if any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in value):
        return repr(value)
    return value


def training_loss(history: list[dict], kept_epoch: int | None = None) -> Figure:
    """Train, validation and eval loss per epoch, and the epoch whose weights were kept."""
    figure, (axis,) = _figure(1, width=6.5)
    epochs = [h["epoch"] for h in history]
    axis.plot(epochs, [h["loss"] for h in history], marker="o", label="train", color=OURS)
    for key, name, color, style in (("validation_loss", "validation (decides the stop)", OURS, "--"),
                                    ("eval_loss", "eval", BASELINE, "-")):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            axis.plot(epochs, [np.nan if v is None else v for v in values], marker="o", linestyle=style, label=name,
                      color=color)
    if epochs and kept_epoch is not None and kept_epoch != epochs[-1]:  # stopped early: the best epoch was kept
        axis.axvline(kept_epoch, color="grey", linestyle=":", label=f"kept: epoch {kept_epoch}")
    axis.set(title="training loss per epoch", xlabel="epoch", ylabel="loss (training target)")
    axis.legend()
    return figure


def regression(label: str, y, ours, baseline, metric_ours: float, metric_baseline: float) -> Figure:
    """Predicted vs actual for the model and its linear baseline, and both residual distributions."""
    figure, (scatter, residuals) = _figure(2, width=5.6)
    lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
    scatter.scatter(y, baseline, s=4, alpha=0.35, color=BASELINE, label=f"linear baseline (R² {metric_baseline:.4f})")
    scatter.scatter(y, ours, s=4, alpha=0.35, color=OURS, label=f"model (R² {metric_ours:.4f})")
    scatter.plot([lo, hi], [lo, hi], color="black", linewidth=1)
    scatter.set(title="predicted vs actual (eval split)", xlabel=f"actual {label}", ylabel=f"predicted {label}")
    scatter.legend(markerscale=4)
    both = np.concatenate([y - ours, y - baseline])
    bins = np.linspace(np.percentile(both, 0.5), np.percentile(both, 99.5), BINS)
    residuals.hist(y - baseline, bins=bins, alpha=0.6, color=BASELINE, label="linear baseline")
    residuals.hist(y - ours, bins=bins, alpha=0.6, color=OURS, label="model")
    residuals.set(title="residuals (actual − predicted)", xlabel=label, ylabel="rows")
    residuals.legend()
    return figure


def _roc(positive, score) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-np.asarray(score), kind="mergesort")
    positive = np.asarray(positive, bool)[order]
    tpr = np.r_[0.0, np.cumsum(positive) / max(positive.sum(), 1)]
    fpr = np.r_[0.0, np.cumsum(~positive) / max((~positive).sum(), 1)]
    return fpr, tpr


def binary(label: str, positive_class: str, y_index, p_ours, p_baseline, auc_ours: float, auc_baseline: float) -> Figure:
    """ROC curves and calibration (mean predicted vs observed rate in ten probability bins), model and baseline."""
    figure, (roc, calibration) = _figure(2)
    positive = np.asarray(y_index) == 1
    for p, name, colour, auc in ((p_baseline, "linear baseline", BASELINE, auc_baseline), (p_ours, "model", OURS, auc_ours)):
        roc.plot(*_roc(positive, p), color=colour, label=f"{name} (AUC {auc:.4f})")
        bins = np.clip((np.asarray(p) * 10).astype(int), 0, 9)
        filled = [b for b in range(10) if (bins == b).any()]
        calibration.plot([np.mean(np.asarray(p)[bins == b]) for b in filled], [positive[bins == b].mean() for b in filled],
                         marker="o", color=colour, label=name)
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.set(title=f"ROC, {label} = {positive_class} (eval split)", xlabel="false positive rate", ylabel="true positive rate")
    roc.legend()
    calibration.plot([0, 1], [0, 1], color="grey", linestyle=":")
    calibration.set(title="calibration", xlabel=f"predicted P({label} = {positive_class})", ylabel="observed rate")
    calibration.legend()
    return figure


def multiclass(label: str, classes: list[str], y_index, predicted_ours, predicted_baseline,
               accuracy_ours: float, accuracy_baseline: float) -> Figure:
    """Confusion matrices (rows: actual, columns: predicted, share of each actual class), model and baseline."""
    figure, axes = _figure(2, width=max(4.5, 0.45 * len(classes) + 3), height=max(3.6, 0.45 * len(classes) + 2))
    for axis, predicted, name, accuracy in ((axes[0], predicted_ours, "model", accuracy_ours),
                                            (axes[1], predicted_baseline, "linear baseline", accuracy_baseline)):
        matrix = np.zeros((len(classes), len(classes)))
        np.add.at(matrix, (np.asarray(y_index), np.asarray(predicted)), 1)
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        axis.set(title=f"{name} (accuracy {accuracy:.4f})", xlabel=f"predicted {label}", ylabel=f"actual {label}",
                 xticks=range(len(classes)), yticks=range(len(classes)))
        axis.set_xticklabels(classes, rotation=45, ha="right")
        axis.set_yticklabels(classes)
        if len(classes) <= 12:
            for (i, j), share in np.ndenumerate(shares):
                axis.text(j, i, f"{share:.2f}", ha="center", va="center", fontsize=8,
                          color="white" if share > 0.5 else "black")
    return figure


def close(figure: Figure) -> None:
    """Frees a saved figure (pyplot keeps every open one)."""
    plt.close(figure)
