"""A raw column: its name inside the graphs, its type there, whether it may be missing, and how values read.

The stages agree on these rules so that training and scoring read a table alike: the feature stage
(Beam), the SavedModel and ONNX signatures, and the Spark scorer all go through them.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import unicodedata

import numpy as np

from tfbridge.contracts.errors import ConfigError, DataError

# In a CSV number column these fields are missing values (R writes NA, pandas an empty field); in a
# string column every field is text, and only an empty one is missing (see README, "Empty strings").
CSV_NULL_VALUES = ("", "NA", "N/A", "NaN", "nan", "null", "NULL")


# normalize_text's passes after lower-casing, shared by the transform, its ONNX lowering and the scorer's
# self-check (README, "Transforms": what each does to which text, and why).
# Unicode lower-casing in ONNX: StringNormalizer in this locale (C.UTF-8: glibc's Unicode case mapping; "C"
# is ASCII-only). A host without it makes onnxruntime stop with an error naming the locale, never lower wrongly.
TEXT_CASE_LOCALE = "C.UTF-8"
# TF lower-cases a final capital sigma to ς, onnxruntime to σ (no context): every sigma becomes σ in both.
SIGMA_FOLD = ("ς", "σ")
# Deleted, not spaced: apostrophes (don't, don’t -> dont), and U+0307 COMBINING DOT ABOVE, which TF's
# lower-casing adds to İ (i + U+0307, Unicode's full mapping) where onnxruntime gives i: İ -> i in both.
DELETED_CHARACTERS = "['\u2018\u2019\u02bc\u0307]"
# Punctuation and symbols become spaces: Unicode's punctuation (P*), math, currency and modifier symbols
# (Sm, Sc, Sk: ASCII's $+<=>^`|~ are among them), and whitespace (Z*, tab, newline, CR, VT, FF, U+0085:
# Unicode's White_Space). Other symbols (emoji) stay in the text. Whitespace becomes a space in this
# same pass: the split does not change, and the ONNX export, whose split breaks on spaces only, needs no
# replace pass of its own (onnx_export.lowerings.string_split_v2).
# One literal class of Unicode 14.0's categories (Python 3.11's tables), below U+20000 (planes 2 to 16 hold
# none of them): the same tokens whichever Python builds the transform (3.10 to 3.12 carry Unicode 13 to 15),
# and the same class in TensorFlow's RE2, onnxruntime-extensions' RE2 (which disagree on `\p{P}\p{S}`) and
# Python's `re` (the self-check's reference). tests/onnx_export/test_unicode_text.py derives it again.
PUNCTUATION_UNICODE_VERSION = "14.0.0"
PUNCTUATION_AND_WHITESPACE = (
    "[\\x09-\\x0d -\\/\\:-\\@\\[-\\`\\{-\\~\\x85\\xa0-\xa5\xa7-\xa8\xab-\xac\xaf\xb1\xb4\xb6-\xb8\xbb\xbf"
    "\xd7\xf7\u02c2-\u02c5\u02d2-\u02df\u02e5-\u02eb\u02ed\u02ef-\u02ff\u0375\u037e\u0384-\u0385\u0387"
    "\u03f6\u055a-\u055f\u0589-\u058a\u058f\u05be\u05c0\u05c3\u05c6\u05f3-\u05f4\u0606-\u060d\u061b\u061d"
    "-\u061f\u066a-\u066d\u06d4\u0700-\u070d\u07f7-\u07f9\u07fe-\u07ff\u0830-\u083e\u085e\u0888\u0964-"
    "\u0965\u0970\u09f2-\u09f3\u09fb\u09fd\u0a76\u0af0-\u0af1\u0bf9\u0c77\u0c84\u0df4\u0e3f\u0e4f\u0e5a-"
    "\u0e5b\u0f04-\u0f12\u0f14\u0f3a-\u0f3d\u0f85\u0fd0-\u0fd4\u0fd9-\u0fda\u104a-\u104f\u10fb\u1360-"
    "\u1368\u1400\u166e\u1680\u169b-\u169c\u16eb-\u16ed\u1735-\u1736\u17d4-\u17d6\u17d8-\u17db\u1800-"
    "\u180a\u1944-\u1945\u1a1e-\u1a1f\u1aa0-\u1aa6\u1aa8-\u1aad\u1b5a-\u1b60\u1b7d-\u1b7e\u1bfc-\u1bff"
    "\u1c3b-\u1c3f\u1c7e-\u1c7f\u1cc0-\u1cc7\u1cd3\u1fbd\u1fbf-\u1fc1\u1fcd-\u1fcf\u1fdd-\u1fdf\u1fed-"
    "\u1fef\u1ffd-\u1ffe\u2000-\u200a\u2010-\u2029\u202f-\u205f\u207a-\u207e\u208a-\u208e\u20a0-\u20c0"
    "\u2118\u2140-\u2144\u214b\u2190-\u2194\u219a-\u219b\u21a0\u21a3\u21a6\u21ae\u21ce-\u21cf\u21d2\u21d4"
    "\u21f4-\u22ff\u2308-\u230b\u2320-\u2321\u2329-\u232a\u237c\u239b-\u23b3\u23dc-\u23e1\u25b7\u25c1"
    "\u25f8-\u25ff\u266f\u2768-\u2775\u27c0-\u27ff\u2900-\u2aff\u2b30-\u2b44\u2b47-\u2b4c\u2cf9-\u2cfc"
    "\u2cfe-\u2cff\u2d70\u2e00-\u2e2e\u2e30-\u2e4f\u2e52-\u2e5d\u3000-\u3003\u3008-\u3011\u3014-\u301f"
    "\u3030\u303d\u309b-\u309c\u30a0\u30fb\ua4fe-\ua4ff\ua60d-\ua60f\ua673\ua67e\ua6f2-\ua6f7\ua700-"
    "\ua716\ua720-\ua721\ua789-\ua78a\ua838\ua874-\ua877\ua8ce-\ua8cf\ua8f8-\ua8fa\ua8fc\ua92e-\ua92f"
    "\ua95f\ua9c1-\ua9cd\ua9de-\ua9df\uaa5c-\uaa5f\uaade-\uaadf\uaaf0-\uaaf1\uab5b\uab6a-\uab6b\uabeb"
    "\ufb29\ufbb2-\ufbc2\ufd3e-\ufd3f\ufdfc\ufe10-\ufe19\ufe30-\ufe52\ufe54-\ufe66\ufe68-\ufe6b\uff01-"
    "\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\uffe0-\uffe3\uffe5-\uffe6\uffe9-\uffec\U00010100-"
    "\U00010102\U0001039f\U000103d0\U0001056f\U00010857\U0001091f\U0001093f\U00010a50-\U00010a58"
    "\U00010a7f\U00010af0-\U00010af6\U00010b39-\U00010b3f\U00010b99-\U00010b9c\U00010ead\U00010f55-"
    "\U00010f59\U00010f86-\U00010f89\U00011047-\U0001104d\U000110bb-\U000110bc\U000110be-\U000110c1"
    "\U00011140-\U00011143\U00011174-\U00011175\U000111c5-\U000111c8\U000111cd\U000111db\U000111dd-"
    "\U000111df\U00011238-\U0001123d\U000112a9\U0001144b-\U0001144f\U0001145a-\U0001145b\U0001145d"
    "\U000114c6\U000115c1-\U000115d7\U00011641-\U00011643\U00011660-\U0001166c\U000116b9\U0001173c-"
    "\U0001173e\U0001183b\U00011944-\U00011946\U000119e2\U00011a3f-\U00011a46\U00011a9a-\U00011a9c"
    "\U00011a9e-\U00011aa2\U00011c41-\U00011c45\U00011c70-\U00011c71\U00011ef7-\U00011ef8\U00011fdd-"
    "\U00011fe0\U00011fff\U00012470-\U00012474\U00012ff1-\U00012ff2\U00016a6e-\U00016a6f\U00016af5"
    "\U00016b37-\U00016b3b\U00016b44\U00016e97-\U00016e9a\U00016fe2\U0001bc9f\U0001d6c1\U0001d6db"
    "\U0001d6fb\U0001d715\U0001d735\U0001d74f\U0001d76f\U0001d789\U0001d7a9\U0001d7c3\U0001da87-"
    "\U0001da8b\U0001e2ff\U0001e95e-\U0001e95f\U0001ecb0\U0001eef0-\U0001eef1\U0001f3fb-\U0001f3ff]")

# TFT writes a string vocabulary as a text file, one value per line, and leaves out every value with a
# line break (tensorflow_transform.analyzers, _EMPTY_STRING_OR_NEWLINE_CHARS_REGEX): such a category would
# be out of vocabulary. The vocabulary step reads categories through these two passes first: CR -> \r,
# LF -> \n and a backslash -> \\r, a code with no line break whose values decode one way only (at a
# backslash, the next character says which of the three it was), in two passes where plain escaping
# takes three. A category with no backslash or line break is unchanged.
VOCABULARY_ESCAPES = ((r"(\\)|\r", r"\\\1r"), ("\n", r"\\n"))
# TFT leaves the empty string out too (the same regex), so the category "" would be out of vocabulary: after
# the passes above it becomes VOCABULARY_EMPTY, a backslash and `0`, which no other value becomes (there
# every backslash is followed by `r`, `n` or a backslash). An equality and a select, not a regex pass: it
# lowers to ONNX as StringEqual + Where.
VOCABULARY_EMPTY = r"\0"
_VOCABULARY_UNESCAPES = {"\\r": "\\", "r": "\r", "n": "\n"}


def vocabulary_value(line: str) -> str:
    """A category as it was, from its line of a vocabulary file (VOCABULARY_ESCAPES and VOCABULARY_EMPTY
    undone); a token, which has no backslash, is unchanged."""
    if line == VOCABULARY_EMPTY:
        return ""
    return re.sub(r"\\(\\r|[rn])", lambda m: _VOCABULARY_UNESCAPES[m.group(1)], line)

RAW_DTYPES = ("float", "int", "string", "timestamp")

# Every hard and soft keyword of Python 3.10 to 3.13, written out: a graph input name must not depend on the
# Python that computes it (`keyword.issoftkeyword("type")` is False on 3.11 and True on 3.12), or a model made
# on one version would be fed under other names on another.
PYTHON_KEYWORDS = frozenset({
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
    "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda",
    "nonlocal", "not", "or", "pass", "raise", "return", "try", "while", "with", "yield",
    "_", "case", "match", "type",
})
# Not keywords, but a signature's parameter names in TF: a serving input `self` made tf.saved_model.save fail
# ("got multiple values for argument 'self'").
SIGNATURE_RESERVED = frozenset({"self"})


@dataclasses.dataclass(frozen=True)
class RawColumn:
    """A column of the user's table as the transform reads it and the exported models take it.

    dtype: "float" (float32 in the graphs, read by `model_numbers`), "int" (int64), "string", or
    "timestamp" (a date or time: float64 seconds since 1970-01-01 00:00 UTC in the graphs, read by
    `model_timestamps`), one value per row. A nullable column keeps its missing values for the transform to
    impute: a model takes NaN (numbers, timestamps) or "" (strings) for one. Elsewhere a missing number or
    timestamp is an error and a missing string is "".
    `above`: its feature steps take only values above it (box_cox: 0, log1p: -1), compared after
    `model_numbers`; a scorer stops on any other value, as the feature stage did.
    `datetime_format`: a timestamp column given as text is read with this strptime format (the config's
    `datetime: {format: ...}`); None: ISO 8601.
    """

    name: str  # as the data names it
    dtype: str  # one of RAW_DTYPES
    nullable: bool
    above: float | None = None
    datetime_format: str | None = None

    @property
    def graph_name(self) -> str:
        """Its name inside the transform and the signatures (`graph_input_name`)."""
        return graph_input_name(self.name)


FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32


def model_numbers(values: np.ndarray, column: str, where: str) -> np.ndarray:
    """Raw numbers (float64, NaN where missing) as every engine feeds them to the graphs: float32.

    One rule for the feature stage, the SavedModel, ONNX and Spark. NaN and ±inf are missing (NaN): an
    infinity would poison a mean, a range or a prediction. A finite value beyond float32's range
    (|x| > 3.4028235e38) is a DataError naming the column and `where` (it would become inf). Any other
    value rounds to the nearest float32: integers above 2**24 too (callers reach float64 first, as
    Spark and CSV readers do). A value below float32's smallest normal (|x| < 1.2e-38) becomes 0:
    TensorFlow's CPU kernels flush such values to 0 and onnxruntime's would not.
    """
    finite = np.isfinite(values)
    magnitude = np.abs(values)
    too_big = finite & (magnitude > FLOAT32_MAX)
    if too_big.any():
        raise DataError(f"column '{column}' {where} has the value {float(values[too_big][0])!r}, beyond float32's "
                        f"range (±{FLOAT32_MAX:.8g}) in which the models compute: scale the column first (e.g. "
                        f"to thousands, or its logarithm)")
    return np.where(finite, np.where(magnitude < FLOAT32_TINY, 0.0, values), np.nan).astype(np.float32)


SECONDS_PER_DAY = 86_400
# The dates a timestamp column may hold, as Python's datetime and Spark hold them: 0001-01-01T00:00:00Z to
# 9999-12-31T23:59:59Z, in seconds since 1970-01-01T00:00:00Z.
TIMESTAMP_RANGE = (-62_135_596_800, 253_402_300_799)
# An ISO 8601 time of day with a zone (`Z`, `+01:00`, `-0500`): such text is read as that instant.
_ISO_ZONE = r"[T ]\d\d(:\d\d){0,2}(\.\d+)?(Z|[+-]\d\d(:?\d\d)?)$"
_UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def model_timestamps(values, column: str, where: str, datetime_format: str | None = None) -> np.ndarray:
    """Dates and times (an Arrow array) as every engine feeds them to the graphs: float64 whole seconds since
    1970-01-01 00:00:00 UTC, NaN where missing.

    One rule for the feature stage and every scorer (README, "Dates and times"): a date (date32, date64) is
    its midnight UTC; a zone-aware timestamp is its instant (Arrow holds it in UTC); a naive timestamp is
    read as UTC, whatever the host's zone; fractions of a second are dropped toward the past (floor, so
    1969-12-31 23:59:59.5 is -1, not 0). Text is read with `datetime_format` (strptime: `%Y-%m-%d %H:%M:%S`;
    `%z` reads a zone), or without one as ISO 8601 (`2024-01-31`, `2024-01-31 13:45:00`, `...T13:45:00Z`,
    `...+01:00`); empty text and CSV_NULL_VALUES are missing. Text that does not read, or a date outside
    TIMESTAMP_RANGE (years 1 to 9999), is a DataError naming the column, `where` and the value.

    float64, not int64: a missing value travels as NaN, as it does for numbers, and float64 holds every whole
    second of those years exactly (|t| < 2**53).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        values = _parsed_text(values, column, where, datetime_format)
    if pa.types.is_date32(values.type):
        counts, per_second = pc.cast(values, pa.int32()), 1 / SECONDS_PER_DAY
    elif pa.types.is_date64(values.type) or pa.types.is_timestamp(values.type):
        counts = values.view(pa.int64())
        per_second = 1_000 if pa.types.is_date64(values.type) else _UNITS_PER_SECOND[values.type.unit]
    else:
        raise DataError(f"column '{column}' {where} has type {values.type}; expected dates, times or text")
    missing = pc.is_null(values).to_numpy(zero_copy_only=False)
    counts = pc.fill_null(pc.cast(counts, pa.int64()), 0).to_numpy(zero_copy_only=False)
    seconds = counts * SECONDS_PER_DAY if per_second < 1 else np.floor_divide(counts, per_second)
    outside = ~missing & ((seconds < TIMESTAMP_RANGE[0]) | (seconds > TIMESTAMP_RANGE[1]))
    if outside.any():
        year = 1970 + seconds[int(np.argmax(outside))] / 31_556_952  # seconds in a mean Gregorian year
        raise DataError(f"column '{column}' {where} has a value in the year {year:.0f}, outside the years 1 to 9999 "
                        f"that dates and times may hold")
    return np.where(missing, np.nan, seconds.astype(np.float64))


def _parsed_text(values, column: str, where: str, datetime_format: str | None):
    """Text as timestamps (see model_timestamps): null where it is empty or a CSV missing-value word."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.if_else(pc.is_in(values, pa.array(CSV_NULL_VALUES, values.type)), pa.scalar(None, values.type),
                      values)
    if datetime_format is not None:
        parsed = pc.strptime(text, format=datetime_format, unit="us", error_is_null=True)
        failed = pc.and_(pc.is_valid(text), pc.is_null(parsed))
        # Arrow rolls an impossible date over (31/02/2020 -> 2 March): a value that does not print back as written
        # (also 1/2/2020, unpadded) is checked by Python's strptime, which refuses those.
        printed = pc.strftime(parsed, format=datetime_format)
        suspects = text.filter(pc.and_(pc.is_valid(parsed), pc.not_equal(printed, text))).unique().to_pylist()
        bad = [value for value in suspects if not _strptime_reads(value, datetime_format)]
        if pc.any(failed).as_py() or bad:
            value = text.filter(failed)[0].as_py() if pc.any(failed).as_py() else bad[0]
            raise DataError(f"column '{column}' {where} has the value {value!r}, which does not read as its datetime "
                            f"format {datetime_format!r}")
        return parsed
    zoned = pc.fill_null(pc.match_substring_regex(text, _ISO_ZONE), False)
    null = pa.scalar(None, text.type)
    try:
        naive = pc.cast(pc.if_else(zoned, null, text), pa.timestamp("us")).view(pa.int64())
        aware = pc.cast(pc.if_else(zoned, text, null), pa.timestamp("us", "UTC")).view(pa.int64())
    except pa.ArrowInvalid as e:
        found = re.search(r"Failed to parse string: '(.*?)' as a scalar", str(e))
        raise DataError(f"column '{column}' {where} has the value {found.group(1) if found else '?'!r}, which is "
                        f"not an ISO 8601 date or time (2024-01-31, 2024-01-31 13:45:00, 2024-01-31T13:45:00+01:00): "
                        f"give the column's format, features: {{{column}: {{datetime: {{format: \"%d/%m/%Y\"}}, "
                        f"steps: [...]}}}}") from None
    return pc.if_else(zoned, aware, naive).view(pa.timestamp("us"))


def _strptime_reads(text: str, datetime_format: str) -> bool:
    try:
        datetime.datetime.strptime(text, datetime_format)
    except ValueError:
        return False
    return True


def model_text(values, column: str, where: str):
    """Raw strings (an Arrow string array) as every engine feeds them to the graphs: null is "", and text is
    in Unicode NFC; a NUL character is a DataError naming the column and `where` (`refuse_nul`).

    One rule for the feature stage and every scorer: a composed `é` (U+00E9) and a decomposed one (e +
    U+0301) are one category and one token. Neither TF nor ONNX can normalise inside a graph, so the
    graphs expect NFC text, and whoever feeds them directly gives it. Python's `unicodedata` composes:
    pyarrow 25's `utf8_normalize` returns decomposed text for every form (apache/arrow#51225). ASCII
    text is NFC as it is, so only the other values go through Python, and the array is rebuilt only when
    one of them changes.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    values = pc.fill_null(values, "")
    refuse_nul(values, column, where)
    other = pc.invert(pc.string_is_ascii(values))
    if not pc.any(other).as_py():
        return values
    texts = values.filter(other).to_pylist()
    composed = [unicodedata.normalize("NFC", text) for text in texts]
    if composed == texts:
        return values
    return pc.replace_with_mask(values, other, pa.array(composed, values.type))


def refuse_nul(values, column: str, where: str) -> None:
    """A DataError where a string (Arrow) holds the NUL character U+0000: onnxruntime-extensions' text ops (the
    regex passes of normalize_text, the hash of hash, cross and OOV buckets) read a string up to its first NUL
    and TensorFlow reads all of it, so the two graphs would give the same row different features."""
    import pyarrow.compute as pc

    has_nul = pc.match_substring(values, "\x00")
    if pc.any(has_nul).as_py():
        value = values[pc.index(has_nul, True).as_py()].as_py()
        raise DataError(f"column '{column}' has a NUL character (U+0000) {where}, e.g. {value[:40]!r}: the "
                        f"exported graph reads text only up to a NUL, TensorFlow all of it; remove NUL characters "
                        f"from the data")


def graph_input_name(column: str) -> str:
    """The name a raw column has inside the transform, the SavedModel signature and the ONNX graph.

    The user's column names are theirs (`Home Team`, `sample.yr`, `price ($)`, `2nd_visit`, `class`,
    `Größe`, `価格`); TF accepts only some names (the signature lower-cases them, a Python keyword is
    not a valid parameter name, an op name cannot hold spaces). Inside, a column is lower-case ASCII
    letters, digits and single underscores, starting with a letter and never one of PYTHON_KEYWORDS
    (`class` -> `c_class`, `type` -> `c_type`, `match` -> `c_match`, `_` -> `c`), whichever Python runs,
    nor SIGNATURE_RESERVED (`self` -> `c_self`):
    accents are dropped, other letters become their code point (`u4fa1`), anything else `_`. The
    manifests map each raw column to it, and every consumer feeds the graph through that mapping.
    """
    letters = []
    for char in unicodedata.normalize("NFKD", column.lower()):
        if unicodedata.category(char) == "Mn":  # accents: é -> e
            continue
        if char.isascii():
            letters.append(char if char.isalnum() else "_")
        else:  # other scripts keep their identity: 価格 -> u4fa1_u683c, ß -> udf
            letters.append(f"_u{ord(char):x}_" if char.isalnum() else "_")
    name = re.sub(r"_+", "_", "".join(letters)).strip("_")
    if not name or not name[0].isalpha() or name in PYTHON_KEYWORDS or name in SIGNATURE_RESERVED:
        name = f"c_{name}".rstrip("_")
    return name


def graph_input_names(columns, where: str) -> dict[str, str]:
    """{column: graph_input_name(column)}; ConfigError naming both columns when two map to one name."""
    names: dict[str, str] = {}
    taken: dict[str, str] = {}
    for column in columns:
        name = graph_input_name(column)
        if name in taken and taken[name] != column:
            raise ConfigError(f"{where}: columns '{taken[name]}' and '{column}' both become '{name}' inside the "
                              f"model (names are lower-cased and punctuation becomes '_'); rename one of them")
        taken[name] = column
        names[column] = name
    return names
