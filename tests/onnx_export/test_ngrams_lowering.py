"""StringNGrams (the ngrams step, tf.strings.ngrams) in ONNX equals TF's on every kind of row.

Rows empty, shorter than every width, of one token, with repeated and non-ASCII tokens, a whole batch of
empty rows, an empty batch; widths alone and in ranges; separators of none, one and several characters."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from onnx_export.lowerings import UnsupportedOp
from tests.onnx_export.test_lowerings import convert, run
from tft_features import mappers

ROWS = [["a", "b", "c", "d"], [], ["x"], ["Größe", "日本", "😀", "Größe", "日本"], ["y", "y"], [""],
        ["p", "", "q"],
        [f"t{i}" for i in range(40)]]


def python_ngrams(tokens: list[str], widths, separator: str) -> list[str]:
    """The reference: each width in order, each start in order (tf.strings.ngrams' order)."""
    return [separator.join(tokens[i:i + w]) for w in widths for i in range(len(tokens) - w + 1)]


def grams_graph(widths, separator):
    def grams(values, splits):
        tokens = tf.RaggedTensor.from_row_splits(values, splits)
        out = tf.strings.ngrams(tokens, list(widths), separator=separator)
        return out.flat_values, out.row_splits

    return convert(grams, tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int64))


@pytest.mark.parametrize("widths", [(1,), (2,), (1, 2), (1, 2, 3), (2, 3), (5,)])
@pytest.mark.parametrize("separator", [" ", "", " _ "])
def test_ngrams_equal_tf_and_python(widths, separator):
    session, ops = grams_graph(widths, separator)
    assert "StringNGrams" not in ops
    for rows in (ROWS, [[], []], []):
        values = np.array([t for r in rows for t in r], object)
        splits = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
        got_values, got_splits = run(session, values, splits)
        want = tf.strings.ngrams(tf.ragged.constant(rows, dtype=tf.string, ragged_rank=1) if rows else
                                 tf.RaggedTensor.from_row_splits(tf.constant([], tf.string), [0]), list(widths),
                                 separator=separator)
        np.testing.assert_array_equal(got_splits, want.row_splits.numpy())
        assert [g for g in got_values] == [g.decode() for g in want.flat_values.numpy()]
        reference = [g for r in rows for g in python_ngrams(r, widths, separator)]
        assert list(got_values) == reference


def test_padded_ngrams_are_refused_naming_the_op():
    def padded(values, splits):
        return tf.strings.ngrams(tf.RaggedTensor.from_row_splits(values, splits), 2, pad_values=("<", ">")).flat_values

    with pytest.raises(UnsupportedOp, match="StringNGrams with padding"):
        convert(padded, tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int64))


def python_bag_of_words(tokens: list[str], widths, separator: str) -> list[str]:
    """Each distinct n-gram of the row once, in the order of its first occurrence."""
    return list(dict.fromkeys(python_ngrams(tokens, widths, separator)))


@pytest.mark.parametrize("widths", [(1,), (1, 2), (2, 3)])
def test_bag_of_words_equals_tf_and_python(widths):
    def bag(values, splits):
        out = mappers.bag_of_words(tf.RaggedTensor.from_row_splits(values, splits), "b", [widths[0], widths[-1]])[0]
        return out.flat_values, out.row_splits

    session, ops = convert(bag, tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int64))
    assert {"StringNGrams", "UnsortedSegmentMin"}.isdisjoint(ops)
    rows = ROWS + [["a", "b", "a", "b", "a"], ["z"] * 7, ["b", "a"]]  # rows sharing n-grams with other rows
    for batch in (rows, [[], []], []):
        values = np.array([t for r in batch for t in r], object)
        splits = np.cumsum([0] + [len(r) for r in batch]).astype(np.int64)
        got_values, got_splits = run(session, values, splits)
        want_values, want_splits = bag(tf.constant(values.tolist(), tf.string), tf.constant(splits))
        np.testing.assert_array_equal(got_splits, want_splits.numpy())
        assert list(got_values) == [g.decode() for g in want_values.numpy()]
        assert list(got_values) == [g for r in batch for g in python_bag_of_words(r, widths, " ")]


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
def test_unsorted_segment_min_fills_empty_segments_with_the_largest_value(dtype):
    def smallest(data, ids, n):
        return tf.math.unsorted_segment_min(data, ids, n)

    session, ops = convert(smallest, tf.TensorSpec([None], tf.as_dtype(dtype)), tf.TensorSpec([None], tf.int32),
                           tf.TensorSpec([], tf.int32))
    assert ops["ScatterND"] == 1
    data = np.array([5, -3, 7, 2, 9, 0], dtype)
    ids = np.array([2, 0, 2, -1, 0, 3], np.int32)  # segment 1 empty, -1 dropped as TF drops it
    for n in (4, 6):
        n = np.array(n, np.int32)
        np.testing.assert_array_equal(run(session, data, ids, n)[0], smallest(data, ids, n).numpy())
