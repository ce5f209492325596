"""Full-pass analyzers: each needs a reduce over all rows before it can transform one.

Every function takes the column's tensor (a batch) and returns
`(output, stats)`: the transformed tensor and the analyzer results by name, as
they go into `stats.json`. Analyzer results are TFT analyzer outputs, so the
transform_fn carries them as constants once analysis has run.

This module only declares what is reduced; the reductions TFT lacks (the
Box-Cox and Yeo-Johnson lambda, the most frequent value) run as Beam
transforms in `analyzer_impls`.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from tfbridge.contracts.columns import SECONDS_PER_DAY, VOCABULARY_EMPTY, VOCABULARY_ESCAPES
from tft_features.analyzer_impls import MostFrequent, PowerLambda

QUANTILE_EPSILON = 1e-3


def z_score(x: tf.Tensor, name: str):
    """(x - mean) / std with population moments (ddof=0); a constant column maps to x - mean.

    On a vector (e.g. a polynomial expansion) each element has its own moments.
    """
    per_row = x.shape.rank == 1
    mean = tft.mean(x, reduce_instance_dims=per_row, name=f"{name}_mean")
    var = tft.var(x, reduce_instance_dims=per_row, name=f"{name}_var")
    std = tf.sqrt(var)
    return _standardised(x, mean, std), {"mean": mean, "std": std}


def min_max(x: tf.Tensor, name: str, output_min: float = 0.0, output_max: float = 1.0):
    """Linear map of [min, max] onto [output_min, output_max]; a constant column maps to the middle.

    On a vector each element has its own range.
    """
    per_row = x.shape.rank == 1
    lo = tft.min(x, reduce_instance_dims=per_row, name=f"{name}_min")
    hi = tft.max(x, reduce_instance_dims=per_row, name=f"{name}_max")
    span = hi - lo
    unit = tf.where(span > 0, (x - lo) / tf.where(span > 0, span, 1.0), tf.fill(tf.shape(x), 0.5))
    return unit * (output_max - output_min) + output_min, {"min": lo, "max": hi}


def vocabulary(x, name: str, top_k: int | None = None, frequency_threshold: int | None = None,
               num_oov_buckets: int = 1):
    """Integer ids by descending frequency (ties: reverse-lexicographic, TFT's order).

    Unseen values map to `vocabulary_size + hash % num_oov_buckets`; with
    `num_oov_buckets: 0` they map to -1. Works on a string column or on a
    token list (RaggedTensor), whose tokens get ids one by one.

    A category with a line break, and the category "", gets its own id like
    any other: TFT's vocabulary file holds one value per line and would leave
    them out (out of vocabulary), so categories go through VOCABULARY_ESCAPES
    first, which writes CR and LF as `\\r`, `\\n` (the file shows them so)
    and changes no value without a backslash or line break, and "" becomes
    VOCABULARY_EMPTY (`\\0`). Tokens need no escape: text is split on
    whitespace after backslashes became spaces, and no token is empty.
    """
    if not isinstance(x, tf.RaggedTensor) and x.dtype == tf.string:
        x = escaped_categories(x)
    vocab_name = f"{name}_vocabulary"
    # Unit weights give the same counts, order and thresholds, but TFT then
    # reduces each batch to (value, count) in TF; unweighted, it sends every
    # occurrence through Beam as its own element (analysis took twice as long on
    # the benchmark's wide config).
    if isinstance(x, tf.RaggedTensor):
        weights = x.with_flat_values(tf.ones_like(x.flat_values, tf.float32))
    else:
        weights = tf.ones_like(x, tf.float32)
    ids = tft.compute_and_apply_vocabulary(
        x,
        weights=weights,
        top_k=top_k,
        frequency_threshold=frequency_threshold,
        num_oov_buckets=num_oov_buckets,
        vocab_filename=vocab_name,
        name=f"{name}_vocabulary",
    )
    size = tft.experimental.get_vocabulary_size_by_name(vocab_name)
    return ids, {"vocabulary_size": size, "num_oov_buckets": tf.constant(num_oov_buckets, tf.int64)}


def escaped_categories(x: tf.Tensor) -> tf.Tensor:
    """Categories as the vocabulary step counts and looks them up: VOCABULARY_ESCAPES, then "" as VOCABULARY_EMPTY
    (`vocabulary_value` undoes both)."""
    for pattern, rewrite in VOCABULARY_ESCAPES:
        x = tf.strings.regex_replace(x, pattern, rewrite)
    return tf.where(tf.equal(x, ""), VOCABULARY_EMPTY, x)


def quantile_buckets(x: tf.Tensor, name: str, num_buckets: int):
    """Bucket ids 0..num_buckets-1 from approximate quantiles (error at most QUANTILE_EPSILON in rank).

    A value equal to a boundary goes to the bucket above it, as with
    `np.searchsorted(boundaries, x, side="right")`.
    """
    boundaries = tft.quantiles(x, num_buckets, QUANTILE_EPSILON, name=f"{name}_quantiles")
    ids = tft.apply_buckets(x, boundaries)
    return ids, {"boundaries": tf.reshape(boundaries, [-1])}


def piecewise_linear(x: tf.Tensor, name: str, num_buckets: int):
    """Piecewise-linear encoding (Gorishniy, Rubachev and Babenko, NeurIPS 2022): a [batch, num_buckets] vector.

    The bins are the quantile buckets of the column between its minimum and maximum; element t is 0 below
    bin t, 1 above it, and the value's position inside it, so the vector says which bin a value is in and
    where. A network reads a number this way far better than as one z-scored input. Values outside the
    train split's range map like its ends (all 0, or all 1), as a tree would. A bin of zero width (a value
    repeated over a whole quantile) is a step at that value: 1 from the value up.
    """
    inner = tf.reshape(tft.quantiles(x, num_buckets, QUANTILE_EPSILON, name=f"{name}_quantiles"), [-1])
    lo = tf.reshape(tft.min(x, name=f"{name}_min"), [1])
    hi = tf.reshape(tft.max(x, name=f"{name}_max"), [1])
    edges = tf.concat([lo, inner, hi], 0)
    left, right = edges[:-1], edges[1:]  # [num_buckets]
    width = right - left
    column = tf.expand_dims(x, 1)
    inside = (column - left) / tf.where(width > 0, width, 1.0)
    step = tf.cast(column >= right, tf.float32)
    out = tf.clip_by_value(tf.where(width > 0, inside, step), 0.0, 1.0)
    return out, {"edges": edges}


def impute(x, name: str, strategy: str, value=None):
    """Fills missing values (a SparseTensor [batch, 1] whose absent rows are missing).

    mean / median are over the present values (median from quantiles, within
    QUANTILE_EPSILON in rank); most_frequent breaks ties by the smallest value;
    constant uses `value`. A timestamp (int64 whole seconds, the only int64 a
    plan imputes) keeps whole seconds: its mean is taken in float64 and floored;
    its median is the median day at 00:00 UTC (quantiles run in float32, exact
    for whole days, not for seconds since 1970).
    """
    present = x.values
    timestamps = present.dtype == tf.int64
    if strategy == "mean" and timestamps:
        mean = tft.mean(tf.cast(present, tf.float64), name=f"{name}_impute_mean")
        fill = tf.cast(tf.floor(mean), tf.int64)
    elif strategy == "mean":
        fill = tft.mean(present, name=f"{name}_impute_mean")
    elif strategy == "median" and timestamps:
        days = tf.cast(present // SECONDS_PER_DAY, tf.float32)
        median = tf.reshape(tft.quantiles(days, 2, QUANTILE_EPSILON, name=f"{name}_impute_median"), [])
        fill = tf.cast(tf.round(median), tf.int64) * SECONDS_PER_DAY
    elif strategy == "median":
        fill = tf.reshape(tft.quantiles(present, 2, QUANTILE_EPSILON, name=f"{name}_impute_median"), [])
    elif strategy == "most_frequent":
        fill, = tft.experimental.ptransform_analyzer(
            [present], MostFrequent(), [present.dtype], [[]], name=f"{name}_impute_most_frequent")
        fill = tf.reshape(fill, [])
    else:  # constant
        fill = tf.constant(value, dtype=present.dtype)
    out = tf.squeeze(tft.sparse_tensor_to_dense_with_shape(x, [None, 1], default_value=fill), 1)
    return out, {"impute_value": fill}


def _power_lambda(x: tf.Tensor, name: str, column: str, kind: str, with_moments: bool) -> list[tf.Tensor]:
    """The lambda of a power transform by maximum likelihood (float32), and with `with_moments` the mean and
    standard deviation of the transformed column (float64), from the same pass (PowerMoments.output_moments).
    An output that is not finite stops the run with a DataError naming `column` (the user's name)."""
    dtypes = [tf.float32, tf.float64, tf.float64] if with_moments else [tf.float32]
    outputs = tft.experimental.ptransform_analyzer(
        [x], PowerLambda(kind, column, with_moments), dtypes, [[]] * len(dtypes), name=f"{name}_{kind}_lambda")
    return [tf.reshape(output, []) for output in outputs]


def _standardised(y: tf.Tensor, mean: tf.Tensor, std: tf.Tensor) -> tf.Tensor:
    """(y - mean) / std, or y - mean where std is 0 (a constant column): z_score's arithmetic."""
    centred = y - mean
    return tf.where(std > 0, centred / tf.where(std > 0, std, 1.0), centred)


def box_cox(x: tf.Tensor, name: str, column: str):
    """Box-Cox power transform with lambda estimated by maximum likelihood.

    y = (x**lam - 1) / lam (log x when lam == 0). Needs x > 0 (its Domain in `steps`): the feature stage
    checks the raw values, as float32, before the run starts, and the plan refuses a step before it that
    could give values <= 0.
    """
    lam, = _power_lambda(x, name, column, "box_cox", with_moments=False)
    return tf.cast(_box_cox(x, lam), tf.float32), {"box_cox_lambda": lam}


def box_cox_z_score(x: tf.Tensor, name: str, column: str):
    """[box_cox, z_score] in one analysis pass: the z-score's moments are those of the Box-Cox output at the
    chosen lambda, computed from the lambda search's own summaries. Two passes would make TFT run two
    analysis phases, and the in-process runner hold the whole train split in memory between them.

    The z-score is taken in float64, of the Box-Cox output before it is rounded to float32: where the
    output's spread is below float32's resolution (tiny values, a strongly negative lambda) it still
    separates the rows."""
    lam, mean, std = _power_lambda(x, name, column, "box_cox", with_moments=True)
    z = tf.cast(_standardised(_box_cox(x, lam), mean, std), tf.float32)
    return z, {"box_cox_lambda": lam, "mean": mean, "std": std}


def _box_cox(x: tf.Tensor, lam_32: tf.Tensor) -> tf.Tensor:
    """In float64 (see mappers.in_float64)."""
    lam, x = tf.cast(lam_32, tf.float64), tf.cast(x, tf.float64)
    logx = tf.math.log(x)
    safe = tf.where(tf.abs(lam) > 0, lam, 1.0)
    return tf.where(tf.abs(lam) > 0, tf.math.expm1(lam * logx) / safe, logx)


def yeo_johnson(x: tf.Tensor, name: str, column: str):
    """Yeo-Johnson power transform (any sign) with lambda estimated by maximum likelihood."""
    lam, = _power_lambda(x, name, column, "yeo_johnson", with_moments=False)
    return tf.cast(_yeo_johnson(x, lam), tf.float32), {"yeo_johnson_lambda": lam}


def yeo_johnson_z_score(x: tf.Tensor, name: str, column: str):
    """[yeo_johnson, z_score] in one analysis pass, the z-score in float64 (see box_cox_z_score)."""
    lam, mean, std = _power_lambda(x, name, column, "yeo_johnson", with_moments=True)
    z = tf.cast(_standardised(_yeo_johnson(x, lam), mean, std), tf.float32)
    return z, {"yeo_johnson_lambda": lam, "mean": mean, "std": std}


def _yeo_johnson(x: tf.Tensor, lam_32: tf.Tensor) -> tf.Tensor:
    """In float64 (see mappers.in_float64)."""
    lam, x = tf.cast(lam_32, tf.float64), tf.cast(x, tf.float64)
    pos, zero = x >= 0, tf.zeros_like(x)
    lp = tf.math.log1p(tf.where(pos, x, zero))
    ln = tf.math.log1p(tf.where(pos, zero, -x))
    lam_p = tf.where(tf.abs(lam) > 0, lam, 1.0)
    lam_n = tf.where(tf.abs(2.0 - lam) > 0, 2.0 - lam, 1.0)
    y_pos = tf.where(tf.abs(lam) > 0, tf.math.expm1(lam * lp) / lam_p, lp)
    y_neg = tf.where(tf.abs(2.0 - lam) > 0, -tf.math.expm1((2.0 - lam) * ln) / lam_n, -ln)
    return tf.where(pos, y_pos, y_neg)
