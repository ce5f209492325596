"""The Box-Cox / Yeo-Johnson lambda analyzer against scipy's maximum-likelihood search.

The accumulator is built the way Beam builds it: batches summarised
separately and merged in arbitrary order, so these tests also check that
merging is exact enough to be order-free.
"""

import numpy as np
import pytest
from scipy import stats

from tfbridge.datasets import diamonds_table
from tft_features.analyzer_impls import PowerMoments, refine_maximum


def distributed_lambda(kind: str, x: np.ndarray, rng: np.random.Generator, parts: int = 7) -> float:
    """Summaries of uneven shards, merged in a random tree order."""
    return distributed_moments(kind, x, rng, parts).best_lambda(kind)


def distributed_moments(kind: str, x: np.ndarray, rng: np.random.Generator, parts: int = 7) -> PowerMoments:
    cuts = np.sort(rng.choice(np.arange(1, len(x)), size=parts - 1, replace=False))
    accs = [PowerMoments.of_chunk(kind, chunk) for chunk in np.split(x, cuts)]
    while len(accs) > 1:
        i, j = sorted(rng.choice(len(accs), size=2, replace=False))
        merged = accs[i].merge(accs[j], kind)
        accs = [a for k, a in enumerate(accs) if k not in (i, j)] + [merged]
    return accs[0]


DISTRIBUTIONS = {
    "lognormal": lambda rng, n: rng.lognormal(0.5, 0.9, n),
    "gamma": lambda rng, n: rng.gamma(2.5, 3.0, n),
    "exponential": lambda rng, n: rng.exponential(4.0, n),
    "huge magnitudes": lambda rng, n: rng.lognormal(0.0, 1.0, n) * 1e30,
    "tiny magnitudes": lambda rng, n: rng.gamma(3.0, 1.0, n) * 1e-30,
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_box_cox_lambda_matches_scipy_mle(name, seed):
    rng = np.random.default_rng(seed)
    x = DISTRIBUTIONS[name](rng, 5000)
    ours = distributed_lambda("box_cox", x, rng)
    assert ours == pytest.approx(stats.boxcox_normmax(x, method="mle"), abs=1e-3)


def test_box_cox_lambda_on_diamonds_price():
    price = diamonds_table().column("price").to_numpy()
    ours = distributed_lambda("box_cox", price, np.random.default_rng(0), parts=11)
    assert ours == pytest.approx(stats.boxcox_normmax(price, method="mle"), abs=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", ["signed normal", "skewed positive", "skewed negative"])
def test_yeo_johnson_lambda_matches_scipy_mle(shape, seed):
    rng = np.random.default_rng(seed)
    x = {"signed normal": rng.normal(1.0, 3.0, 4000),
         "skewed positive": rng.gamma(1.5, 2.0, 4000) - 1.0,
         "skewed negative": -rng.lognormal(0.0, 0.7, 4000) + 0.5}[shape]
    ours = distributed_lambda("yeo_johnson", x, rng)
    assert ours == pytest.approx(stats.yeojohnson_normmax(x), abs=1e-3)


def test_constant_column_gives_identity_lambda():
    acc = PowerMoments.of_chunk("box_cox", np.full(100, 3.0))
    assert acc.best_lambda("box_cox") == 1.0


def test_refine_maximum_finds_vertex_between_grid_points():
    grid = np.arange(-1.0, 1.0, 0.05)
    assert refine_maximum(grid, -(grid - 0.0123) ** 2) == pytest.approx(0.0123, abs=1e-9)


def transformed(kind: str, x: np.ndarray, lam: float) -> np.ndarray:
    """The transform as the graph computes it before the z-score: float64, from float32 inputs."""
    return stats.boxcox(x, lam) if kind == "box_cox" else stats.yeojohnson(x, lam)


@pytest.mark.parametrize("case", ["lognormal", "gamma", "huge magnitudes", "tiny magnitudes", "signed normal",
                                  "skewed negative", "ages", "constant"])
def test_moments_of_the_output_at_the_chosen_lambda_without_a_second_pass(case):
    """[box_cox, z_score] runs in one analysis pass: the z-score's mean and std come from the lambda search's
    summaries (exact at the grid points, interpolated between), against the moments of the output itself."""
    rng = np.random.default_rng(5)
    more = {"signed normal": lambda rng, n: rng.normal(1.0, 3.0, n),
            "skewed negative": lambda rng, n: -rng.lognormal(0.0, 0.7, n) + 0.5,
            "ages": lambda rng, n: rng.integers(16, 74, n).astype(float),  # a negative lambda, tiny spread
            "constant": lambda rng, n: np.full(n, 3.0)}
    x = {**DISTRIBUTIONS, **more}[case](rng, 20000).astype(np.float32).astype(np.float64)
    kind = "yeo_johnson" if case in ("signed normal", "skewed negative") else "box_cox"
    acc = distributed_moments(kind, x, rng)
    lam = float(np.float32(acc.best_lambda(kind)))
    mean, std = acc.output_moments(kind, lam)
    y = transformed(kind, x, lam)
    assert mean == pytest.approx(y.mean(), rel=1e-9, abs=1e-6 * y.std())
    assert std == pytest.approx(y.std(), rel=1e-5, abs=1e-300)
