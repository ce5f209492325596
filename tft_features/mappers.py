"""Per-row mappers: each output row depends on its input row alone, no analysis pass.

Each function takes a batch tensor and returns `(output, stats)` like the
analyzers, so the preprocessing chain treats both alike; their stats are the
fixed parameters they applied. Ops are chosen with an ONNX counterpart in mind
(lower-casing and stop words: StringNormalizer; buckets: comparisons and a sum).
"""

from __future__ import annotations

import itertools

import tensorflow as tf
import tensorflow_transform as tft

from tfbridge.contracts.columns import DELETED_CHARACTERS, PUNCTUATION_AND_WHITESPACE, SIGMA_FOLD

# NLTK's English stop-word list (179 words), lower case, without punctuation:
# normalisation strips apostrophes before stop words are removed.
ENGLISH_STOP_WORDS = tuple(sorted({
    "a", "about", "above", "after", "again", "against", "ain", "all", "am", "an", "and", "any", "are",
    "aren", "arent", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both",
    "but", "by", "can", "couldn", "couldnt", "d", "did", "didn", "didnt", "do", "does", "doesn",
    "doesnt", "doing", "don", "dont", "down", "during", "each", "few", "for", "from", "further", "had",
    "hadn", "hadnt", "has", "hasn", "hasnt", "have", "haven", "havent", "having", "he", "her", "here",
    "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "isn", "isnt",
    "it", "its", "itself", "just", "ll", "m", "ma", "me", "mightn", "mightnt", "more", "most", "mustn",
    "mustnt", "my", "myself", "needn", "neednt", "no", "nor", "not", "now", "o", "of", "off", "on",
    "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "re", "s", "same",
    "shan", "shant", "she", "shes", "should", "shouldve", "shouldn", "shouldnt", "so", "some", "such",
    "t", "than", "that", "thatll", "the", "their", "theirs", "them", "themselves", "then", "there",
    "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "ve", "very",
    "was", "wasn", "wasnt", "we", "were", "weren", "werent", "what", "when", "where", "which", "while",
    "who", "whom", "why", "will", "with", "won", "wont", "wouldn", "wouldnt", "y", "you", "youd",
    "youll", "youre", "youve", "your", "yours", "yourself", "yourselves",
}))



def stop_words(spec) -> tuple[str, ...]:
    """The stop-word list a config names: `english`, `none`, or an explicit list of words."""
    if spec in (None, "none", False):
        return ()
    if spec == "english":
        return ENGLISH_STOP_WORDS
    if isinstance(spec, (list, tuple)) and all(isinstance(w, str) for w in spec):
        return tuple(sorted({w.lower() for w in spec}))
    raise ValueError(f"stopwords must be 'english', 'none' or a list of words, got {spec!r}")


def normalize_text(x: tf.Tensor, name: str, stopwords="english", lowercase: bool = True):
    """Text to a token list: lower-case, strip punctuation, split on whitespace, drop stop words.

    `x` is NFC text (tfbridge.contracts.columns.model_text: the feature stage and the scorers give it).
    Lower-casing is Unicode's (CAFÉ -> café, ΣΑΣ -> σασ, ǅ -> ǆ, İ -> i, ẞ -> ß) with every sigma as σ;
    apostrophes (' ’ ‘ ʼ) are deleted (don’t -> dont); Unicode punctuation, math, currency and modifier
    symbols and whitespace become spaces, emoji stay (tfbridge.contracts.columns holds the rules, shared
    with the ONNX lowering and the scorer's self-check). Returns a RaggedTensor [batch, (tokens)] of
    strings; an empty or all-stop-word string gives an empty list.
    """
    del name
    text = x
    if lowercase:
        text = tf.strings.regex_replace(tf.strings.lower(text, encoding="utf-8"), *SIGMA_FOLD)
    text = tf.strings.regex_replace(text, DELETED_CHARACTERS, "")
    text = tf.strings.regex_replace(text, PUNCTUATION_AND_WHITESPACE, " ")
    tokens = tf.strings.split(text)
    words = stop_words(stopwords)
    if words:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(words), tf.ones([len(words)], tf.int64)),
            default_value=0)
        keep = tf.equal(table.lookup(tokens.flat_values), 0)
        tokens = tf.ragged.boolean_mask(tokens, tokens.with_flat_values(keep))
    return tokens, {}


def threshold(x: tf.Tensor, name: str, value: float):
    """Binarise: 1.0 where x > value, else 0.0 (sklearn's Binarizer)."""
    del name
    return tf.cast(x > value, tf.float32), {}


def fixed_buckets(x: tf.Tensor, name: str, boundaries):
    """Bucket ids 0..len(boundaries) for sorted, fixed boundaries; a value on a boundary goes up."""
    del name
    bounds = [float(b) for b in boundaries]
    return tft.apply_buckets(x, tf.constant([bounds], tf.float32)), {}


def in_float64(fn, x: tf.Tensor) -> tf.Tensor:
    """fn(x) computed in float64 and rounded once to float32.

    TF and onnxruntime implement log and exp differently and may differ by one
    float32 ulp. A later step can amplify that: on a real table (R's
    MASS::survey, age 16..73) Box-Cox's lambda of -3.975 maps every age to
    0.2516 minus at most 1e-5, a spread of ~30 ulps, and z_score then
    multiplies it by 1.2e6: one ulp moved a prediction's class. Computed in
    float64, the two engines agree far below float32's resolution, so both
    round to the same float32 value.
    """
    return tf.cast(fn(tf.cast(x, tf.float64)), tf.float32)


def log1p(x: tf.Tensor, name: str):
    """log(1 + x), computed in float64 (see in_float64). x must be > -1 (its Domain in `steps`): the feature
    stage checks the raw values, the plan refuses a step before it that could give values <= -1, and the
    scorers check the raw values against the manifest (RawColumn.above)."""
    del name
    return in_float64(tf.math.log1p, x), {}


def clip(x: tf.Tensor, name: str, min=None, max=None):  # noqa: A002 - config names
    """Limits x to [min, max]; either bound may be omitted."""
    del name
    if min is not None:
        x = tf.maximum(x, float(min))
    if max is not None:
        x = tf.minimum(x, float(max))
    return x, {}


def polynomial_terms(columns: list[str], degree: int) -> list[tuple[str, ...]]:
    """The monomials of sklearn's PolynomialFeatures(degree, include_bias=False), in its order."""
    return [combo for d in range(1, degree + 1)
            for combo in itertools.combinations_with_replacement(columns, d)]


def polynomial(x: tf.Tensor, name: str, degree: int, others: dict[str, tf.Tensor]):
    """Powers and interactions of x with the `with` columns, as one float vector per row.

    The term order is sklearn's PolynomialFeatures(include_bias=False): for
    columns (x, y) and degree 2, [x, y, x^2, x y, y^2].
    """
    values = {name: x, **others}
    terms = polynomial_terms(list(values), degree)
    columns = []
    for term in terms:
        product = values[term[0]]
        for col in term[1:]:
            product = product * values[col]
        columns.append(product)
    return tf.stack(columns, axis=1), {"terms": [" ".join(t) for t in terms]}


def one_hot(ids: tf.Tensor, name: str, depth: int):
    """Indicator vector of width `depth` for integer ids; an id outside [0, depth) gives all zeros."""
    del name
    return tf.one_hot(ids, depth, dtype=tf.float32), {}
