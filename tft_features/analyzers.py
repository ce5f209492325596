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
from tensorflow_transform import analyzers as tft_analyzers
from tensorflow_transform import tf_utils

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


def robust(x: tf.Tensor, name: str):
    """(x - median) / IQR: sklearn's RobustScaler with quantile_range (25, 75); an IQR of 0 scales by 1 (as sklearn).

    The quartiles are `tft.quantiles` (4 buckets) at QUANTILE_EPSILON: each is a value of the column whose rank is
    within QUANTILE_EPSILON * n of the exact one, where sklearn interpolates between the two values around it.
    """
    quartiles = tf.reshape(tft.quantiles(x, 4, QUANTILE_EPSILON, name=f"{name}_quantiles"), [-1])
    median, iqr = quartiles[1], quartiles[2] - quartiles[0]
    return (x - median) / tf.where(iqr > 0, iqr, 1.0), {"median": median, "iqr": iqr}


def max_abs(x: tf.Tensor, name: str):
    """x / max|x|: sklearn's MaxAbsScaler (a maximum of 0 scales by 1). The train split maps into [-1, 1], zero stays
    zero (sparsity kept); a larger value later maps beyond. On a vector each element has its own maximum."""
    per_row = x.shape.rank == 1
    top = tft.max(tf.abs(x), reduce_instance_dims=per_row, name=f"{name}_max_abs")
    return x / tf.where(top > 0, top, 1.0), {"max_abs": top}


def tfidf(ids, name: str, width: int, smooth: bool = True):
    """Each row's tf-idf weight of every id in [0, width) as a [batch, width] vector: TFT's `tft.tfidf`, dense.

    tf = the id's count in the row / the row's ids in range; idf = 1 + log((documents + 1) / (documents
    with the id + 1)) (smooth, TFT's default and sklearn's `smooth_idf`) or 1 + log(documents / documents
    with the id) (an id the train split never had weighs 0 then, where TFT would divide by 0), the
    documents being the train split's rows. That is sklearn's `TfidfVectorizer(norm=None)` divided by the
    row's length. Ids outside [0, width) (a vocabulary's -1 without OOV buckets) count nowhere. TFT gives
    the row's distinct ids and their weights as two sparse tensors; here every id has its place, so the
    model takes the bag as a vector of numbers.
    """
    rows = ids.nrows()
    flat = tf.cast(ids.flat_values, tf.int64)
    inside = (flat >= 0) & (flat < width)
    # negative: dropped by the segment sum; the reshape states the rank, which tf2onnx loses through the where
    cells = tf.reshape(tf.where(inside, ids.value_rowids() * width + flat, -1), [-1])
    counts = tf.reshape(tf.math.unsorted_segment_sum(tf.ones_like(flat, tf.float32), cells, rows * width),
                        tf.stack([rows, width]))
    lengths = tf.reduce_sum(counts, axis=1, keepdims=True)
    frequency = counts / tf.where(lengths > 0, lengths, 1.0)
    documents = tft.sum(tf.ones(tf.reshape(rows, [1]), tf.float32), name=f"{name}_documents")
    with_id = tft.sum(tf.cast(counts > 0, tf.float32), reduce_instance_dims=False, name=f"{name}_document_frequency")
    if smooth:
        idf = 1.0 + tf.math.log((documents + 1.0) / (with_id + 1.0))
    else:
        idf = tf.where(with_id > 0, 1.0 + tf.math.log(documents / tf.where(with_id > 0, with_id, 1.0)), 0.0)
    return frequency * idf, {"documents": documents, "document_frequency": with_id}


# Per-key statistics (`{z_score: {per: key_column}}`): TFT's `_per_key` analyzers, which reduce by the key's
# string value and give the keys seen in the train split (a [keys] tensor, a constant once analysed) with one
# statistic each. A row finds its key with one equality matrix against those keys (string equality, ArgMax:
# ops ONNX has) rather than TFT's lookup, which wraps the same matrix in conditionals. A key the train split never
# had is handled as TFT handles it (see each function); a missing key is "" and a key like any other.


def _key_index(key: tf.Tensor, keys: tf.Tensor) -> tf.Tensor:
    """Each row's position in `keys`, or len(keys) for a key not among them (the fallback row of `_per_row`)."""
    shape = tf.stack([tf.size(key), tf.size(keys)])
    # [batch, keys], both sides expanded: the ONNX graph's StringEqual (onnxruntime-extensions) does not broadcast
    match = tf.equal(tf.broadcast_to(tf.expand_dims(key, 1), shape), tf.broadcast_to(tf.expand_dims(keys, 0), shape))
    first = tf.argmax(tf.cast(match, tf.int32), axis=1)
    return tf.where(tf.reduce_any(match, axis=1), first, tf.size(keys, out_type=tf.int64))


def _per_row(values: tf.Tensor, index: tf.Tensor, fallback: float) -> tf.Tensor:
    """One statistic per key gathered for each row by `_key_index`, `fallback` for an unseen key."""
    return tf.gather(tf.concat([values, tf.fill([1], tf.cast(fallback, values.dtype))], 0), index)


def z_score_per_key(x: tf.Tensor, name: str, key: tf.Tensor):
    """(x - mean of its key) / std of its key, population moments (TFT's `scale_to_z_score_per_key`): a key with
    one value, or all values equal, gives x - mean; an unseen key gives x unscaled (TFT's mean 0, variance 0)."""
    del name  # TFT's per-key reductions take the step's name scope
    keys, mean, var = tft_analyzers._mean_and_var_per_key(x, key)  # noqa: SLF001 - TFT's own per-key reduction
    return apply_z_score_per_key(x, key, keys, mean, var), {"keys": tf.size(keys)}


def apply_z_score_per_key(x: tf.Tensor, key: tf.Tensor, keys: tf.Tensor, mean: tf.Tensor, var: tf.Tensor):
    """z_score_per_key's transform, given its analysis: `keys` [k] and each key's `mean` and `var` [k]."""
    index = _key_index(key, keys)
    return _standardised(x, _per_row(mean, index, 0.0), tf.sqrt(_per_row(var, index, 0.0)))


def min_max_per_key(x: tf.Tensor, name: str, key: tf.Tensor, output_min: float = 0.0, output_max: float = 1.0):
    """[min, max] of its key onto [output_min, output_max] (TFT's `scale_by_min_max_per_key`). Where TFT has no
    range, a key with one distinct value or a key the train split never had, the unit value is sigmoid(x) as in
    TFT (the global `min_max` gives the middle of the range to a constant column instead)."""
    del name  # TFT's per-key reductions take the step's name scope
    keys, lo, hi = tft_analyzers._min_and_max_per_key(x, key)  # noqa: SLF001
    return apply_min_max_per_key(x, key, keys, lo, hi, output_min, output_max), {"keys": tf.size(keys)}


def apply_min_max_per_key(x: tf.Tensor, key: tf.Tensor, keys: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor,
                          output_min: float = 0.0, output_max: float = 1.0):
    """min_max_per_key's transform, given its analysis: `keys` [k] and each key's minimum `lo` and maximum `hi`."""
    index = _key_index(key, keys)
    lo, hi = _per_row(lo, index, 0.0), _per_row(hi, index, 0.0)
    unit = tf.where(lo < hi, (x - lo) / tf.where(lo < hi, hi - lo, 1.0), tf.math.sigmoid(x))
    return unit * (output_max - output_min) + output_min


def quantile_buckets_per_key(x: tf.Tensor, name: str, key: tf.Tensor, num_buckets: int):
    """Bucket ids 0..num_buckets-1 from the quantiles of its key's values (TFT's `bucketize_per_key`, at
    QUANTILE_EPSILON), -1 for a key the train split never had (as TFT). TFT flattens every key's boundaries into
    one increasing list: the key's boundaries are mapped by a scale and shift per key into a range of their own,
    the value is mapped alike and bucketed against the whole list (UpperBound), and the key's offset taken off."""
    keys, boundaries, scale, shift, _ = tft_analyzers._quantiles_per_key(  # noqa: SLF001
        x, key, num_buckets, QUANTILE_EPSILON, name=f"{name}_quantiles")
    return apply_buckets_per_key(x, key, keys, boundaries, scale, shift, num_buckets), {"keys": tf.size(keys)}


def apply_buckets_per_key(x: tf.Tensor, key: tf.Tensor, keys: tf.Tensor, boundaries: tf.Tensor, scale: tf.Tensor,
                          shift: tf.Tensor, num_buckets: int):
    """quantile_buckets_per_key's transform, given its analysis: `keys` [k], TFT's flattened `boundaries`
    [(num_buckets - 2) k + 1] and each key's `scale` and `shift` [k] (TFT's `_apply_buckets_with_keys`)."""
    index = _key_index(key, keys)
    seen = index < tf.size(keys, out_type=tf.int64)
    known = tf.where(seen, index, 0)
    moved = x * tf.gather(scale, known) + tf.gather(shift, known)
    offset = tf_utils.assign_buckets(moved, boundaries, side=tf_utils.Side.RIGHT)
    ids = tf.clip_by_value(offset - (num_buckets - 2) * known, 0, num_buckets - 1)
    return tf.where(seen, ids, -1)


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
