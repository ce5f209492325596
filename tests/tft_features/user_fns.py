"""Users' own preprocessing_fns, for the `preprocessing_fn: module:function` escape hatch."""

import tensorflow as tf
import tensorflow_transform as tft


def scaled_x(inputs):
    return {"x_scaled": tft.scale_to_0_1(tf.squeeze(inputs["x"], 1))}


def fails_in_the_pipeline(inputs):
    raise RuntimeError("deliberate failure inside the Beam job")


def three_phases(inputs):
    """Three chained analyzers: the in-process FnApiRunner stalls on these, the stage reruns them."""
    x = tf.squeeze(inputs["x"], 1)
    return {"x3": tft.scale_to_z_score(tft.scale_to_0_1(tft.scale_to_z_score(x)))}


def awkward_names(inputs):
    """Reads columns by the user's names and names its outputs freely (spaces, parentheses, capitals)."""
    team = tf.squeeze(inputs["Home Team"], 1)
    return {"Home Team ids": tft.compute_and_apply_vocabulary(team, num_oov_buckets=1),
            "price (z)": tft.scale_to_z_score(tf.squeeze(inputs["price ($)"], 1))}


def tft_common_functions(inputs):
    """TFT's common functions on a category key, two numbers and a text category (tests/onnx_export/
    test_tft_functions.py): per-key z-score and buckets, hashing, a vocabulary with 3 OOV buckets, interpolated
    quantile buckets and a PCA projection; `row_id` passes through to join the outputs by."""
    key, x, y, colour = (tf.squeeze(inputs[name], 1) for name in ("key", "x", "y", "colour"))
    xy = tf.concat([inputs["x"], inputs["y"]], 1)
    projected = tf.matmul(xy, tft.pca(xy, output_dim=2, dtype=tf.float32))
    return {"row_id": tf.squeeze(inputs["row_id"], 1),
            "x_z_per_key": tft.scale_to_z_score_per_key(x, key),
            "x_buckets_per_key": tft.bucketize_per_key(x, key, num_buckets=4),
            "colour_hash": tft.hash_strings(colour, hash_buckets=100),
            "colour_id": tft.compute_and_apply_vocabulary(colour, num_oov_buckets=3),
            "y_interpolated": tft.apply_buckets_with_interpolation(y, tft.quantiles(y, num_buckets=5, epsilon=0.01)),
            "pc_0": projected[:, 0], "pc_1": projected[:, 1]}


TFIDF_TERMS = 50  # the tf-idf vector's width: the 49 most frequent words and one OOV bucket


def tft_text_functions(inputs):
    """TFT's text functions on a text column (tests/onnx_export/test_tft_text_functions.py): the words' 1- and
    2-grams, hashed so that every n-gram, seen or not, gets an id of its own, and the tf-idf of the words as a vector
    of TFIDF_TERMS weights, one per word id (the trainer takes ids and fixed-width vectors, not TFT's two sparse
    tf-idf outputs); the bag of 1- and 2-grams (tft.bag_of_words), hashed the same way; `row_id` passes through."""
    text = tf.squeeze(inputs["text"], 1)
    words = tf.strings.split(text).to_sparse()
    word_ids = tft.compute_and_apply_vocabulary(words, top_k=TFIDF_TERMS - 1, num_oov_buckets=1)
    terms, weights = tft.tfidf(word_ids, TFIDF_TERMS)
    tfidf = tf.scatter_nd(tf.stack([weights.indices[:, 0], terms.values], 1), weights.values,
                          tf.stack([tf.shape(text, out_type=tf.int64)[0], TFIDF_TERMS]))
    return {"row_id": tf.squeeze(inputs["row_id"], 1),
            "ngram_hashes": tft.hash_strings(tft.ngrams(words, (1, 2), " "), hash_buckets=2**20),
            "bag_hashes": tft.hash_strings(tft.bag_of_words(words, (1, 2), " "), hash_buckets=2**20),
            "tfidf": tfidf}
