"""The registry of transform steps: every fact about a step of the config's `features:` on its entry.

A step's entry says what it accepts and produces (a `FeatureKind`), its parameters and their checks,
how the raw column must be read when it comes first, the numbers it can take (its `Domain`) and what it
needs of its input to keep a next step's, whether it needs an analysis pass, and how it is built from a
mapper (`mappers`, per row) or an analyzer (`analyzers`, full pass). `preprocessing` plans
and builds chains from these entries alone; no step is special-cased elsewhere.

Kinds, as in `tfbridge.contracts.FeatureKind`:

  number    float32 [batch]            text       string [batch]
  tokens    ragged string [batch, *]   ids        int64 [batch]
  token_ids ragged int64 [batch, *]    vector     float32 [batch, k]
  timestamp int64 [batch]: whole seconds since 1970-01-01 00:00 UTC (a raw date or time)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import tensorflow as tf

from tfbridge.contracts import DataError, FeatureKind, graph_input_name
from tft_features import analyzers, mappers

NUMBER, TEXT, TOKENS = FeatureKind.NUMBER, FeatureKind.TEXT, FeatureKind.TOKENS
IDS, TOKEN_IDS, VECTOR = FeatureKind.IDS, FeatureKind.TOKEN_IDS, FeatureKind.VECTOR
TIMESTAMP = FeatureKind.TIMESTAMP
_NUMERIC = (int, float)
MAX_NGRAM = 8  # the widest n-gram: each width adds a string join of the row's tokens to the graph
MAX_TFIDF_WIDTH = 5_000  # tfidf is dense: each row holds this many float32 weights in the shards (20 KB)


@dataclasses.dataclass(frozen=True)
class StepKind:
    """What a step accepts and produces; `width` is the id range it yields, when known."""

    kind: FeatureKind
    width: int | None = None


@dataclasses.dataclass(frozen=True)
class StepInput:
    """What a step's builder is given besides the tensor it transforms."""

    scope: str  # a name unique to this step of this column, for its analyzers
    params: Mapping[str, Any]
    column: str  # the user's name for the column
    incoming: StepKind  # what the step before it produced
    raw: Mapping[str, Any]  # every raw input by graph input name, [batch, 1] (partners: polynomial's, cross's)


Params = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Domain:
    """The values a step can take: all above `above` (after the float32 rounding of `model_numbers`)."""

    above: float
    advice: str  # what to do about a value outside it


@dataclasses.dataclass(frozen=True)
class RawDomain:
    """What a column's raw values must be for its chain's domains to hold (`preprocessing` derives it): all
    above `above`, after float32 rounding (`model_numbers`); the input check enforces it."""

    above: float
    needs: str  # which step needs it and what to do otherwise, for the data check's message


def _any_value(params: Params, bound: float) -> float | None:
    """For `StepDef.input_above`: a step whose output can be at or below any bound, whatever its input."""
    return None


@dataclasses.dataclass(frozen=True)
class StepDef:
    """One transform step. Parameters are checked when the config is read, before any data is touched."""

    name: str  # the config's word
    accepts: tuple[FeatureKind, ...]
    params: tuple[str, ...]  # allowed parameter names
    result: Callable[[StepKind, Params], StepKind]
    build: Callable[[Any, StepInput], tuple[Any, dict]]  # (output, statistics for stats.json)
    full_pass: Callable[[Params], bool]  # needs an analysis pass over the train split
    problem: Callable[[Params, StepKind], str | None] = lambda params, incoming: None  # what is wrong, if anything
    reads: Callable[[Params], str | None] = lambda params: "float"  # raw type when first; None: the next step's
    short: str | None = None  # the parameter a bare value stands for: {impute: mean} is {impute: {strategy: mean}}
    fills_missing: bool = False  # must come first: the raw column keeps its missing values for this step
    domain: Domain | None = None  # None: any number
    # For a next step's domain: given that this step's output must be above `bound`, the bound its own input must
    # be above (-inf: any input will do), or None when it can give a value at or below `bound` whatever its input.
    input_above: Callable[[Params, float], float | None] = _any_value
    partners: Callable[[Params], tuple[str, ...]] = lambda params: ()  # other raw columns it reads
    partner_reads: str = "float"  # how it reads them: "float" (numbers) or "string" (text), never imputed
    # A next step (by name) built together with this one, in this one's analysis pass: what the pair builds.
    fused: Mapping[str, Callable[[Any, StepInput], tuple[Any, dict]]] = dataclasses.field(default_factory=dict)


def _always(params: Params) -> bool:
    return True


def _never(params: Params) -> bool:
    return False


def _to(kind: FeatureKind) -> Callable[[StepKind, Params], StepKind]:
    return lambda incoming, params: StepKind(kind)


def _same_kind(incoming: StepKind, params: Params) -> StepKind:
    return incoming


def _reads_string(params: Params) -> str:
    return "string"


def _reads_timestamp(params: Params) -> str:
    return "timestamp"


def _mapper(fn) -> Callable[[Any, StepInput], tuple[Any, dict]]:
    """A step whose function takes (x, scope, **params): every mapper and analyzer but the two below."""
    return lambda x, step: fn(x, step.scope, **step.params)


# --- per-step parameter checks ------------------------------------------------------------------

def _threshold_problem(p: Params, incoming: StepKind) -> str | None:
    return None if isinstance(p.get("value"), _NUMERIC) else "needs a numeric threshold, e.g. {threshold: 0.5}"


def _clip_problem(p: Params, incoming: StepKind) -> str | None:
    return None if any(isinstance(p.get(k), _NUMERIC) for k in ("min", "max")) else "needs a numeric 'min', 'max' or both"


def _min_max_problem(p: Params, incoming: StepKind) -> str | None:
    bounds = {key: p.get(key, default) for key, default in (("output_min", 0.0), ("output_max", 1.0))}
    for key, value in bounds.items():
        if not (isinstance(value, _NUMERIC) and not isinstance(value, bool) and math.isfinite(value)):
            return f"{key} must be a finite number, got {value!r}"
    return None if bounds["output_min"] < bounds["output_max"] else "output_min must be below output_max"


def _normalize_text_problem(p: Params, incoming: StepKind) -> str | None:
    try:
        mappers.stop_words(p.get("stopwords", "english"))
    except ValueError as e:
        return str(e)
    return None


def _polynomial_problem(p: Params, incoming: StepKind) -> str | None:
    others = p.get("with", [])
    if not isinstance(others, list) or not all(isinstance(o, str) for o in others):
        return "'with' must be a list of column names"
    if not (isinstance(p.get("degree", 2), int) and p.get("degree", 2) >= 1):
        return f"degree must be a positive integer, got {p.get('degree')!r}"
    return None


def _buckets_problem(key: str) -> Callable[[Params, StepKind], str | None]:
    def problem(p: Params, incoming: StepKind) -> str | None:
        n = p.get(key)
        return None if isinstance(n, int) and not isinstance(n, bool) and n >= 2 else \
            f"{key} must be an integer >= 2 (the ids' range), got {n!r}"
    return problem


def _ngrams_problem(p: Params, incoming: StepKind) -> str | None:
    n = p.get("n")
    whole = isinstance(n, int) and not isinstance(n, bool)
    pair = isinstance(n, list) and len(n) == 2 and all(isinstance(w, int) and not isinstance(w, bool) for w in n)
    if not (whole and 1 <= n <= MAX_NGRAM or pair and 1 <= n[0] <= n[1] <= MAX_NGRAM):
        return f"n must be a width or an inclusive range of widths between 1 and {MAX_NGRAM} (2 or [1, 2]), got {n!r}"
    if not isinstance(p.get("separator", " "), str):
        return f"separator must be a string, got {p.get('separator')!r}"
    return None


def _tfidf_problem(p: Params, incoming: StepKind) -> str | None:
    if incoming.width is None:
        return ("needs the ids' range: give the vocabulary before it a top_k (or hash the tokens), e.g. "
                "[normalize_text, {vocabulary: {top_k: 5000}}, tfidf]")
    if incoming.width > MAX_TFIDF_WIDTH:
        return f"makes a vector of {incoming.width:,} weights per row; at most {MAX_TFIDF_WIDTH:,}: lower top_k"
    if not isinstance(p.get("smooth", True), bool):
        return f"smooth must be true or false, got {p.get('smooth')!r}"
    return None


def _build_tfidf(x, step: StepInput):
    return analyzers.tfidf(x, step.scope, step.incoming.width, **step.params)


def _cross_problem(p: Params, incoming: StepKind) -> str | None:
    others = p.get("with")
    if not (isinstance(others, list) and others and all(isinstance(o, str) for o in others)):
        return f"'with' must be a non-empty list of the text columns to cross with, got {others!r}"
    return _buckets_problem("hash_buckets")(p, incoming)


def _one_hot_problem(p: Params, incoming: StepKind) -> str | None:
    if p.get("depth") or incoming.width:
        return None
    return "one_hot needs a fixed width: give vocabulary a top_k, or one_hot a depth"


def _per_problem(p: Params, incoming: StepKind) -> str | None:
    """`per`: the raw text column whose values key the statistics (z_score, min_max, bucketize by key)."""
    if "per" not in p:
        return None
    if not (isinstance(p["per"], str) and p["per"]):
        return f"per must be the name of the column that keys the statistics, got {p['per']!r}"
    return None if incoming.kind == NUMBER else f"per needs a number, but the step before it gives {incoming.kind}"


def _bucketize_problem(p: Params, incoming: StepKind) -> str | None:
    if "per" in p and "num_buckets" not in p:
        return "per needs num_buckets (quantiles of each key's values), not fixed boundaries"
    if ("num_buckets" in p) == ("boundaries" in p):
        return "give either num_buckets (quantiles) or boundaries (fixed), not both"
    if "num_buckets" in p and not (isinstance(p["num_buckets"], int) and p["num_buckets"] >= 2):
        return f"num_buckets must be an integer >= 2, got {p['num_buckets']!r}"
    bounds = p.get("boundaries")
    if bounds is not None and not (isinstance(bounds, list) and bounds and all(isinstance(b, _NUMERIC) for b in bounds)
                                   and all(a < b for a, b in zip(bounds, bounds[1:]))):
        return f"boundaries must be a non-empty, strictly increasing list of numbers, got {bounds!r}"
    return None


def _piecewise_linear_problem(p: Params, incoming: StepKind) -> str | None:
    n = p.get("num_buckets")
    return None if isinstance(n, int) and not isinstance(n, bool) and n >= 2 else \
        f"num_buckets must be an integer >= 2, got {n!r}"


def _vocabulary_problem(p: Params, incoming: StepKind) -> str | None:
    for key in ("top_k", "frequency_threshold", "num_oov_buckets"):
        if key in p and not (isinstance(p[key], int) and p[key] >= 0):
            return f"{key} must be a non-negative integer, got {p[key]!r}"
    return None


_IMPUTE_STRATEGIES = ("mean", "median", "most_frequent", "constant")


def _impute_problem(p: Params, incoming: StepKind) -> str | None:
    if p.get("strategy") not in _IMPUTE_STRATEGIES:
        return f"strategy must be mean, median, most_frequent or constant, got {p.get('strategy')!r}"
    if p["strategy"] == "constant" and "value" not in p:
        return "constant needs a 'value'"
    if p["strategy"] in ("mean", "median") and incoming.kind == TEXT:
        return f"{p['strategy']} needs numbers or dates; for text use most_frequent or constant"
    if p["strategy"] == "constant" and incoming.kind == TIMESTAMP:
        return _date_problem(p["value"], "value")
    return None


# --- dates and times --------------------------------------------------------------------------------

def _parts_problem(known: tuple[str, ...]) -> Callable[[Params, StepKind], str | None]:
    def problem(p: Params, incoming: StepKind) -> str | None:
        parts = p.get("parts")
        if not (isinstance(parts, list) and parts and all(part in known for part in parts)
                and len(set(parts)) == len(parts)):
            return f"parts must be a non-empty list of {', '.join(known)} (each once), got {parts!r}"
        return None
    return problem


def _date_problem(value: Any, key: str) -> str | None:
    """What is wrong with a date or time the config gives (ISO 8601 text), if anything."""
    if not isinstance(value, str):
        return (f"{key} must be a date or time as text, e.g. \"2000-01-01\" or \"2000-01-01 12:00:00\", got {value!r} "
                f"(quote it: YAML reads an unquoted 2000-01-01 as a date of its own)")
    try:
        mappers.reference_seconds(value)
    except (DataError, ValueError):  # ValueError: a missing-value word ("NA"), which reads as NaN
        return (f"{key} must be an ISO 8601 date or time (UTC unless it has a zone), e.g. \"2000-01-01\" or "
                f"\"2000-01-01T12:00:00+01:00\", got {value!r}")
    return None


def _since_problem(p: Params, incoming: StepKind) -> str | None:
    if p.get("unit", "days") not in mappers.SINCE_UNITS:
        return f"unit must be one of {', '.join(mappers.SINCE_UNITS)}, got {p.get('unit')!r}"
    return _date_problem(p.get("reference", "1970-01-01"), "reference")


def _calendar_result(incoming: StepKind, params: Params) -> StepKind:
    """One part is a number (bucketize, piecewise_linear and z_score take it), several a vector."""
    return StepKind(NUMBER) if len(params["parts"]) == 1 else StepKind(VECTOR)


def _build_impute(x, step: StepInput):
    """A constant date is given as text: the timestamp inside the transform is its epoch seconds."""
    params = dict(step.params)
    if step.incoming.kind == TIMESTAMP and params["strategy"] == "constant":
        params["value"] = mappers.reference_seconds(params["value"])
    return analyzers.impute(x, step.scope, **params)


# --- steps whose result or build depends on their parameters or their chain ----------------------

def _vocabulary_result(incoming: StepKind, params: Params) -> StepKind:
    top_k = params.get("top_k")
    width = top_k + params.get("num_oov_buckets", 1) if top_k else None
    return StepKind(TOKEN_IDS if incoming.kind == TOKENS else IDS, width)


def _bucketize_result(incoming: StepKind, params: Params) -> StepKind:
    if "num_buckets" in params:
        return StepKind(IDS, params["num_buckets"])
    return StepKind(IDS, len(params.get("boundaries", [])) + 1)


def _build_bucketize(x, step: StepInput):
    """Fixed boundaries are a per-row mapper; quantile buckets need the boundaries from a full pass."""
    if "boundaries" in step.params:
        return mappers.fixed_buckets(x, step.scope, step.params["boundaries"])
    return _keyed(analyzers.quantile_buckets, analyzers.quantile_buckets_per_key)(x, step)


def _per_column(params: Params) -> tuple[str, ...]:
    return (params["per"],) if "per" in params else ()


def _keyed(whole, per_key) -> Callable[[Any, StepInput], tuple[Any, dict]]:
    """A full-pass step over the whole column, or with `per` over each key's rows: the raw `per` column's text keys
    the statistics (StepDef.partners)."""
    def build(x, step: StepInput):
        params = dict(step.params)
        per = params.pop("per", None)
        if per is None:
            return whole(x, step.scope, **params)
        return per_key(x, step.scope, tf.squeeze(step.raw[graph_input_name(per)], 1), **params)
    return build


def _with_columns(params: Params) -> tuple[str, ...]:
    return tuple(params.get("with", []))


def _partner_values(step: StepInput) -> dict[str, tf.Tensor]:
    """The raw values of the step's `with` columns (StepDef.partners), [batch], by the user's names."""
    return {o: tf.squeeze(step.raw[graph_input_name(o)], 1) for o in _with_columns(step.params)}


def _build_polynomial(x, step: StepInput):
    return mappers.polynomial(x, step.column, step.params.get("degree", 2), _partner_values(step))


def _hash_result(incoming: StepKind, params: Params) -> StepKind:
    return StepKind(TOKEN_IDS if incoming.kind == TOKENS else IDS, params["buckets"])


def _cross_result(incoming: StepKind, params: Params) -> StepKind:
    return StepKind(IDS, params["hash_buckets"])


def _build_cross(x, step: StepInput):
    return mappers.cross(x, step.scope, _partner_values(step), step.params["hash_buckets"])


def _build_one_hot(x, step: StepInput):
    return mappers.one_hot(x, step.scope, step.params.get("depth") or step.incoming.width)


def _impute_reads(params: Params) -> str | None:
    """The next step's type (a mean or median of text is its problem), or a number when it is the only step."""
    return None


# --- what a step's input must be for its output to stay above a bound (StepDef.input_above) --------

def _log1p_input_above(params: Params, bound: float) -> float:
    """log1p is increasing: log1p(x) > b exactly when x > expm1(b) ([log1p, box_cox] needs x > 0)."""
    return math.expm1(bound)


def _clip_input_above(params: Params, bound: float) -> float | None:
    if params.get("max") is not None and params["max"] <= bound:
        return None
    return -math.inf if params.get("min") is not None and params["min"] > bound else bound


def _impute_input_above(params: Params, bound: float) -> float | None:
    """A mean, median or most frequent value of values above the bound is above it; a constant must be."""
    if params.get("strategy") != "constant":
        return bound
    value = params.get("value")
    return bound if isinstance(value, _NUMERIC) and value > bound else None


_POSITIVE = Domain(0.0, "use yeo_johnson for zero or negative values")
_ABOVE_MINUS_ONE = Domain(-1.0, "clip before it, e.g. {clip: {min: 0}}, or use yeo_johnson")


def _power(fn) -> Callable[[Any, StepInput], tuple[Any, dict]]:
    """A power transform (or one fused with z_score): its lambda search names the column when the data defeat it."""
    return lambda x, step: fn(x, step.scope, step.column)


STEPS: dict[str, StepDef] = {s.name: s for s in [
    # Per-row mappers.
    StepDef("normalize_text", (TEXT,), ("stopwords", "lowercase"), _to(TOKENS), _mapper(mappers.normalize_text),
            _never, _normalize_text_problem, reads=_reads_string),
    StepDef("threshold", (NUMBER,), ("value",), _to(NUMBER), _mapper(mappers.threshold), _never, _threshold_problem,
            short="value"),
    StepDef("log1p", (NUMBER,), (), _to(NUMBER), _mapper(mappers.log1p), _never, domain=_ABOVE_MINUS_ONE,
            input_above=_log1p_input_above),
    StepDef("clip", (NUMBER,), ("min", "max"), _to(NUMBER), _mapper(mappers.clip), _never, _clip_problem,
            input_above=_clip_input_above),
    StepDef("polynomial", (NUMBER,), ("degree", "with"), _to(VECTOR), _build_polynomial, _never, _polynomial_problem,
            partners=_with_columns),
    StepDef("one_hot", (IDS,), ("depth",), _to(VECTOR), _build_one_hot, _never, _one_hot_problem),
    StepDef("ngrams", (TOKENS,), ("n", "separator"), _to(TOKENS), _mapper(mappers.ngrams), _never, _ngrams_problem,
            short="n"),
    StepDef("bag_of_words", (TOKENS,), ("n", "separator"), _to(TOKENS), _mapper(mappers.bag_of_words), _never,
            _ngrams_problem, short="n"),
    StepDef("tfidf", (TOKEN_IDS,), ("smooth",), _to(VECTOR), _build_tfidf, _always, _tfidf_problem),
    StepDef("hash", (TEXT, TOKENS), ("buckets",), _hash_result, _mapper(mappers.hash_strings), _never,
            _buckets_problem("buckets"), reads=_reads_string, short="buckets"),
    StepDef("cross", (TEXT,), ("with", "hash_buckets"), _cross_result, _build_cross, _never, _cross_problem,
            reads=_reads_string, partners=_with_columns, partner_reads="string"),
    StepDef("calendar", (TIMESTAMP,), ("parts",), _calendar_result, _mapper(mappers.calendar), _never,
            _parts_problem(mappers.CALENDAR_PARTS), reads=_reads_timestamp, short="parts"),
    StepDef("cyclical", (TIMESTAMP,), ("parts",), _to(VECTOR), _mapper(mappers.cyclical), _never,
            _parts_problem(tuple(mappers.CYCLES)), reads=_reads_timestamp, short="parts"),
    StepDef("since", (TIMESTAMP,), ("reference", "unit"), _to(NUMBER), _mapper(mappers.since), _never,
            _since_problem, reads=_reads_timestamp),
    # Full-pass analyzers (bucketize with fixed boundaries is per row, impute with a constant too).
    StepDef("z_score", (NUMBER, VECTOR), ("per",), _same_kind, _keyed(analyzers.z_score, analyzers.z_score_per_key),
            _always, _per_problem, partners=_per_column, partner_reads="string"),
    StepDef("min_max", (NUMBER, VECTOR), ("output_min", "output_max", "per"), _same_kind,
            _keyed(analyzers.min_max, analyzers.min_max_per_key), _always,
            lambda p, incoming: _min_max_problem(p, incoming) or _per_problem(p, incoming),
            partners=_per_column, partner_reads="string"),
    StepDef("robust", (NUMBER,), (), _same_kind, _mapper(analyzers.robust), _always),
    StepDef("max_abs", (NUMBER, VECTOR), (), _same_kind, _mapper(analyzers.max_abs), _always),
    StepDef("box_cox", (NUMBER,), (), _to(NUMBER), _power(analyzers.box_cox), _always, domain=_POSITIVE,
            fused={"z_score": _power(analyzers.box_cox_z_score)}),
    StepDef("yeo_johnson", (NUMBER,), (), _to(NUMBER), _power(analyzers.yeo_johnson), _always,
            fused={"z_score": _power(analyzers.yeo_johnson_z_score)}),
    StepDef("bucketize", (NUMBER,), ("num_buckets", "boundaries", "per"), _bucketize_result, _build_bucketize,
            lambda params: "num_buckets" in params,
            lambda p, incoming: _bucketize_problem(p, incoming) or _per_problem(p, incoming),
            partners=_per_column, partner_reads="string"),
    StepDef("piecewise_linear", (NUMBER,), ("num_buckets",), _to(VECTOR), _mapper(analyzers.piecewise_linear),
            _always, _piecewise_linear_problem, short="num_buckets"),
    StepDef("vocabulary", (TEXT, TOKENS), ("top_k", "frequency_threshold", "num_oov_buckets"), _vocabulary_result,
            _mapper(analyzers.vocabulary), _always, _vocabulary_problem, reads=_reads_string),
    StepDef("impute", (NUMBER, TEXT, TIMESTAMP), ("strategy", "value"), _same_kind, _build_impute,
            lambda params: params.get("strategy") != "constant", _impute_problem, reads=_impute_reads,
            short="strategy", fills_missing=True, input_above=_impute_input_above),
]}
