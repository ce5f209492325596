"""Per-row mappers: each output row depends on its input row alone, no analysis pass.

Each function takes a batch tensor and returns `(output, stats)` like the
analyzers, so the preprocessing chain treats both alike; their stats are the
fixed parameters they applied. Ops are chosen with an ONNX counterpart in mind
(lower-casing and stop words: StringNormalizer; buckets: comparisons and a sum).
"""

from __future__ import annotations

import itertools
import math

import tensorflow as tf
import tensorflow_transform as tft

from tfbridge.contracts.columns import (DELETED_CHARACTERS, PUNCTUATION_AND_WHITESPACE, SECONDS_PER_DAY, SIGMA_FOLD,
                                        model_timestamps)

# TFT's own, kept before a user's preprocessing_fn runs with deduplicate_sparse_per_row in its place.
TFT_DEDUPLICATE_PER_ROW = tft.deduplicate_tensor_per_row

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


# Hashing. TF's StringToHashBucketFast, as TFT's hash_strings computes it: FarmHash's Fingerprint64 of the
# string's UTF-8 bytes modulo the number of buckets, both unsigned. No ONNX op computes it (standard ONNX
# cannot read bytes; onnxruntime-extensions' op of that name hashes otherwise), so onnx_export.lowerings
# refuses it with more than one bucket: these steps score with the SavedModel.
CROSS_SEPARATOR = "_X_"  # tf.sparse.cross's default


def hash_strings(x, name: str, buckets: int):
    """Ids in [0, buckets) of text or of tokens (a RaggedTensor, each token hashed): TFT's
    `hash_strings(x, buckets)`, i.e. `fingerprint64(utf8 bytes) % buckets` with FarmHash's Fingerprint64.

    No vocabulary and no analysis pass: an unseen value gets an id like any other, and two values share
    one when their fingerprints do modulo `buckets`. The empty string (also a missing text value) has an
    id of its own like any value. Text is NFC (tfbridge.contracts.columns.model_text), so a composed and a
    decomposed é hash alike.
    """
    return tft.hash_strings(x, buckets, name=name), {}


def ngram_widths(n) -> list[int]:
    """The widths of an `n` parameter: one width (2) or an inclusive range ([1, 3] -> 1, 2, 3), as TFT's
    `ngram_range`."""
    low, high = (n, n) if isinstance(n, int) else n
    return list(range(low, high + 1))


def ngrams(tokens, name: str, n, separator: str = " "):
    """Each row's n-grams (a RaggedTensor of strings): every run of `w` consecutive tokens joined by
    `separator`, for each width of `n` (`ngram_widths`); a row shorter than a width has none of that width.

    The n-grams of TFT's `tft.ngrams(tokens, ngram_range, separator)`, in `tf.strings.ngrams`' order
    (width by width, then by position) where TFT's goes position by position: the same bag, which is
    all a vocabulary, a hash or the model's mean over a row's ids sees."""
    with tf.name_scope(name):
        return tf.strings.ngrams(tokens, ngram_widths(n), separator=separator), {}


def bag_of_words(tokens, name: str, n, separator: str = " "):
    """`ngrams`, each distinct n-gram of a row once, in the order of its first occurrence: TFT's
    `tft.bag_of_words` (presence, not counts)."""
    grams, _ = ngrams(tokens, name, n, separator)
    with tf.name_scope(name):
        return first_per_row(grams.flat_values, grams.value_rowids(), grams.nrows()), {}


def first_per_row(values: tf.Tensor, rows: tf.Tensor, nrows: tf.Tensor) -> tf.RaggedTensor:
    """Each row's distinct values (`values` in row order, `rows` their row ids) once, in the order of their first
    occurrence, as a RaggedTensor of `nrows` rows: what TFT's deduplicate_tensor_per_row gives each row (its
    tf.unique), vectorised: one tf.unique over (row, value) keys, each key's first position by a segment minimum."""
    rows = tf.cast(rows, tf.int64)
    _, value_ids = tf.unique(values)
    # one key per (row, value): the first position of each key is where the value first occurs in its row
    keys, key_ids = tf.unique(rows * tf.cast(tf.size(values) + 1, tf.int64) + tf.cast(value_ids, tf.int64))
    first = tf.math.unsorted_segment_min(tf.range(tf.size(key_ids)), key_ids, tf.size(keys))
    return tf.RaggedTensor.from_value_rowids(tf.gather(values, first), tf.gather(rows, first), nrows=nrows)


def deduplicate_sparse_per_row(input_tensor, name=None):
    """TFT's `deduplicate_tensor_per_row` (the last step of `tft.bag_of_words`) for a 2-D SparseTensor, without
    its while loop over rows (SparseSlice and a TensorList of rows of different lengths: no ONNX lowering can
    express it), giving the same SparseTensor (`first_per_row`; tests/onnx_export/test_tft_text_functions.py
    holds the two equal). A user's preprocessing_fn runs with it in TFT's place (tft_features.pipeline); any
    other input goes to TFT's own."""
    if not isinstance(input_tensor, tf.SparseTensor) or input_tensor.dense_shape.shape[0] != 2:
        return TFT_DEDUPLICATE_PER_ROW(input_tensor, name=name)
    with tf.name_scope(name or "deduplicate_per_row"):
        return first_per_row(input_tensor.values, input_tensor.indices[:, 0], input_tensor.dense_shape[0]).to_sparse()


def cross(x: tf.Tensor, name: str, others: dict[str, tf.Tensor], hash_buckets: int):
    """A hashed feature cross (the wide part of wide-and-deep): ids in [0, hash_buckets) of the value of x
    and of each `with` column's raw value, in the config's order, joined by CROSS_SEPARATOR ("_X_", as
    `tf.sparse.cross` joins them) and hashed as `hash_strings` hashes text. For one value per column this is
    `tf.strings.to_hash_bucket_fast(tf.sparse.cross([x, b, c]).values, hash_buckets)`.

    Values that contain the separator can meet: ("a_X_b", "c") and ("a", "b_X_c") are the same cross.
    """
    joined = tf.strings.join([x, *others.values()], separator=CROSS_SEPARATOR)
    return tft.hash_strings(joined, hash_buckets, name=name), {}


# Dates and times. A timestamp inside the transform is int64 whole seconds since 1970-01-01 00:00 UTC
# (FeatureKind.TIMESTAMP; `tfbridge.contracts.model_timestamps` reads the raw column, naive times as UTC), and
# every part is computed in UTC. ONNX has no date ops, so the calendar is integer arithmetic that tf2onnx
# converts: FloorDiv and FloorMod, which onnx_export.lowerings lowers exactly for negative values (days before
# 1970), and Where.
CALENDAR_PARTS = ("year", "month", "day", "weekday", "hour", "day_of_year")
# part -> (first value, values per cycle); day_of_year's cycle is its year's length (365 or 366), None here.
CYCLES = {"month": (1, 12), "day_of_year": (1, None), "weekday": (0, 7), "hour": (0, 24)}
SINCE_UNITS = {"seconds": 1, "minutes": 60, "hours": 3_600, "days": SECONDS_PER_DAY, "weeks": 7 * SECONDS_PER_DAY}
_DAYS_PER_ERA = 146_097  # 400 Gregorian years
_EPOCH_SHIFT = 719_468  # days from 0000-03-01 to 1970-01-01


def calendar_fields(seconds: tf.Tensor) -> dict[str, tf.Tensor]:
    """The UTC calendar of int64 epoch seconds, as int64 tensors: year, month (1-12), day (1-31), weekday (Monday
    0 to Sunday 6, as pandas' `.dt.weekday`), hour (0-23), day_of_year (1-366) and leap (1 in a leap year).

    Howard Hinnant's civil_from_days ("chrono-Compatible Low-Level Date Algorithms"): days are counted from
    0000-03-01 in eras of 400 years (146,097 days), so February, with the leap day, ends each computed year;
    the day of the era gives the year of the era, the day of that March-based year, the month and the day.
    Days and eras are floor divisions, so a time before 1970 (negative seconds) falls on the right day:
    1969-12-31 23:59:59 is -1 s, day -1, hour 23.
    """
    days = seconds // SECONDS_PER_DAY
    second_of_day = seconds - days * SECONDS_PER_DAY
    shifted = days + _EPOCH_SHIFT
    era = shifted // _DAYS_PER_ERA
    day_of_era = shifted - era * _DAYS_PER_ERA  # [0, 146096]
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365  # [0, 399]
    day_from_march = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)  # [0, 365]
    month_from_march = (5 * day_from_march + 2) // 153  # [0, 11]: March is 0
    day = day_from_march - (153 * month_from_march + 2) // 5 + 1
    month = tf.where(month_from_march < 10, month_from_march + 3, month_from_march - 9)
    year = year_of_era + era * 400 + tf.cast(month <= 2, tf.int64)
    leap = tf.cast(tf.logical_or(tf.logical_and(tf.equal(year % 4, 0), tf.not_equal(year % 100, 0)),
                                 tf.equal(year % 400, 0)), tf.int64)
    # 1 March is day 60 (61 in a leap year); January and February end the March-based year at 306..365.
    day_of_year = tf.where(month >= 3, day_from_march + 60 + leap, day_from_march - 305)
    return {"year": year, "month": month, "day": day, "weekday": (days + 3) % 7,  # 1970-01-01 was a Thursday
            "hour": second_of_day // 3_600, "day_of_year": day_of_year, "leap": leap}


def calendar(x: tf.Tensor, name: str, parts):
    """Calendar parts of a timestamp in UTC (see calendar_fields), as float32: a number for one part, else a
    vector in the order given."""
    del name
    fields = calendar_fields(x)
    values = [tf.cast(fields[part], tf.float32) for part in parts]
    if len(values) == 1:
        return values[0], {}
    return tf.stack(values, axis=1), {"terms": list(parts)}


def cyclical(x: tf.Tensor, name: str, parts):
    """Each part as a point on the unit circle, [sin, cos] of 2 pi (part - first) / cycle, as a float32 vector of
    2 per part in the order given: month (1-12 over 12), day_of_year (1 to 365 or 366 over its year's length, so
    31 December and 1 January are neighbours in every year), weekday (over 7), hour (over 24). Computed in
    float64 and rounded once to float32 (see in_float64); a point on an axis is exactly 0 (`_on_axis_as_zero`)."""
    del name
    fields = calendar_fields(x)
    columns, terms = [], []
    for part in parts:
        first, cycle = CYCLES[part]
        length = 365 + fields["leap"] if cycle is None else cycle
        angle = 2 * math.pi * tf.cast(fields[part] - first, tf.float64) / tf.cast(length, tf.float64)
        columns += [_on_axis_as_zero(tf.sin(angle)), _on_axis_as_zero(tf.cos(angle))]
        terms += [f"sin {part}", f"cos {part}"]
    return tf.cast(tf.stack(columns, axis=1), tf.float32), {"terms": terms}


def _on_axis_as_zero(v: tf.Tensor) -> tf.Tensor:
    """0 where a sine or cosine is 0 in exact arithmetic (a quarter, half or three-quarter turn), where float64
    gives a residue (sin(pi) = 1.2e-16) that differs by engine: onnxruntime's vectorised Sin and Cos gave 0 and
    -0 where TF gave 1.2e-16 and -1.8e-16, which a tree split between them told apart. The smallest true value
    of another part is sin(2 pi / 366) = 0.017."""
    return tf.where(tf.abs(v) < 1e-9, tf.zeros_like(v), v)


def since(x: tf.Tensor, name: str, reference: str = "1970-01-01", unit: str = "days"):
    """Time elapsed from `reference` (ISO 8601, read as the data are: UTC unless it has a zone) in `unit`
    (SINCE_UNITS), negative before it: whole seconds subtracted exactly in int64, divided in float64 and rounded
    once to float32, which keeps about 7 significant digits (10,000 days to a minute or two)."""
    del name
    start = reference_seconds(reference)
    elapsed = tf.cast(x - start, tf.float64) / float(SINCE_UNITS[unit])
    return tf.cast(elapsed, tf.float32), {"reference_seconds": tf.constant(start, tf.int64)}


def reference_seconds(reference: str) -> int:
    """A config's date or time (ISO 8601 text) as epoch seconds, read as the data's text is read (model_timestamps);
    DataError when it does not read."""
    import pyarrow as pa

    return int(model_timestamps(pa.array([reference], pa.string()), "reference", "in the config")[0])
