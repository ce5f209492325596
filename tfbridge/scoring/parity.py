"""Parity at a hand-off: two engines' outputs on the same rows, compared row by row against a tolerance.

A hand-off beyond its tolerance stops the run (`ParityError`, exit 1) before anything downstream uses
its output: the export keeps no graph that disagrees with its SavedModel, the scoring job commits no
scores that disagree with onnxruntime. The same comparison gives the figures the report shows.

Tolerances (README, "What is checked at run time"):
- a regression prediction agrees within `relative` of its own size or `spread` of the typical spread
  of the reference's predictions on the user's rows (the middle 98%), whichever is larger (so values
  near zero are not held to a relative bound);
- class probabilities agree within `probability`, absolute; labels are equal, except where the
  reference's two most probable classes are closer than twice that (a tie either engine may break).
A NaN agrees only with a NaN, an infinity only with the same infinity.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from tfbridge.contracts import StageError

CHECK_ROWS = 2_000  # rows of the user's table each hand-off is checked on
WORST_ROWS = 3  # rows named in an error and in the report


@dataclasses.dataclass(frozen=True)
class Tolerance:
    relative: float
    spread: float
    probability: float

    def __str__(self) -> str:
        return (f"predictions within {self.relative:g} relative or {self.spread:g} of their spread, "
                f"probabilities within {self.probability:g}")


# The SavedModel and the ONNX graph compute in different kernels (float32 sums in another order).
ONNX_VS_SAVED_MODEL = Tolerance(relative=1e-4, spread=1e-5, probability=1e-5)
# Spark's workers and onnxruntime here run the same graph on the same values: only the hand-off can differ.
SPARK_VS_ONNXRUNTIME = Tolerance(relative=1e-6, spread=1e-6, probability=1e-6)


@dataclasses.dataclass(frozen=True)
class RowDifference:
    """One row beyond tolerance: which output, which row (and its raw values), both engines' values."""

    output: str
    row: str
    reference: str
    candidate: str
    difference: float


@dataclasses.dataclass(frozen=True)
class HandOff:
    """One hand-off compared on `rows` rows: the largest |a - b| per output (labels: the share that differ),
    and the rows beyond tolerance, worst first (at most WORST_ROWS of them, `failed` in all)."""

    name: str
    rows: int
    max_abs_diff: dict[str, float]
    tolerance: str
    failed: int = 0
    worst: tuple[RowDifference, ...] = ()

    @property
    def passed(self) -> bool:
        return self.failed == 0

    def check(self) -> "HandOff":
        """Itself when within tolerance; ParityError naming the output and the worst rows otherwise."""
        if self.passed:
            return self
        rows = "; ".join(f"output '{w.output}' on {w.row}: {w.reference} vs {w.candidate}" for w in self.worst)
        raise ParityError(f"{self.name}: {self.failed:,} of {self.rows:,} rows beyond tolerance ({self.tolerance}). "
                          f"Worst: {rows}")


class ParityError(StageError):
    """Two engines disagree beyond tolerance on the same rows: the stage output would be wrong."""


def compare(name: str, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
            tolerance: Tolerance, describe_row: Callable[[int], str], typical_rows: int | None = None) -> HandOff:
    """`candidate` held to `reference`, output by output (those both hold), row by row.

    Outputs: `prediction` (numbers), `probabilities` ([rows, classes]) and `label`, as the exported
    signature names them. `describe_row(i)` names row i in messages (e.g. "eval row 17 (carat=0.3, ...)").
    The spread a prediction's tolerance is taken of is that of the first `typical_rows` rows (default all):
    the user's own rows, not edge rows whose predictions may be astronomically far out.
    """
    largest: dict[str, float] = {}
    bad: dict[int, RowDifference] = {}
    margin = _tie_margin(reference.get("probabilities"))
    for output in [o for o in ("prediction", "probabilities", "label") if o in reference and o in candidate]:
        ref, got = np.asarray(reference[output]), np.asarray(candidate[output])
        if len(ref) != len(got):
            raise ParityError(f"{name}: {len(ref):,} rows of '{output}' against {len(got):,}")
        if output == "label":
            differs = np.array([str(a) != str(b) for a, b in zip(_text(ref), _text(got))], bool)
            largest[output] = float(differs.mean()) if len(differs) else 0.0
            beyond = differs & (margin > 2 * tolerance.probability) if margin is not None else differs
            distance = beyond.astype(np.float64)
        else:
            ref, got = ref.astype(np.float64), got.astype(np.float64)
            with np.errstate(invalid="ignore"):
                diff = np.abs(ref - got)
            same = (ref == got) | (np.isnan(ref) & np.isnan(got))  # the same infinity, or NaN in both
            diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
            if diff.ndim > 1:
                diff = diff.max(axis=tuple(range(1, diff.ndim)))
            largest[output] = float(diff.max()) if diff.size else 0.0
            if output == "prediction":
                allowed = np.maximum(tolerance.relative * np.abs(np.nan_to_num(ref)),
                                     tolerance.spread * typical_spread(ref[:typical_rows]))
            else:
                allowed = tolerance.probability
            distance = np.where(diff > allowed, diff, 0.0)
            beyond = distance > 0
        for i in np.flatnonzero(beyond):
            if i not in bad or distance[i] > bad[i].difference:
                bad[int(i)] = RowDifference(output, "", _value(reference[output][i]), _value(candidate[output][i]),
                                            float(distance[i]))
    worst = sorted(bad.items(), key=lambda item: -item[1].difference)[:WORST_ROWS]
    return HandOff(name, len(next(iter(reference.values()))) if reference else 0, largest, str(tolerance),
                   len(bad), tuple(dataclasses.replace(d, row=describe_row(i)) for i, d in worst))


def typical_spread(values: np.ndarray) -> float:
    """The range of the middle 98% of the finite values (1 where that is 0): a few extreme rows among the user's
    own do not widen it."""
    finite = values[np.isfinite(values)]
    spread = float(np.subtract(*np.percentile(finite, [99, 1]))) if finite.size else 0.0
    return spread if spread > 0 else 1.0


def _tie_margin(probabilities) -> np.ndarray | None:
    """Per row, the gap between the two most probable classes (None without probabilities)."""
    if probabilities is None:
        return None
    p = np.sort(np.asarray(probabilities, np.float64), axis=1)
    return p[:, -1] - p[:, -2] if p.shape[1] > 1 else np.full(len(p), np.inf)


def _text(values: np.ndarray) -> list:
    return [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]


def _value(value) -> str:
    value = np.asarray(value)
    if value.dtype.kind in "OSU":
        item = value.item()
        return repr(item.decode() if isinstance(item, bytes) else item)
    return np.array2string(value, precision=8, separator=", ") if value.ndim else f"{float(value):.8g}"
