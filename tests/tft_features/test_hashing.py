"""Hashing and crosses through the feature stage, joined back to the raw rows by the unique label: the `hash` step
on categories and on tokens, `cross` of three text columns, and a vocabulary with three OOV buckets, each
against FarmHash's Fingerprint64 (pyfarmhash) of the NFC text's UTF-8 bytes, and TFT's vocabulary order from
the train split's counts (pandas).

The rows hold non-ASCII text (composed and decomposed accents, CJK, emoji), empty strings and nulls (a null
string is ""), values with the cross's separator in them, and values seen once (outside the top_k: OOV).
"""

from __future__ import annotations

import unicodedata

import farmhash
import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf

from tests.helpers import decoded_features_run
from tfbridge.contracts import ConfigError, FeaturesManifest, PipelineConfig
from tfbridge.contracts.columns import VOCABULARY_EMPTY
from tft_features.mappers import cross
from tft_features.preprocessing import plan_features

N = 500
CATEGORIES = ["red", "Größe", "e\u0301t\u00e9", "日本", "😀", "", "a_X_b", "a", "b_X_", "x" * 80]
WORDS = ["the", "Café", "naïve", "東京", "🙂", "data", "x" * 40, "ÜBER"]
FEATURES = {
    "cat": [{"hash": 50}],
    "text": [{"normalize_text": {"stopwords": "none"}}, {"hash": {"buckets": 64}}],
    "oov": [{"vocabulary": {"top_k": 4, "num_oov_buckets": 3}}],
    "a": [{"cross": {"with": ["b", "c"], "hash_buckets": 101}}],
    "b": ["vocabulary"],
}


def table(seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)

    def pick(values, n=N, null_fraction=0.0):
        chosen = list(rng.choice(np.array(values, object), n))
        return pa.array([None if rng.random() < null_fraction else v for v in chosen], pa.string())

    # oov: four frequent values (distinct counts: no tie decides the top 4) and a tail seen about once each
    head = np.repeat(["alpha", "Ωmega", "zz", "ÄÖÜ"], [120, 90, 70, 50]).tolist()
    tail = [f"rare {i} ü" for i in range(N - len(head))]
    oov = np.array(head + tail, object)[rng.permutation(N)]
    text = [" ".join(rng.choice(WORDS, rng.integers(0, 6))) for _ in range(N)]
    return pa.table({
        "target": np.arange(N, dtype=np.float64),
        "cat": pick(CATEGORIES, null_fraction=0.05), "text": pa.array(text), "oov": pa.array(oov.tolist()),
        "a": pick(CATEGORIES), "b": pick(["b1", "B₂", "", "_X_c"]), "c": pick(["c", "ç", "", "c"], null_fraction=0.1),
    })


def nfc(values) -> list[str]:
    return [unicodedata.normalize("NFC", v or "") for v in values]


def fingerprint_buckets(strings, buckets: int) -> np.ndarray:
    return np.array([farmhash.fingerprint64(s) % buckets for s in strings], np.int64)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return decoded_features_run(tmp_path_factory.mktemp("hashing"), table(seed=5), FEATURES, row_group_size=200)


def raw_rows(run: dict, column: str, split: str) -> list[str]:
    """The raw column as the graphs read it (NFC, null as ""), in the order of the split's decoded rows."""
    values = nfc(run["raw"].column(column).to_pylist())
    return [values[i] for i in run["ids"][split]]


@pytest.mark.parametrize("split", ["train", "eval"])
def test_hash_of_a_category_is_farmhash_of_its_nfc_bytes(run, split):
    got = np.asarray(run["splits"][split]["cat"])
    np.testing.assert_array_equal(got, fingerprint_buckets(raw_rows(run, "cat", split), 50))


@pytest.mark.parametrize("split", ["train", "eval"])
def test_hash_of_tokens_hashes_each_token(run, split):
    got = run["splits"][split]["text"]
    for row, text in zip(got, raw_rows(run, "text", split)):
        tokens = unicodedata.normalize("NFC", text).lower().split()
        np.testing.assert_array_equal(np.asarray(row, np.int64), fingerprint_buckets(tokens, 64))
    assert any(len(row) == 0 for row in got)  # an empty text has no tokens


@pytest.mark.parametrize("split", ["train", "eval"])
def test_cross_hashes_the_three_values_joined_by_x(run, split):
    joined = ["_X_".join(v) for v in zip(*(raw_rows(run, c, split) for c in ("a", "b", "c")))]
    np.testing.assert_array_equal(np.asarray(run["splits"][split]["a"]), fingerprint_buckets(joined, 101))


def test_cross_is_tf_sparse_cross_hashed():
    """The definition the README gives: TF's string cross of one value per column, hashed."""
    a, b, c = (tf.constant(nfc(v)) for v in (CATEGORIES, CATEGORIES[::-1], CATEGORIES[3:] + CATEGORIES[:3]))
    crossed = tf.sparse.cross([a[:, None], b[:, None], c[:, None]])
    np.testing.assert_array_equal(crossed.indices.numpy()[:, 0], np.arange(len(CATEGORIES)))
    np.testing.assert_array_equal(cross(a, "x", {"b": b, "c": c}, 101)[0].numpy(),
                                  tf.strings.to_hash_bucket_fast(crossed.values, 101).numpy())


def test_a_vocabulary_with_three_oov_buckets_hashes_the_values_outside_its_top_k(run):
    train = raw_rows(run, "oov", "train")
    values, counts = np.unique(np.array(train, object), return_counts=True)
    # TFT's order: descending count, ties by descending UTF-8 bytes
    order = [v for v, _ in sorted(zip(values, counts), key=lambda vc: (vc[1], vc[0].encode()), reverse=True)][:4]
    assert run["stats"]["oov"]["vocabulary_size"] == 4 and run["stats"]["oov"]["num_oov_buckets"] == 3
    for split in ("train", "eval"):
        rows = raw_rows(run, "oov", split)
        keys = [VOCABULARY_EMPTY if v == "" else v for v in rows]
        unseen = 4 + fingerprint_buckets(keys, 3)
        want = np.array([order.index(v) if v in order else u for v, u in zip(rows, unseen)])
        np.testing.assert_array_equal(np.asarray(run["splits"][split]["oov"]), want)
        assert set(want[want >= 4]) == {4, 5, 6}


def test_the_model_is_told_each_id_range(run):
    manifest = FeaturesManifest.read(run["config"].layout.features_manifest_path)
    outputs = {name: (o.kind, o.width, o.unseen_ids) for name, o in manifest.outputs.items()}
    assert outputs["cat"] == ("ids", 50, None) and outputs["text"] == ("token_ids", 64, None)
    assert outputs["a"] == ("ids", 101, None) and outputs["oov"] == ("ids", 7, (4, 7))
    assert {name: manifest.raw_columns[name].dtype for name in "abc"} == {"a": "string", "b": "string",
                                                                         "c": "string"}


def plan(features):
    return plan_features(PipelineConfig.from_dict(
        {"data": "d.parquet", "label": "y", "task": "regression", "features": features, "output": "o"},
        source="c.yaml"))


def test_the_plan_reads_cross_partners_as_text():
    p = plan({"a": [{"cross": {"with": ["b", "c"], "hash_buckets": 8}}], "c": [{"hash": 4}, "one_hot"]})
    assert p.raw_columns() == {"a": ("string", False), "c": ("string", False), "b": ("string", False)}
    assert [k.width for k in p.columns[1].kinds] == [4, None]


@pytest.mark.parametrize("features, needle", [
    ({"a": [{"hash": 1}]}, "step 'hash': buckets must be an integer >= 2"),
    ({"a": [{"hash": {"buckets": "many"}}]}, "buckets must be an integer >= 2 (the ids' range), got 'many'"),
    ({"a": ["z_score", {"hash": 8}]}, "step 'hash' needs text or tokens input, but the step before it gives number"),
    ({"a": [{"cross": {"with": "b", "hash_buckets": 8}}]}, "'with' must be a non-empty list of the text columns"),
    ({"a": [{"cross": {"with": [], "hash_buckets": 8}}]}, "'with' must be a non-empty list"),
    ({"a": [{"cross": {"with": ["b"]}}]}, "hash_buckets must be an integer >= 2"),
    ({"a": [{"cross": {"with": ["b"], "hash_buckets": 8}}], "b": ["z_score"]},
     "cross uses the raw column 'b', which must be text, not imputed"),
    ({"a": [{"cross": {"with": ["b"], "hash_buckets": 8}}], "b": [{"impute": "most_frequent"}, "vocabulary"]},
     "cross uses the raw column 'b', which must be text, not imputed"),
    ({"a": [{"cross": {"with": ["b"], "hash_buckets": 8}}], "p": [{"polynomial": {"with": ["b"]}}]},
     "uses the raw column 'b', which must be"),
])
def test_bad_hash_and_cross_configs_name_the_column_and_step(features, needle):
    with pytest.raises(ConfigError, match="c.yaml: features") as err:
        plan(features)
    assert needle in str(err.value)
