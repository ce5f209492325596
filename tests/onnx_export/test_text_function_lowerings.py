"""The lowerings TFT's text functions need (tft.ngrams, tft.tfidf), each in ONNX against TF on edge inputs.

StringJoin (ngrams' shifted tokens joined), SegmentSum (segment_indices: each n-gram's or term's place in its row),
SparseReduceSum and SparseReduceSumSparse (tfidf's counts of tokens per document, of each term per document, of
documents per term). Each on rows (documents) empty, a batch of only empty rows and an empty batch; strings
non-ASCII and empty."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from onnx_export.lowerings import UnsupportedOp
from tests.onnx_export.test_lowerings import convert, run

TOKENS = ["a", "", "Größe", "日本語", "😀 x", "a"]


@pytest.mark.parametrize("separator", ["", " ", " _ "])
@pytest.mark.parametrize("inputs", [1, 2, 3])  # ngrams joins 1 token for its 1-grams
def test_string_join_equals_tf_on_empty_and_non_ascii_strings(separator, inputs):
    def join(texts, scalar):
        return tf.strings.join([texts, scalar, tf.reverse(texts, [0])][:inputs], separator=separator)

    session, ops = convert(join, tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.string))
    assert "StringJoin" not in ops  # onnxruntime-extensions' op of that name crashed on an empty batch
    for texts in (TOKENS, ["", ""], []):
        for scalar in ("", "ß"):
            feeds = np.array(texts, object), np.array(scalar, object)
            want = [t.decode() for t in join(tf.constant(texts, tf.string), tf.constant(scalar)).numpy()]
            assert run(session, *feeds)[0].tolist() == want


@pytest.mark.parametrize("data_dtype", [np.int32, np.int64, np.float32])
@pytest.mark.parametrize("ids_dtype", [np.int32, np.int64])
def test_segment_sum_equals_tf_on_gaps_and_empty_input(data_dtype, ids_dtype):
    def sums(data, ids):
        return tf.math.segment_sum(data, ids), tf.math.segment_sum(tf.stack([data, -data], 1), ids)

    session, ops = convert(sums, tf.TensorSpec([None], tf.as_dtype(data_dtype)),
                           tf.TensorSpec([None], tf.as_dtype(ids_dtype)))
    assert ops["ScatterND"] == 2 and "TopK" not in ops  # tf2onnx's lowering sorts, and fails on no ids
    for data, ids in (([5, -3, 7, 2, 9, 1], [0, 0, 2, 2, 2, 5]),  # segments 1, 3 and 4 empty
                      ([4], [3]), ([], [])):
        feeds = np.array(data, data_dtype), np.array(ids, ids_dtype)
        for got, want in zip(run(session, *feeds), sums(*feeds)):
            assert got.dtype == want.numpy().dtype
            np.testing.assert_array_equal(got, want.numpy())


# [doc, token, term] as TFT's _to_term_frequency builds it: doc 1 and the last doc empty, a term repeated in a doc
COUNTS_3D = ([[0, 0, 4], [0, 1, 2], [0, 2, 4], [2, 0, 0], [2, 3, 4], [3, 1, 1], [0, 3, 2]], [4, 5, 6])
# [doc, term], out of row-major order, one index repeated
COUNTS_2D = ([[2, 1], [0, 3], [0, 0], [2, 1], [4, 3]], [6, 5])
BATCHES = {"edge rows": (COUNTS_2D, COUNTS_3D), "only empty rows": (([], [3, 0]), ([], [3, 0, 5])),
           "empty batch": (([], [0, 0]), ([], [0, 0, 7]))}


@pytest.mark.parametrize("sparse_output", [False, True])
@pytest.mark.parametrize("dtype", [np.int64, np.float32, np.float64])
@pytest.mark.parametrize("rank,axis", [(2, 0), (2, 1), (2, -1), (3, 1), (3, 0), (3, -1)])
@pytest.mark.parametrize("keep_dims", [False, True])
def test_sparse_reduce_sum_equals_tf(sparse_output, dtype, rank, axis, keep_dims):
    def reduce(indices, values, shape):
        x = tf.SparseTensor(indices, values, shape)
        if sparse_output:
            out = tf.sparse.reduce_sum(x, axis, keepdims=keep_dims, output_is_sparse=True)
            return out.indices, out.values, out.dense_shape
        return (tf.sparse.reduce_sum(x, axis, keepdims=keep_dims),)

    session, ops = convert(reduce, tf.TensorSpec([None, rank], tf.int64), tf.TensorSpec([None], tf.as_dtype(dtype)),
                           tf.TensorSpec([rank], tf.int64))
    assert {"SparseReduceSum", "SparseReduceSumSparse"}.isdisjoint(ops)
    rng = np.random.default_rng(rank * 10 + axis)
    for name, batches in BATCHES.items():
        indices, shape = batches[rank - 2]
        indices = np.array(indices, np.int64).reshape(-1, rank)
        feeds = indices, rng.integers(-5, 9, len(indices)).astype(dtype), np.array(shape, np.int64)
        for got, want in zip(run(session, *feeds), reduce(*feeds), strict=True):
            assert got.dtype == want.numpy().dtype, name
            np.testing.assert_array_equal(got, want.numpy(), err_msg=name)


def test_sparse_reduce_sum_over_axes_known_only_when_it_runs_is_refused_naming_the_op():
    def reduce(indices, values, shape, axis):
        return tf.sparse.reduce_sum(tf.SparseTensor(indices, values, shape), axis)

    with pytest.raises(UnsupportedOp, match="SparseReduceSum with a rank or reduction axes known only when it runs"):
        convert(reduce, tf.TensorSpec([None, 2], tf.int64), tf.TensorSpec([None], tf.float32),
                tf.TensorSpec([2], tf.int64), tf.TensorSpec([], tf.int32))
