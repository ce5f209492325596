"""n-grams, bags of words and tf-idf through the feature stage, each against an independent reference, joined
back to the raw rows by the unique label; then the three through `tfbridge run`, checked at every hand-off.

- `ngrams` and `bag_of_words`, hashed: FarmHash (pyfarmhash) of the n-grams Python builds from the tokens;
- `tfidf` after a vocabulary: scikit-learn's `TfidfTransformer(norm=None, smooth_idf=True)` (TFT's smooth idf)
  on the count matrix of the tokens by TFT's vocabulary order (pandas), divided by each row's length as TFT's
  term frequency is; the train split's document frequencies in stats.json against the same matrix.

The rows hold non-ASCII words, repeated words and n-grams, one-word and empty texts.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import tensorflow as tf
import yaml
from sklearn.feature_extraction.text import TfidfTransformer

from spark_infer import load_model
from tests.helpers import check_hand_offs, committed, decoded_features_run, tf_inputs
from tests.onnx_export.test_ngrams_lowering import python_bag_of_words, python_ngrams
from tests.tft_features.test_hashing import fingerprint_buckets
from tfbridge.cli import main
from tfbridge.contracts import ConfigError, PipelineConfig
from tft_features.preprocessing import plan_features

N = 400
WORDS = ["data", "café", "naïve", "東京", "🙂", "über", "data", "big", "x" * 30]
TOP_K = 6
FEATURES = {
    "grams": [{"normalize_text": {"stopwords": "none"}}, {"ngrams": {"n": [1, 3], "separator": "·"}}, {"hash": 97}],
    "bag": [{"normalize_text": {"stopwords": "none"}}, {"bag_of_words": [1, 2]}, {"hash": 61}],
    "doc": [{"normalize_text": {"stopwords": "none"}}, {"vocabulary": {"top_k": TOP_K}}, "tfidf"],
}


def texts(rng, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, rng.integers(0, 7))) for _ in range(n)]


def table(seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"target": np.arange(N, dtype=np.float64), "grams": texts(rng, N), "bag": texts(rng, N),
                     "doc": texts(rng, N)})


def tokens(text: str) -> list[str]:
    return unicodedata.normalize("NFC", text).lower().split()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return decoded_features_run(tmp_path_factory.mktemp("text-weights"), table(seed=3), FEATURES, row_group_size=150)


def raw_rows(run: dict, column: str, split: str) -> list[str]:
    values = run["raw"].column(column).to_pylist()
    return [values[i] for i in run["ids"][split]]


@pytest.mark.parametrize("split", ["train", "eval"])
def test_ngrams_are_pythons_ngrams_hashed(run, split):
    got = run["splits"][split]["grams"]
    for row, text in zip(got, raw_rows(run, "grams", split)):
        np.testing.assert_array_equal(np.asarray(row, np.int64),
                                      fingerprint_buckets(python_ngrams(tokens(text), [1, 2, 3], "·"), 97))
    assert any(len(row) == 0 for row in got)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_bag_of_words_is_each_distinct_ngram_once(run, split):
    for row, text in zip(run["splits"][split]["bag"], raw_rows(run, "bag", split)):
        np.testing.assert_array_equal(np.asarray(row, np.int64),
                                      fingerprint_buckets(python_bag_of_words(tokens(text), [1, 2], " "), 61))


def reference_counts(run: dict) -> tuple[list[str], dict[str, np.ndarray]]:
    """TFT's vocabulary of the train split's tokens (count descending, ties by bytes descending, top_k) and each
    split's [rows, top_k + 1] count matrix, the OOV bucket last."""
    train = pd.Series([t for text in raw_rows(run, "doc", "train") for t in tokens(text)]).value_counts()
    order = sorted(train.items(), key=lambda vc: (vc[1], vc[0].encode()), reverse=True)
    vocabulary = [v for v, _ in order[:TOP_K]]
    index = {v: i for i, v in enumerate(vocabulary)}
    counts = {}
    for split in ("train", "eval"):
        rows = raw_rows(run, "doc", split)
        matrix = np.zeros((len(rows), TOP_K + 1))
        for r, text in enumerate(rows):
            for t in tokens(text):
                matrix[r, index.get(t, TOP_K)] += 1
        counts[split] = matrix
    return vocabulary, counts


def test_tfidf_is_sklearns_smooth_tfidf_over_the_row_length(run):
    _, counts = reference_counts(run)
    sklearn = TfidfTransformer(norm=None, smooth_idf=True).fit(counts["train"])
    stats = run["stats"]["doc"]
    assert stats["documents"] == len(counts["train"])
    np.testing.assert_array_equal(stats["document_frequency"], (counts["train"] > 0).sum(axis=0))
    for split in ("train", "eval"):
        lengths = counts[split].sum(axis=1, keepdims=True)
        want = sklearn.transform(counts[split]).toarray() / np.where(lengths > 0, lengths, 1)
        got = np.stack(run["splits"][split]["doc"])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert (got[lengths[:, 0] == 0] == 0).all()


@pytest.mark.parametrize("features, says", [
    ({"doc": ["normalize_text", "vocabulary", "tfidf"]}, "needs the ids' range: give the vocabulary before it a "
                                                          "top_k"),
    ({"doc": ["normalize_text", {"vocabulary": {"top_k": 6_000}}, "tfidf"]}, "at most 5,000: lower top_k"),
    ({"doc": ["normalize_text", {"ngrams": [3, 1]}]}, "n must be a width or an inclusive range"),
    ({"doc": [{"ngrams": 2}]}, "ngrams"),
])
def test_bad_text_steps_are_refused_when_the_config_is_read(features, says):
    with pytest.raises(ConfigError, match=says):
        plan_features(PipelineConfig.from_dict(
            {"data": "d.parquet", "label": "y", "task": "regression", "features": features, "output": "o"},
            source="c.yaml"))


def test_ngrams_bags_and_tfidf_agree_at_every_hand_off(tmp_path, spark):
    rng = np.random.default_rng(11)
    raw = pd.DataFrame({"id": np.arange(N), "grams": texts(rng, N), "bag": texts(rng, N), "doc": texts(rng, N)})
    raw["y"] = raw["doc"].str.count("data") + 0.5 * raw["grams"].str.count("東京 🙂") + rng.normal(0, 0.1, N)
    raw.to_parquet(tmp_path / "docs.parquet", index=False)
    config = {"data": {"path": str(tmp_path / "docs.parquet")}, "label": "y", "task": "regression",
              "features": FEATURES, "output": str(tmp_path / "out"), "split": {"eval_fraction": 0.0},
              "train": {"epochs": 2, "batch_size": 32, "hidden_units": [8], "workers": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) == 0
    layout = PipelineConfig.from_yaml(tmp_path / "c.yaml").layout
    check_hand_offs(layout, raw, "id", "id", "regression", float(raw["y"].std()), spark, tmp_path / "docs.parquet")
    # edge rows: empty, one word, unseen words only, a long repeated text, non-ASCII punctuation
    edge = pd.DataFrame({"id": np.arange(6), "y": 0.0,
                         "grams": ["", "data", "never seen", "data 東京 " * 300, "«café» — über!", " "],
                         "bag": ["data data data", "", "🙂", "big big big big", "x y x y x", "東京"],
                         "doc": ["", "unseen words", "data", "data " * 500, "café café naïve", "🙂 🙂"]})
    model = load_model(layout.model_dir)
    signature = tf.saved_model.load(str(committed(layout).saved_model_dir)).signatures["serving_default"]
    np.testing.assert_allclose(model.predict(edge)["prediction"],
                               signature(**tf_inputs(model.feeds(edge)))["prediction"].numpy(), rtol=1e-4,
                               atol=1e-5 * float(raw["y"].std()))
