"""Each ONNX lowering of onnx_export.lowerings, run in onnxruntime against TF on fresh inputs and edge values."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf
import tf2onnx

from tests.helpers import onnx_session
from onnx_export.convert import ExportError, convert_graph


def convert(fn, *specs):
    """A TF function through the export's own conversion (our handlers, opset 20, errors raised)."""
    concrete = tf.function(fn, input_signature=list(specs)).get_concrete_function()
    inputs = [t.name for t in concrete.inputs if t.dtype != tf.resource]
    outputs = [t.name for t in concrete.outputs if t.dtype != tf.resource]
    graph_def = tf2onnx.tf_loader.from_function(concrete, inputs, outputs)
    model = convert_graph(graph_def, inputs, outputs, columns=(), name=fn.__name__)
    ops = collections.Counter(node.op_type for node in model.graph.node)
    return onnx_session(model.SerializeToString()), ops


def run(session, *arrays):
    return session.run(None, {i.name: a for i, a in zip(session.get_inputs(), arrays)})


@pytest.mark.parametrize("seed", [0, 1])
def test_upper_bound_puts_values_on_a_boundary_in_the_bucket_above(seed):
    rng = np.random.default_rng(seed)
    boundaries = np.sort(rng.normal(0, 3, 9)).astype(np.float32)
    values = np.concatenate([rng.normal(0, 4, 500), boundaries, [-1e30, 1e30, boundaries[0] - 1e-6]])
    values = values.astype(np.float32)

    def buckets(x):
        return tf.searchsorted(tf.constant(boundaries[None, :]), tf.reshape(x, [1, -1]), side="right")

    session, ops = convert(buckets, tf.TensorSpec([None], tf.float32))
    assert "ReduceSum" in ops
    np.testing.assert_array_equal(run(session, values)[0], buckets(values).numpy())


def test_log1p_and_expm1_keep_float32_accuracy_near_zero_and_at_extremes():
    x = np.array([0.0, 1e-30, 1e-12, -1e-9, 3e-8, 1e-4, 0.5, -0.5, -0.999, 1.0, 20.0, 1e6, 3e38], np.float32)
    for fn, ref in ((tf.math.log1p, np.log1p), (tf.math.expm1, np.expm1)):
        session, ops = convert(fn, tf.TensorSpec([None], tf.float32))
        assert not {"Log1p", "Expm1"} & set(ops)
        values = x if fn is tf.math.log1p else np.concatenate([x[:-3], [-50.0, 80.0, 100.0]]).astype(np.float32)
        got = run(session, values)[0]
        want = fn(values).numpy()
        with np.errstate(over="ignore"):
            exact = ref(values.astype(np.float64))
        finite = np.isfinite(exact) & (np.abs(exact) < 3e38)
        np.testing.assert_allclose(got[finite], want[finite], rtol=2e-6, atol=0)
        assert np.array_equal(np.isinf(got), np.isinf(want))


def test_string_split_matches_tf_whitespace_split():
    text = np.array(["", "one", "  two  words ", "tab\tand\nnewline\r\n", "many   spaces here", " ", "\v\f"],
                    object)

    def split(s):
        sparse = tf.strings.split(s).to_sparse()
        return sparse.indices, sparse.values, sparse.dense_shape

    session, ops = convert(split, tf.TensorSpec([None], tf.string))
    assert "StringSplit" in ops and "StringSplitV2" not in ops
    got = run(session, text)
    want = split(tf.constant(text.astype(str)))
    np.testing.assert_array_equal(got[0], want[0].numpy())
    assert [v.decode() if isinstance(v, bytes) else v for v in got[1]] == [v.decode() for v in want[1].numpy()]
    np.testing.assert_array_equal(got[2], want[2].numpy())


@pytest.mark.parametrize("seed", [0, 1])
def test_segment_sum_and_bincount_drop_ids_out_of_range_as_tf_does(seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(-2, 9, 300).astype(np.int32)  # -2, -1 and 7, 8 fall outside [0, 7)
    segments = np.where(ids < 7, ids, 0)  # TF drops negative segment ids and refuses ids >= 7
    values = np.abs(ids)  # bincount refuses negative values and drops those >= maxlength
    data = rng.normal(0, 1, (300, 3)).astype(np.float32)

    def segment_sums(x, i):
        return tf.math.unsorted_segment_sum(x, i, 7)

    def counts(i):
        return (tf.math.bincount(i, minlength=7, maxlength=7, dtype=tf.int64),
                tf.math.bincount(i, minlength=7, maxlength=7, dtype=tf.int64, binary_output=True))

    session, ops = convert(segment_sums, tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([None], tf.int32))
    assert "ScatterND" in ops and "Unique" not in ops
    for x, i in ((data, segments), (data[:0], segments[:0])):
        np.testing.assert_allclose(run(session, x, i)[0], segment_sums(x, i).numpy(), rtol=1e-6, atol=1e-6)
    session, ops = convert(counts, tf.TensorSpec([None], tf.int32))
    assert "ScatterElements" in ops and "Unique" not in ops
    for i in (values, values[:0], np.full(5, 3, np.int32)):
        for got, want in zip(run(session, i), counts(i)):
            np.testing.assert_array_equal(got, want.numpy())


def test_normalized_text_is_split_without_a_whitespace_pass_of_its_own():
    from tft_features.mappers import normalize_text

    text = np.array(["Tab\there, new\nline", "it's   A don't\r\n", "", "\v\f", "x-y_z"], object)

    def tokens(s):
        sparse = normalize_text(s, "t", stopwords="none")[0].to_sparse()
        return sparse.indices, sparse.values

    session, ops = convert(tokens, tf.TensorSpec([None], tf.string))
    assert ops["StringRegexReplace"] == 3  # sigmas; apostrophes; punctuation and whitespace
    got, want = run(session, text), tokens(tf.constant(text.astype(str)))
    np.testing.assert_array_equal(got[0], want[0].numpy())
    assert got[1].tolist() == [v.decode() for v in want[1].numpy()]


@pytest.mark.parametrize("texts", [
    ["a b c", "", "d", "", ""],  # trailing empty rows
    ["", "", ""],  # no token in the whole batch: tf2onnx's lowering divided by zero here
    ["", "x y", "z"],
    ["one"],
])
def test_ragged_to_sparse_matches_tf_with_empty_rows_and_empty_batches(texts):
    def to_sparse(x):
        sparse = tf.strings.split(x).to_sparse()
        return sparse.indices, sparse.values, sparse.dense_shape

    session, ops = convert(to_sparse, tf.TensorSpec([None], tf.string))
    assert "Div" not in ops and "ScatterElements" in ops
    got = run(session, np.array(texts, object))
    want = [t.numpy() for t in to_sparse(tf.constant(texts))]
    np.testing.assert_array_equal(got[0], want[0])
    assert [v.decode() if isinstance(v, bytes) else v for v in got[1]] == [v.decode() for v in want[1]]
    np.testing.assert_array_equal(got[2], want[2])


@pytest.mark.parametrize("dtype", [tf.int64, tf.int32])
def test_integer_floor_div_and_mod_round_toward_minus_infinity_as_tf_does(dtype):
    """tf2onnx lowers integer FloorDiv to Div, which truncates toward 0: -1 s would fall on day 0 (1970-01-01)."""
    rng = np.random.default_rng(3)
    numbers = np.concatenate([rng.integers(-10**9, 10**9, 500), [-86401, -86400, -86399, -1, 0, 1, 86399, 86400]])
    divisors = np.concatenate([rng.choice([-7, -3, 3, 7, 86400, 146097], 500), np.full(8, 86400)])
    numbers, divisors = numbers.astype(dtype.as_numpy_dtype), divisors.astype(dtype.as_numpy_dtype)

    def floor_both(a, b):
        return a // b, a % b

    session, ops = convert(floor_both, tf.TensorSpec([None], dtype), tf.TensorSpec([None], dtype))
    assert "Mod" in ops and "Floor" not in ops  # one Mod: tf2onnx merges the two identical ones
    got = run(session, numbers, divisors)
    for g, want, ref in zip(got, floor_both(tf.constant(numbers), tf.constant(divisors)), (np.floor_divide, np.mod)):
        np.testing.assert_array_equal(g, want.numpy())
        np.testing.assert_array_equal(g, ref(numbers, divisors))  # Python's (and numpy's) floor semantics


def test_float_floor_div_and_mod_keep_tf2onnx_lowering():
    x = np.array([-7.5, -1.0, -0.5, 0.0, 0.5, 7.5, 1e9], np.float32)

    def floor_both(a):
        return a // 2.0, a % 2.0

    session, ops = convert(floor_both, tf.TensorSpec([None], tf.float32))
    assert "Floor" in ops and "Mod" not in ops
    for got, want in zip(run(session, x), floor_both(tf.constant(x))):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)


def test_select_takes_each_value_from_one_side_only_where_the_other_is_inf_or_nan():
    """tf2onnx's c * a + !c * b made NaN of the side not taken (0 * inf): TFT guards its divisions so."""
    x = np.array([0.0, -0.0, 1.0, -2.0, 1e-30, 3e38, -3e38, np.inf, -np.inf, np.nan, 5.0], np.float32)
    d = np.array([0.0, 0.0, 2.0, 0.0, 1e-30, 1e-30, 0.5, 1.0, 0.0, 1.0, -0.0], np.float32)

    def guarded(x, d):
        half_where_zero = tf.where(tf.equal(d, 0.0), tf.ones_like(x) / 2, x / d)  # SelectV2
        # Select (tf.compat.v1.where): a condition per row of a [rows, 2] input
        per_row = tf.compat.v1.where(tf.greater(d, 0.0), tf.stack([x, x / d], 1), tf.zeros([tf.size(x), 2]))
        return half_where_zero, per_row

    session, ops = convert(guarded, tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.float32))
    assert ops["Where"] == 2
    for got, want in zip(run(session, x, d), guarded(tf.constant(x), tf.constant(d))):
        np.testing.assert_array_equal(got, want.numpy())  # NaN only where TF has it: x itself is NaN


@pytest.mark.parametrize("stateful", [False, True], ids=["StatelessIf", "If"])
def test_cond_branches_keep_the_domains_of_their_ops(stateful):
    """String comparisons and hashes (onnxruntime-extensions' StringEqual and StringToHashBucketFast) in the
    branches of nested tf.conds, as in TFT's per-key functions; a stateful op in a branch (CheckNumerics) makes
    TF's If, none its StatelessIf. tf2onnx put these ops in the default domain: onnxruntime refused the graph."""
    def per_key(keys, known):
        def compare():
            ids = tf.strings.to_hash_bucket_fast(keys, 7)
            if stateful:
                ids = tf.cast(tf.debugging.check_numerics(tf.cast(ids, tf.float32), "ids"), tf.int64)
            second = tf.cond(tf.size(known) > 1, lambda: tf.cast(tf.equal(keys, known[1]), tf.int64),
                             lambda: tf.zeros_like(ids))
            return tf.where(tf.equal(keys, known[0]), ids, -1) + 10 * second

        return tf.cond(tf.size(known) > 0, compare, lambda: tf.zeros_like(keys, tf.int64))

    session, ops = convert(per_key, tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string))
    assert ops["If"] == 1
    keys = np.array(["a", "", "Straße", "日本語", "STRASSE", "a ", "😀"], object)
    for known in ([], ["a"], ["Straße", ""], ["日本語", "😀", "x"]):
        known = np.array(known, object)
        want = per_key(tf.constant(keys.astype(str)), tf.constant(known.astype(str), tf.string)).numpy()
        np.testing.assert_array_equal(run(session, keys, known)[0], want)


def test_a_stateful_cond_whose_branches_take_no_inputs_converts():
    """tf2onnx's lowering of TF's If skipped one with no inputs but the condition, leaving an invalid graph."""
    def stateful_constants(x):
        return tf.cond(tf.size(x) > 0, lambda: tf.debugging.check_numerics(tf.constant(1.0), "one"),
                       lambda: tf.constant(0.0))

    session, ops = convert(stateful_constants, tf.TensorSpec([None], tf.float32))
    assert ops["If"] == 1
    for x in (np.ones(3, np.float32), np.ones(0, np.float32)):
        np.testing.assert_array_equal(run(session, x)[0], stateful_constants(tf.constant(x)).numpy())


def test_an_op_with_no_lowering_in_a_cond_branch_keeps_the_export_error():
    def lengths(s):
        return tf.cond(tf.size(s) > 0, lambda: tf.strings.length(s), lambda: tf.zeros_like(s, tf.int32))

    with pytest.raises(ExportError, match=r"no lowering for op StringLength \(node cond/StringLength\)"):
        convert(lengths, tf.TensorSpec([None], tf.string))
