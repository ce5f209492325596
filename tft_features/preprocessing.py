"""From the config's `features:` to a TFT preprocessing_fn, through a registry of steps.

Each step has a name (the config's word), the kind of value it accepts and the
kind it produces, so a chain like `[normalize_text, vocabulary]` is checked when
the config is read, before any data is touched. Kinds:

  number    float32 [batch]            text       string [batch]
  tokens    ragged string [batch, *]   ids        int64 [batch]
  token_ids ragged int64 [batch, *]    vector     float32 [batch, k]

A column whose first step is `impute` is read with its missing values kept
(as a SparseTensor); any other column must have none, which the input check
enforces. Each step's analyzer results go into `stats.json` by column and name.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any, Callable, Mapping

import numpy as np
import tensorflow as tf

from tfbridge.contracts import (STAT_OUTPUT_PREFIX, ConfigError, FeatureOutput, PipelineConfig, TransformStep,
                                graph_input_name)
from tft_features import estimators, transformers

NUMBER, TEXT, TOKENS, IDS, TOKEN_IDS, VECTOR = "number", "text", "tokens", "ids", "token_ids", "vector"


@dataclasses.dataclass(frozen=True)
class StepKind:
    """What a step accepts and produces; `width` is the id range it yields, when known."""

    kind: str
    width: int | None = None


@dataclasses.dataclass(frozen=True)
class StepDef:
    name: str
    accepts: tuple[str, ...]
    params: tuple[str, ...]  # allowed parameter names
    result: Callable[[StepKind, Mapping[str, Any]], StepKind]
    build: Callable[..., tuple[Any, dict]] | None  # None: needs the chain's context, see _apply_step
    full_pass: bool
    short: str | None = None  # the parameter a bare value stands for: {impute: mean} is {impute: {strategy: mean}}


def _to_number(kind: StepKind, params) -> StepKind:
    return StepKind(NUMBER)


def _same_kind(kind: StepKind, params) -> StepKind:
    return kind


def _vocabulary_result(kind: StepKind, params) -> StepKind:
    top_k = params.get("top_k")
    width = top_k + params.get("num_oov_buckets", 1) if top_k else None
    return StepKind(TOKEN_IDS if kind.kind == TOKENS else IDS, width)


def _bucketize_result(kind: StepKind, params) -> StepKind:
    if "num_buckets" in params:
        return StepKind(IDS, params["num_buckets"])
    return StepKind(IDS, len(params.get("boundaries", [])) + 1)


def _build_bucketize(x, name, num_buckets=None, boundaries=None):
    if boundaries is not None:
        return transformers.fixed_buckets(x, name, boundaries)
    return estimators.quantile_buckets(x, name, num_buckets)


STEPS: dict[str, StepDef] = {s.name: s for s in [
    # Per-row transformers.
    StepDef("normalize_text", (TEXT,), ("stopwords", "lowercase"), lambda k, p: StepKind(TOKENS),
            transformers.normalize_text, False),
    StepDef("threshold", (NUMBER,), ("value",), _to_number, transformers.threshold, False, short="value"),
    StepDef("log1p", (NUMBER,), (), _to_number, transformers.log1p, False),
    StepDef("clip", (NUMBER,), ("min", "max"), _to_number, transformers.clip, False),
    StepDef("polynomial", (NUMBER,), ("degree", "with"), lambda k, p: StepKind(VECTOR), None, False),
    StepDef("one_hot", (IDS,), ("depth",), lambda k, p: StepKind(VECTOR), None, False),
    # Full-pass estimators (bucketize with fixed boundaries is per-row, see _build_bucketize).
    StepDef("z_score", (NUMBER, VECTOR), (), _same_kind, estimators.z_score, True),
    StepDef("min_max", (NUMBER, VECTOR), ("output_min", "output_max"), _same_kind, estimators.min_max, True),
    StepDef("box_cox", (NUMBER,), (), _to_number, estimators.box_cox, True),
    StepDef("yeo_johnson", (NUMBER,), (), _to_number, estimators.yeo_johnson, True),
    StepDef("bucketize", (NUMBER,), ("num_buckets", "boundaries"), _bucketize_result, _build_bucketize, True),
    StepDef("vocabulary", (TEXT, TOKENS), ("top_k", "frequency_threshold", "num_oov_buckets"),
            _vocabulary_result, estimators.vocabulary, True),
    StepDef("impute", (NUMBER, TEXT), ("strategy", "value"), _same_kind, estimators.impute, True,
            short="strategy"),
]}

# What a column must be read as for its first step to accept it.
_RAW_TYPE_FOR_STEP = {"normalize_text": "string", "vocabulary": "string"}


@dataclasses.dataclass(frozen=True)
class ColumnPlan:
    """One configured column: how it is read and the checked chain of steps."""

    column: str
    read_as: str  # "float" or "string"
    nullable: bool  # first step is impute: missing values are kept for it to fill
    steps: tuple[TransformStep, ...]
    kinds: tuple[StepKind, ...]  # the kind after each step
    positive: bool  # Box-Cox sees the raw values: they must all be > 0

    @property
    def output_kind(self) -> str:
        return self.kinds[-1].kind

    @property
    def key(self) -> str:
        """The column's name inside the transform, its input and its output (`graph_input_name`)."""
        return graph_input_name(self.column)


@dataclasses.dataclass(frozen=True)
class FeaturePlan:
    """The whole `features:` section, checked: columns to read, and each chain."""

    columns: tuple[ColumnPlan, ...]
    label: str

    def raw_columns(self) -> dict[str, tuple[str, bool]]:
        """Every column the transform reads: name -> (read_as, nullable). Polynomial partners included."""
        cols: dict[str, tuple[str, bool]] = {c.column: (c.read_as, c.nullable) for c in self.columns}
        for plan in self.columns:
            for step in plan.steps:
                if step.name == "polynomial":
                    for other in step.params.get("with", []):
                        cols.setdefault(other, ("float", False))
        return cols

    def analysis_phases(self) -> int:
        """The longest chain of full-pass steps: TFT runs one analysis phase per link."""
        def full_pass(step: TransformStep) -> bool:
            if step.name == "bucketize":
                return "num_buckets" in step.params
            if step.name == "impute":
                return step.params.get("strategy") != "constant"
            return STEPS[step.name].full_pass
        return max((sum(map(full_pass, c.steps)) for c in self.columns), default=0)

    def positive_columns(self) -> set[str]:
        return {c.column for c in self.columns if c.positive}


def plan_features(config: PipelineConfig) -> FeaturePlan:
    """Checks every chain against the registry; errors name the column, the step and what was expected."""
    plans = []
    for column, steps in config.features.items():
        plans.append(_plan_column(column, steps, config))
    plan = FeaturePlan(tuple(plans), config.label)
    by_name = {c.column: c for c in plans}
    for c in plans:
        for step in c.steps:
            if step.name == "polynomial":
                for other in step.params.get("with", []):
                    partner = by_name.get(other)
                    if partner is not None and (partner.nullable or partner.read_as != "float"):
                        raise ConfigError(
                            f"{config.source}: features.{c.column}: polynomial uses the raw column '{other}', "
                            f"which must be numeric with no missing values")
    return plan


def _plan_column(column: str, steps: tuple[TransformStep, ...], config: PipelineConfig) -> ColumnPlan:
    where = f"{config.source}: features.{column}"
    steps = tuple(_named_params(step, where) for step in steps)
    first = steps[0].name
    nullable = first == "impute"
    lead = steps[1].name if nullable and len(steps) > 1 else first
    read_as = _RAW_TYPE_FOR_STEP.get(lead, "float")
    if nullable and steps[0].params.get("strategy") in ("mean", "median"):
        read_as = "float"
    kind = StepKind(TEXT if read_as == "string" else NUMBER)
    kinds = []
    for i, step in enumerate(steps):
        spec = STEPS[step.name]
        if step.name == "impute" and i > 0:
            raise ConfigError(f"{where}: impute must be the first step (it fills the raw column's missing values)")
        unknown = sorted(set(step.params) - set(spec.params))
        if unknown:
            raise ConfigError(f"{where}: step '{step.name}' has unknown parameter(s) {unknown}; "
                              f"it takes {sorted(p for p in spec.params if p) or 'none'}")
        if kind.kind not in spec.accepts:
            raise ConfigError(f"{where}: step '{step.name}' needs {' or '.join(spec.accepts)} input, "
                              f"but the step before it gives {kind.kind}")
        if step.name == "one_hot" and not step.params.get("depth") and not kind.width:
            raise ConfigError(f"{where}: one_hot needs a fixed width: give vocabulary a top_k, "
                              f"or one_hot a depth")
        problem = _parameter_problem(step)
        if problem:
            raise ConfigError(f"{where}: step '{step.name}': {problem}")
        kind = spec.result(kind, step.params)
        kinds.append(kind)
    return ColumnPlan(column, read_as, nullable, steps, tuple(kinds), positive=lead == "box_cox")


def _named_params(step: TransformStep, where: str) -> TransformStep:
    """The step with its bare value, if any, under the parameter name it stands for."""
    spec = STEPS.get(step.name)
    if spec is None:
        raise ConfigError(f"{where}: unknown transform '{step.name}'; known: {sorted(STEPS)}")
    if "" not in step.params:
        return step
    if spec.short is None:
        raise ConfigError(f"{where}: step '{step.name}' takes no bare value; "
                          f"write {{{step.name}: {{parameter: value}}}}")
    params = {k: v for k, v in step.params.items() if k}
    return TransformStep(step.name, {spec.short: step.params[""], **params})


def _parameter_problem(step: TransformStep) -> str | None:
    """What is wrong with a step's parameters, checked with the config rather than inside the Beam job."""
    p = step.params
    number = (int, float)
    if step.name == "bucketize":
        if ("num_buckets" in p) == ("boundaries" in p):
            return "give either num_buckets (quantiles) or boundaries (fixed), not both"
        if "num_buckets" in p and not (isinstance(p["num_buckets"], int) and p["num_buckets"] >= 2):
            return f"num_buckets must be an integer >= 2, got {p['num_buckets']!r}"
        bounds = p.get("boundaries")
        if bounds is not None and not (isinstance(bounds, list) and bounds and all(isinstance(b, number) for b in bounds)
                                       and all(a < b for a, b in zip(bounds, bounds[1:]))):
            return f"boundaries must be a non-empty, strictly increasing list of numbers, got {bounds!r}"
    if step.name == "polynomial":
        others = p.get("with", [])
        if not isinstance(others, list) or not all(isinstance(o, str) for o in others):
            return "'with' must be a list of column names"
        if not (isinstance(p.get("degree", 2), int) and p.get("degree", 2) >= 1):
            return f"degree must be a positive integer, got {p.get('degree')!r}"
    if step.name == "impute":
        strategy = step.params.get("strategy")
        if strategy not in ("mean", "median", "most_frequent", "constant"):
            return f"strategy must be mean, median, most_frequent or constant, got {strategy!r}"
        if strategy == "constant" and "value" not in p:
            return "constant needs a 'value'"
    if step.name == "threshold" and not isinstance(p.get("value"), number):
        return "needs a numeric threshold, e.g. {threshold: 0.5}"
    if step.name == "clip" and not any(isinstance(p.get(k), number) for k in ("min", "max")):
        return "needs a numeric 'min', 'max' or both"
    if step.name == "min_max" and not p.get("output_min", 0.0) < p.get("output_max", 1.0):
        return "output_min must be below output_max"
    if step.name == "vocabulary":
        for key in ("top_k", "frequency_threshold", "num_oov_buckets"):
            if key in p and not (isinstance(p[key], int) and p[key] >= 0):
                return f"{key} must be a non-negative integer, got {p[key]!r}"
    if step.name == "normalize_text":
        try:
            transformers.stop_words(p.get("stopwords", "english"))
        except ValueError as e:
            return str(e)
    return None


def stat_output_name(column: str, key: str) -> str:
    """The transform_fn output that carries one statistic of a column (`__stat__<column>__<key>`)."""
    return f"{STAT_OUTPUT_PREFIX}{column}__{key}"


def parse_stat_output_name(name: str) -> tuple[str, str] | None:
    """(column, key) for a statistic output, None for a feature."""
    if not name.startswith(STAT_OUTPUT_PREFIX):
        return None
    column, _, key = name[len(STAT_OUTPUT_PREFIX):].rpartition("__")
    return column, key


def _scope(column: str, index: int, step: str) -> str:
    return re.sub(r"\W", "_", f"{column}_{index}_{step}")


class StatsReport:
    """Collects each step's statistics during tracing and exposes them as transform_fn outputs.

    Each statistic becomes an output named `__stat__<column>__<key>` (see
    `stat_output_name`), the value repeated for every row.
    That keeps analyzer results reachable by name from the transform_fn and
    adds no analysis phase: a statistic is read off the first transformed row,
    and the outputs are dropped before the TFRecords are written.
    """

    def __init__(self):
        self.outputs: dict[str, tf.Tensor] = {}

    def add(self, column: str, stats: Mapping[str, Any], batch_size: tf.Tensor) -> None:
        for key, value in stats.items():
            name, n = stat_output_name(column, key), 2
            while name in self.outputs:
                name, n = stat_output_name(column, f"{key}_{n}"), n + 1
            value = tf.convert_to_tensor(value)
            if value.dtype.is_floating:
                value = tf.cast(value, tf.float32)
            elif value.dtype.is_integer:
                value = tf.cast(value, tf.int64)
            if value.shape.rank == 0:
                self.outputs[name] = tf.fill([batch_size], value)
            else:
                flat = tf.reshape(value, [1, -1])
                if flat.shape[1] is None:
                    raise ValueError(f"statistic {column}.{key} has no static size")
                self.outputs[name] = tf.tile(flat, [batch_size, 1])


def stats_from_row(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """`{"features": {column: {key: value}}}` from one transformed row's `__stat__` columns.

    `columns` maps a column's name inside the transform to the user's name, which stats.json uses.
    """
    features: dict[str, dict[str, Any]] = {}
    for name, value in row.items():
        parsed = parse_stat_output_name(name)
        if parsed is None:
            continue
        column, key = parsed
        features.setdefault(columns.get(column, column), {})[key] = _to_json(value)
    return {"features": features}


def _to_json(value) -> Any:
    value = np.asarray(value)
    if value.dtype.kind in "SO":
        decoded = [v.decode() if isinstance(v, bytes) else str(v) for v in value.reshape(-1)]
        return decoded if value.ndim else decoded[0]
    if value.dtype.kind == "f":
        value = value.astype(np.float64)
    return value.tolist()


def make_preprocessing_fn(plan: FeaturePlan) -> Callable[[dict], dict]:
    """The TFT preprocessing_fn for a checked plan. Inputs are [batch, 1] dense or SparseTensor (nullable)."""

    def preprocessing_fn(inputs: dict) -> dict:
        report = StatsReport()
        outputs = {}
        label_key = graph_input_name(plan.label)
        label = tf.squeeze(inputs[label_key], 1)
        batch_size = tf.shape(label)[0]
        for col in plan.columns:
            x = inputs[col.key]
            if not col.nullable:
                x = tf.squeeze(x, 1)
            for i, step in enumerate(col.steps):
                x, stats = _apply_step(x, col, i, step, inputs)
                report.add(col.key, stats, batch_size)
            if isinstance(x, tf.RaggedTensor):
                x = x.to_sparse()
            outputs[col.key] = x
        outputs[label_key] = label
        outputs.update(report.outputs)
        return outputs

    return preprocessing_fn


def _apply_step(x, col: ColumnPlan, index: int, step: TransformStep, inputs: dict):
    name = _scope(col.key, index, step.name)
    params = dict(step.params)
    with tf.name_scope(name):
        if step.name == "polynomial":
            others = {o: tf.squeeze(inputs[graph_input_name(o)], 1) for o in params.get("with", [])}
            return transformers.polynomial(x, col.column, params.get("degree", 2), others)
        if step.name == "one_hot":
            depth = params.get("depth") or col.kinds[index - 1].width
            return transformers.one_hot(x, name, depth)
        return STEPS[step.name].build(x, name, **params)


def feature_outputs(spec: Mapping[str, Any], plan: FeaturePlan | None, stats: Mapping[str, Any],
                    id_ranges: Mapping[str, int]) -> dict[str, FeatureOutput]:
    """What each materialized feature is, for the trainer: kind from the spec, id range from plan and stats.

    `spec` is the transformed feature spec less statistics and label. With no
    plan (a user's preprocessing_fn) an integer feature's id range is TFT's
    (`id_ranges`, from the transformed schema's int domains), else unknown.
    """
    chains = {c.key: c for c in plan.columns} if plan else {}
    outputs = {}
    for name, feature in spec.items():
        fixed = isinstance(feature, tf.io.FixedLenFeature)
        if feature.dtype == tf.string:
            outputs[name] = FeatureOutput(TEXT if fixed else TOKENS)
        elif feature.dtype.is_floating:
            shape = list(feature.shape) if fixed else [None]
            outputs[name] = FeatureOutput(VECTOR, shape[0]) if shape else FeatureOutput(NUMBER)
        else:
            width = None
            if name in chains:
                width = chains[name].kinds[-1].width
                column_stats = stats.get("features", {}).get(chains[name].column, {})
                if width is None and "vocabulary_size" in column_stats:
                    width = int(column_stats["vocabulary_size"]) + max(int(column_stats["num_oov_buckets"]), 1)
            outputs[name] = FeatureOutput(IDS if fixed and not feature.shape else TOKEN_IDS,
                                          width or id_ranges.get(name))
    return outputs


def load_user_preprocessing_fn(spec: str, source: str) -> Callable[[dict], dict]:
    """The `preprocessing_fn: package.module:function` escape hatch."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{source}: preprocessing_fn: cannot import module '{module_name}': {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{source}: preprocessing_fn: '{module_name}' has no function '{attr}'")
    return fn
