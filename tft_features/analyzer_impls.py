"""Beam implementations of the custom analyzers that `analyzers` declares (TFT's beam/analyzer_impls.py).

TFT has no Box-Cox or Yeo-Johnson lambda and no most-frequent value; each is a PTransform that
`tft.experimental.ptransform_analyzer` runs over the batches of one column. The power-transform lambda
is estimated by maximum likelihood in one distributed pass: each batch is summarised as `PowerMoments`
for every candidate lambda, and summaries merge exactly, in any order.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import numpy as np

from tfbridge.contracts import DataError

# Candidate lambdas: a 0.05 grid over [-4, 4], offset by half a step so that no
# candidate is exactly 0. The maximum is refined by a quartic through the five
# grid points around it; this agrees with scipy's Brent search to ~1e-5.
LAMBDA_GRID = np.arange(-4.0, 4.0 + 1e-9, 0.05)[:-1] + 0.025
_CHUNK = 4096  # rows per vectorised step: bounds memory at len(LAMBDA_GRID) * _CHUNK floats per thread


@functools.cache
def _chunk_pool() -> ThreadPoolExecutor:
    """One pool per process for the power-transform chunks (a combiner instance is pickled; a pool is not)."""
    return ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="power-moments")


@dataclasses.dataclass
class PowerMoments:
    """Mergeable summary of a column for every candidate lambda.

    For Box-Cox, the moments are those of u = (x / exp(shift)) ** lam: working
    relative to the data's log-scale keeps x ** lam finite for extreme
    magnitudes. The log-likelihood only needs var(x ** lam), which rescales
    exactly: var(x ** lam) = exp(2 lam shift) var(u). Merging brings both sides
    to a common shift, then combines means and squared deviations (Chan et al.),
    which stays accurate where the variance is tiny next to the mean.
    For Yeo-Johnson the moments are of the transformed values, shift 0.
    """

    n: int
    shift: float
    log_jacobian: float  # sum of log x (Box-Cox) or of sign(x) log1p|x| (Yeo-Johnson)
    mean: np.ndarray
    m2: np.ndarray
    lo: float  # range of x: a constant column has no likelihood maximum
    hi: float

    @classmethod
    def empty(cls) -> "PowerMoments":
        zeros = np.zeros_like(LAMBDA_GRID)
        return cls(0, 0.0, 0.0, zeros, zeros.copy(), np.inf, -np.inf)

    @classmethod
    def of_chunk(cls, kind: str, x: np.ndarray) -> "PowerMoments":
        x = x.astype(np.float64)
        grid = LAMBDA_GRID[:, None]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # log(0): see extract_output
            if kind == "box_cox":
                t = np.log(x)
                shift = float(t.mean())
                return cls._of_values(np.exp(grid * (t - shift)), shift, float(t.sum()), x)
            # Yeo-Johnson has one formula on each side of zero: summarise each side on
            # its own and merge. exp(.) - 1 rather than expm1: numpy's exp is vectorised,
            # expm1 is not (2.5x slower), and the grid keeps |lambda| and |2 - lambda|
            # >= 0.025, where the cancellation costs at most two digits of the variance.
            pos, neg = x[x >= 0], x[x < 0]
            lp, ln = np.log1p(pos), np.log1p(-neg)
            above = cls._of_values((np.exp(grid * lp) - 1.0) / grid, 0.0, float(lp.sum()), pos)
            below = cls._of_values((1.0 - np.exp((2.0 - grid) * ln)) / (2.0 - grid), 0.0, -float(ln.sum()), neg)
            return above.merge(below, kind)

    @classmethod
    def _of_values(cls, values: np.ndarray, shift: float, log_jacobian: float, x: np.ndarray) -> "PowerMoments":
        """Summary of transformed values, one row per candidate lambda (consumes `values`)."""
        if x.size == 0:
            return cls.empty()
        mean = values.mean(axis=1)
        values -= mean[:, None]
        np.square(values, out=values)
        return cls(x.size, shift, log_jacobian, mean, values.sum(axis=1), float(x.min()), float(x.max()))

    def merge(self, other: "PowerMoments", kind: str) -> "PowerMoments":
        if self.n == 0:
            return other
        if other.n == 0:
            return self
        n = self.n + other.n
        shift = (self.n * self.shift + other.n * other.shift) / n
        exponent = LAMBDA_GRID if kind == "box_cox" else 0.0
        with np.errstate(over="ignore", invalid="ignore"):
            fa, fb = np.exp(exponent * (self.shift - shift)), np.exp(exponent * (other.shift - shift))
            ma, mb = self.mean * fa, other.mean * fb
            delta = mb - ma
            mean = ma + delta * (other.n / n)
            m2 = self.m2 * fa * fa + other.m2 * fb * fb + delta * delta * (self.n * other.n / n)
        return PowerMoments(n, shift, self.log_jacobian + other.log_jacobian, mean, m2,
                            min(self.lo, other.lo), max(self.hi, other.hi))

    def log_likelihood(self, kind: str) -> np.ndarray:
        """The profile log-likelihood of each candidate lambda (scipy's boxcox_llf / yeojohnson_llf)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            log_var = np.log(self.m2 / self.n)
            if kind == "box_cox":
                log_var = log_var + 2 * LAMBDA_GRID * self.shift - 2 * np.log(np.abs(LAMBDA_GRID))
            llf = (LAMBDA_GRID - 1) * self.log_jacobian - self.n / 2 * log_var
        return np.where(np.isfinite(llf), llf, -np.inf)

    def output_moments(self, kind: str, lam: float) -> tuple[float, float]:
        """Mean and standard deviation of the transformed column at `lam` (the chosen lambda): what a z-score
        after the power transform needs, without a second pass over the data.

        The summaries hold them exactly at the grid points; between them they are interpolated through
        the five points around `lam` (the refinement's points): the log of E[x ** lam] (Box-Cox; the cumulant
        generating function of log x, smooth and convex) or the mean itself (Yeo-Johnson), and the log of
        the variance."""
        if self.n == 0:
            return 0.0, 0.0
        k = int(np.argmin(np.abs(LAMBDA_GRID - lam)))
        lo = min(max(k - 2, 0), len(LAMBDA_GRID) - 5)
        grid = LAMBDA_GRID[lo:lo + 5]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            log_var = np.log(self.m2[lo:lo + 5] / self.n)
            if kind == "box_cox":
                log_var = log_var + 2 * grid * self.shift - 2 * np.log(np.abs(grid))  # var of (x**lam - 1) / lam
                log_power = np.log(self.mean[lo:lo + 5]) + grid * self.shift  # log E[x ** lam]
                # E[(x**lam - 1) / lam] = expm1(log E[x ** lam]) / lam; at lam = 0, E[log x], its slope there.
                mean = (np.expm1(_interpolate(grid, log_power, lam)) / lam if lam != 0
                        else _interpolate(grid, log_power, 0.0, derivative=True))
            else:
                mean = _interpolate(grid, self.mean[lo:lo + 5], lam)
            var = np.exp(_interpolate(grid, log_var, lam)) if self.lo < self.hi else 0.0
        return float(mean), float(np.sqrt(var))

    def best_lambda(self, kind: str) -> float:
        """The maximum-likelihood lambda; NaN when no candidate has a finite likelihood (values the transform
        cannot take, e.g. 0 for Box-Cox), which the combiner reports rather than hiding behind a default."""
        if self.n < 2 or self.lo == self.hi:
            # An empty or constant column: every lambda is as good; 1 is the identity (shifted).
            return 1.0
        llf = self.log_likelihood(kind)
        if not np.isfinite(llf).any():
            return float("nan")
        return refine_maximum(LAMBDA_GRID, llf)


def _interpolate(grid: np.ndarray, values: np.ndarray, at: float, derivative: bool = False) -> float:
    """The polynomial through (grid, values) (relative to the middle point, for conditioning), or its slope, at `at`."""
    middle = grid[len(grid) // 2]
    poly = np.polyfit(grid - middle, values, len(grid) - 1)
    return float(np.polyval(np.polyder(poly) if derivative else poly, at - middle))


def refine_maximum(grid: np.ndarray, values: np.ndarray) -> float:
    """Argmax of a smooth function sampled on a uniform grid: a polynomial through the
    points around the best sample, maximised within one step of it."""
    k = int(np.argmax(values))
    lo, hi = max(k - 2, 0), min(k + 3, len(grid))
    xs, ys = grid[lo:hi] - grid[k], values[lo:hi]
    step = grid[1] - grid[0]
    if len(xs) < 3 or not np.all(np.isfinite(ys)):
        return float(grid[k])
    poly = np.polyfit(xs, ys, len(xs) - 1)
    roots = np.roots(np.polyder(poly))
    roots = roots[np.isreal(roots)].real
    roots = roots[np.abs(roots) <= step]
    if len(roots) == 0:
        return float(grid[k])
    return float(grid[k] + roots[np.argmax(np.polyval(poly, roots))])


class PowerLambdaCombineFn(beam.CombineFn):
    """Beam combiner over batches of one column: accumulators are `PowerMoments`. Its output is the lambda, and
    with `with_moments` also the mean and standard deviation of the transformed column (`output_moments`).
    A lambda or moment that is not finite is a DataError naming `column`: never a silent default."""

    def __init__(self, kind: str, column: str, with_moments: bool = False):
        self._kind, self._column, self._with_moments = kind, column, with_moments

    def create_accumulator(self):
        return PowerMoments.empty()

    def add_input(self, acc, batch):
        values = np.asarray(batch[0]).reshape(-1)
        chunks = [values[start:start + _CHUNK] for start in range(0, len(values), _CHUNK)]
        # Chunks on a thread per core (numpy releases the GIL on these array sizes), merged in order.
        for moments in _chunk_pool().map(functools.partial(PowerMoments.of_chunk, self._kind), chunks):
            acc = acc.merge(moments, self._kind)
        return acc

    def merge_accumulators(self, accumulators):
        result = PowerMoments.empty()
        for acc in accumulators:
            result = result.merge(acc, self._kind)
        return result

    def extract_output(self, acc):
        lam = np.float32(acc.best_lambda(self._kind))  # the transform computes with the float32 lambda
        self._check_finite("lambda", [lam], acc)
        if not self._with_moments:
            return [lam]
        moments = [np.float64(m) for m in acc.output_moments(self._kind, float(lam))]
        self._check_finite("mean and standard deviation of its output", moments, acc)
        return [lam, *moments]

    def _check_finite(self, what: str, values, acc) -> None:
        if not np.isfinite(values).all():
            raise DataError(f"column '{self._column}': the {self._kind} lambda search found no finite {what} "
                            f"on {acc.n:,} values between {acc.lo:g} and {acc.hi:g}; these values are outside "
                            f"what {self._kind} can take: use another transform for this column")


class PowerLambda(beam.PTransform):
    """The `ptransform_analyzer` body: one CombineGlobally over all batches of the column."""

    def __init__(self, kind: str, column: str, with_moments: bool = False):
        super().__init__()
        self._kind, self._column, self._with_moments = kind, column, with_moments

    def expand(self, batches):
        outputs = batches | "CombineMoments" >> beam.CombineGlobally(PowerLambdaCombineFn(self._kind, self._column,
                                                                                         self._with_moments))
        if not self._with_moments:
            return outputs
        # One PCollection per analyzer output, as ptransform_analyzer takes several.
        return tuple(outputs | f"Output{i}" >> beam.Map(lambda values, i=i: np.asarray(values[i])) for i in range(3))


class MostFrequent(beam.PTransform):
    """The most frequent value of a column; ties go to the smallest value."""

    def expand(self, batches):
        def best(counts):
            if not counts:
                raise ValueError("impute most_frequent: the column has no present value")
            value, _ = min(counts, key=lambda kv: (-kv[1], kv[0]))
            return [value]

        return (
            batches
            | "Values" >> beam.FlatMap(lambda batch: np.asarray(batch[0]).reshape(-1).tolist())
            | "Count" >> beam.combiners.Count.PerElement()
            | "All" >> beam.combiners.ToList()
            | "Best" >> beam.Map(best)
        )
