"""StringToHashBucketFast in ONNX equals TF's on every kind of string.

TF's op (TFT's `hash_strings`, the vocabulary's OOV buckets, our `hash` and `cross` steps) is FarmHash's
Fingerprint64 of the string's bytes modulo N; pyfarmhash computes the same function and agrees with TF here.
Standard ONNX cannot read a string's bytes: the lowering maps to onnxruntime-extensions' op of the same name,
which is FarmHash in the pinned 0.14.0 (0.15 hashes with std::hash, which the probe of every session that loads
the library would refuse). One bucket needs no library: every string is 0.
"""

from __future__ import annotations

import farmhash
import numpy as np
import pytest
import tensorflow as tf

from tests.onnx_export.test_lowerings import convert, run
from tfbridge.scoring.session import HASH_PROBE, HASH_PROBE_BUCKETS
from tft_features import mappers

EDGE_STRINGS = ["", " ", "a", "ünï", "Größe CAFÉ — “quoted” l’été", "日本語のテキスト", "emoji 😀👍🏽", "e\u0301",
                "tab\there\nnew line", "x" * 8, "x" * 16, "x" * 17, "y" * 32, "y" * 33, "z" * 64, "z" * 65,
                "w" * 129, "long text " * 5_000, "\u0301", "\U0010ffff", "a_X_b"]
BUCKETS = [2, 7, 1_000, 2**31 - 1, 2**63 - 1]


def fingerprint_buckets(strings, buckets: int) -> np.ndarray:
    """FarmHash's Fingerprint64 of the UTF-8 bytes, unsigned, modulo `buckets` (pyfarmhash)."""
    return np.array([farmhash.fingerprint64(s) % buckets for s in strings], np.int64)


@pytest.mark.parametrize("buckets", BUCKETS)
def test_tf_hash_buckets_are_farmhash_fingerprint64(buckets):
    got = tf.strings.to_hash_bucket_fast(tf.constant(EDGE_STRINGS), buckets).numpy()
    np.testing.assert_array_equal(got, fingerprint_buckets(EDGE_STRINGS, buckets))


def test_the_session_probes_hash_values_are_tfs():
    got = tf.strings.to_hash_bucket_fast(tf.constant(list(HASH_PROBE)), HASH_PROBE_BUCKETS).numpy()
    np.testing.assert_array_equal(got, list(HASH_PROBE.values()))


@pytest.mark.parametrize("buckets", BUCKETS)
def test_hashed_text_equals_tf_on_edge_strings(buckets):
    def hashed(x):
        return mappers.hash_strings(x, "h", buckets)[0]

    session, ops = convert(hashed, tf.TensorSpec([None], tf.string))
    assert ops["StringToHashBucketFast"] == 1
    text = np.array(EDGE_STRINGS, object)
    got = run(session, text)[0]
    np.testing.assert_array_equal(got, hashed(tf.constant(EDGE_STRINGS)).numpy())
    np.testing.assert_array_equal(got, fingerprint_buckets(EDGE_STRINGS, buckets))


@pytest.mark.parametrize("build", [
    pytest.param(lambda a, b: mappers.hash_strings(
        mappers.normalize_text(a, "t", stopwords="none")[0], "h", 64)[0].flat_values, id="tokens"),
    pytest.param(lambda a, b: mappers.cross(a, "x", {"b": b}, 1_009)[0], id="cross"),
    pytest.param(lambda a, b: tf.strings.to_hash_bucket_fast(a, 3), id="three OOV buckets"),
])
def test_tokens_crosses_and_oov_buckets_equal_tf(build):
    session, ops = convert(build, tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string))
    assert ops["StringToHashBucketFast"] >= 1
    a = np.array(EDGE_STRINGS, object)
    b = np.array(EDGE_STRINGS[::-1], object)
    np.testing.assert_array_equal(run(session, a, b)[0], build(tf.constant(a.tolist()), tf.constant(b.tolist())).numpy())


def test_one_bucket_needs_no_text_op_library():
    session, ops = convert(lambda x: tf.strings.to_hash_bucket_fast(x, 1), tf.TensorSpec([None], tf.string))
    assert "StringToHashBucketFast" not in ops and ops["ConstantOfShape"] == 1
    np.testing.assert_array_equal(run(session, np.array(EDGE_STRINGS, object))[0], np.zeros(len(EDGE_STRINGS)))
