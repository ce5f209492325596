"""A user's preprocessing_fn calling TFT's text functions (tft.ngrams, tft.bag_of_words, tft.tfidf over
tft.compute_and_apply_vocabulary of the words) exports as one ONNX graph that agrees with the transform SavedModel
feature by feature. tft.bag_of_words runs with tfbridge's loop-free deduplicate_tensor_per_row in TFT's place
(tft_features.pipeline), which gives what TFT's own gives; TFT's own would stop the export naming the ops it lacks.

`tests.tft_features.user_fns:tft_text_functions` runs through the feature stage and its transform alone is converted
as in test_tft_functions. The fresh rows are the training texts with texts never seen: empty and whitespace-only,
unseen and non-ASCII words, a case variant, one word repeated, one word, a text longer than any seen; then a batch of
only empty texts and an empty batch. ONNX scores each in another order; the outputs are joined by `row_id`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from onnx_export.convert import ExportError
from tests.onnx_export.test_lowerings import convert
from tests.onnx_export.test_tft_functions import assert_equal_by_row_id, converted_transform, features_by_row_id
from tests.tft_features.user_fns import TFIDF_TERMS
from tft_features import mappers

PREPROCESSING_FN = "tests.tft_features.user_fns:tft_text_functions"
# more words than the tf-idf vocabulary keeps (TFIDF_TERMS - 1): the rarer ones share its OOV bucket
WORDS = [f"w{i}" for i in range(70)] + ["Straße", "日本語", "😀", "naïve"]
UNSEEN_TEXTS = ["", " ", "\t\n", "unseen words only", "Ärger 東京 🙂", "W0 STRASSE straße", "w0 w0 w0 w0 w0",
                "w1", "w2 unseen w2", " ".join(WORDS[::-1] * 2), "w3\tw4\nw5  w6 "]


def raw_table(rng, rows: int) -> pa.Table:
    """Texts of 0 to 12 words, the words' frequencies falling off as 1/rank (Zipf)."""
    frequency = 1 / np.arange(1, len(WORDS) + 1)
    texts = [" ".join(rng.choice(WORDS, rng.integers(0, 13), p=frequency / frequency.sum())) for _ in range(rows)]
    return pa.table({"row_id": np.arange(rows, dtype=np.float64), "text": texts, "target": rng.normal(0, 1, rows)})


@pytest.fixture(scope="module")
def transform(tmp_path_factory):
    """(the raw training table, the transform's SavedModel, its ONNX graph's session, op types of the graph)."""
    table = raw_table(np.random.default_rng(0), 300)
    return table, *converted_transform(tmp_path_factory.mktemp("tft_text_functions"), table, PREPROCESSING_FN)


def graph_inputs(texts: list[str], rng) -> dict[str, np.ndarray]:
    return {"text": np.array(texts, object), "row_id": rng.permutation(len(texts)).astype(np.float32) + 10_000}


def test_onnx_agrees_with_the_saved_model_feature_by_feature(transform):
    table, saved_model, session, ops = transform
    rng = np.random.default_rng(1)

    def tfidf_by_text(texts: list[str]) -> dict[str, np.ndarray]:
        """The SavedModel's tf-idf vector of each text, once ONNX's features of the texts equal the SavedModel's."""
        rows = graph_inputs(texts, rng)
        got, want = features_by_row_id(session, saved_model, rows, rng)
        assert set(got) == set(want) == {"row_id", "ngram_hashes", "bag_hashes", "tfidf"}
        assert_equal_by_row_id(got, want, len(texts))
        return {text: np.array(want["tfidf"][row_id]) for text, row_id in zip(texts, rows["row_id"].tolist())}

    tfidf = tfidf_by_text(table.column("text").to_pylist() + UNSEEN_TEXTS)
    assert not any(vector.any() for vector in tfidf_by_text(["", " ", ""]).values())
    assert tfidf_by_text([]) == {}
    # unseen words weigh in the OOV bucket, the last of the vector; a text without words weighs nothing
    assert np.flatnonzero(tfidf["unseen words only"]).tolist() == [TFIDF_TERMS - 1]
    assert not tfidf[""].any() and not tfidf["\t\n"].any() and tfidf["w0 w0 w0 w0 w0"].any()
    # the n-grams joined by ONNX's StringConcat, tfidf's sparse sums by Unique and ScatterND
    assert {"StringConcat", "Unique", "ScatterND"} <= ops and "StringJoin" not in ops


def test_tfts_own_bag_of_words_names_the_ops_it_lacks():
    """TFT's deduplicate_tensor_per_row dedupes each row in a tf.while_loop, slicing the row out (SparseSlice) and
    collecting rows of different lengths in a TensorArray (TensorListConcatV2): an ONNX Loop's outputs have one shape
    every iteration, so no per-op lowering expresses it; hence tfbridge's own in its place."""
    def bag(text):
        words = tf.strings.split(text).to_sparse()
        return mappers.TFT_DEDUPLICATE_PER_ROW(tft.ngrams(words, (1, 2), " ")).values

    with pytest.raises(ExportError, match=r"no lowering for op SparseSlice .*op TensorListConcatV2"):
        convert(bag, tf.TensorSpec([None], tf.string))


@pytest.mark.parametrize("texts", [
    ["a b a b", "", "x x x", "ünï 日本 ünï", "b a b a b a", "  ", "a"], ["", ""], ["solo"],
    [" ".join(np.random.default_rng(3).choice(["p", "q", "r", "s"], 40)) for _ in range(30)],
])
def test_the_loop_free_deduplication_gives_what_tfts_gives(texts):
    grams = tft.ngrams(tf.strings.split(tf.constant(texts, tf.string)).to_sparse(), (1, 2), " ")
    ours, theirs = mappers.deduplicate_sparse_per_row(grams), mappers.TFT_DEDUPLICATE_PER_ROW(grams)
    np.testing.assert_array_equal(ours.indices.numpy(), theirs.indices.numpy())
    assert ours.values.numpy().tolist() == theirs.values.numpy().tolist()
    np.testing.assert_array_equal(ours.dense_shape.numpy(), theirs.dense_shape.numpy())
