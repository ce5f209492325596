"""Why StringToHashBucketFast with more than one bucket does not export, and that it says so.

TF's op (TFT's `hash_strings`, the vocabulary's OOV buckets, our `hash` and `cross` steps) is FarmHash's
Fingerprint64 of the string's bytes modulo N; pyfarmhash computes the same function and agrees with TF here.
Standard ONNX cannot read a string's bytes, and onnxruntime-extensions 0.15.2's op of the same name is not
FarmHash (it uses std::hash), nor is its StringToHashBucket TF's legacy Hash64 (it multiplies once more for
byte lengths that are multiples of 8, the empty string included). tf2onnx's own handler maps to the first one,
which would change every id without a word; our handler refuses, naming the op, the bucket count and the way
out. Should a later onnxruntime-extensions compute FarmHash, the test of its op below fails and says so.
"""

from __future__ import annotations

import farmhash
import numpy as np
import onnxruntime_extensions
import pytest
import tensorflow as tf
from onnx import TensorProto, helper

from onnx_export.lowerings import EXTENSIONS_DOMAIN, UnsupportedOp
from tests.helpers import onnx_session
from tests.onnx_export.test_lowerings import convert
from tft_features import mappers

EDGE_STRINGS = ["", " ", "a", "ünï", "Größe CAFÉ — “quoted” l’été", "日本語のテキスト", "emoji 😀👍🏽", "e\u0301",
                "tab\there\nnew line", "x" * 8, "x" * 17, "y" * 33, "z" * 65, "long text " * 5_000]
BUCKETS = [2, 7, 1_000, 2**31 - 1, 2**63 - 1]


def fingerprint_buckets(strings, buckets: int) -> np.ndarray:
    """FarmHash's Fingerprint64 of the UTF-8 bytes, unsigned, modulo `buckets` (pyfarmhash)."""
    return np.array([farmhash.fingerprint64(s) % buckets for s in strings], np.int64)


@pytest.mark.parametrize("buckets", BUCKETS)
def test_tf_hash_buckets_are_farmhash_fingerprint64(buckets):
    got = tf.strings.to_hash_bucket_fast(tf.constant(EDGE_STRINGS), buckets).numpy()
    np.testing.assert_array_equal(got, fingerprint_buckets(EDGE_STRINGS, buckets))


def extension_op(op: str, buckets: int):
    node = helper.make_node(op, ["text", "buckets"], ["ids"], domain=EXTENSIONS_DOMAIN)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
                              [helper.make_tensor("buckets", TensorProto.INT64, [1], [buckets])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                    helper.make_opsetid(EXTENSIONS_DOMAIN, 1)])
    return onnx_session(model.SerializeToString())


def test_the_extension_ops_are_not_tfs_hashes():
    """Why no lowering maps to onnxruntime-extensions (0.15.2): its StringToHashBucketFast differs from TF's on
    most strings; its StringToHashBucket equals TF's legacy op except where the byte length is a multiple of 8."""
    text = np.array(EDGE_STRINGS, object)
    fast = extension_op("StringToHashBucketFast", 2**63 - 1).run(None, {"text": text})[0]
    assert onnxruntime_extensions.__version__ == "0.15.2"
    assert (fast != fingerprint_buckets(EDGE_STRINGS, 2**63 - 1)).sum() >= len(EDGE_STRINGS) - 1, (
        "onnxruntime-extensions' StringToHashBucketFast now looks like FarmHash: lower StringToHashBucketFast to it")
    legacy = extension_op("StringToHashBucket", 2**63 - 1).run(None, {"text": text})[0]
    want = tf.strings.to_hash_bucket(tf.constant(EDGE_STRINGS), 2**63 - 1).numpy()
    eighths = np.array([len(s.encode()) % 8 == 0 for s in EDGE_STRINGS])
    np.testing.assert_array_equal(legacy[~eighths], want[~eighths])
    assert (legacy[eighths] != want[eighths]).all()


@pytest.mark.parametrize("build", [
    lambda a, b: mappers.hash_strings(a, "h", 97)[0],
    lambda a, b: mappers.hash_strings(mappers.normalize_text(a, "t", stopwords="none")[0], "h", 64)[0].flat_values,
    lambda a, b: mappers.cross(a, "x", {"b": b}, 1_009)[0],
    lambda a, b: tf.strings.to_hash_bucket_fast(a, 3),  # a vocabulary's 3 OOV buckets
])
def test_more_than_one_bucket_is_refused_with_the_way_out(build):
    with pytest.raises(UnsupportedOp, match=r"StringToHashBucketFast with \d+ buckets .* hash and cross steps .* "
                                            r"do not export; score with the SavedModel"):
        convert(build, tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string))
