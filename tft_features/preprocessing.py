"""From the config's `features:` to a TFT preprocessing_fn, through the registry of steps (`steps`).

A chain like `[normalize_text, vocabulary]` is checked against the registry
when the config is read, before any data is touched. A column whose first step
fills missing values (`impute`) is read with them kept (as a SparseTensor); any
other number column must have none, which the input check enforces. It also
enforces each column's `RawDomain`: what its raw values must be for every
step's domain (box_cox: > 0, log1p: > -1) to hold; a chain where a step can
leave a later step's domain whatever it reads (`[z_score, box_cox]`) is a
ConfigError. Each step's analyzer results go into `stats.json` by column and
name.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
from typing import Any, Callable, Mapping

import numpy as np
import tensorflow as tf

from tfbridge.contracts import (STAT_OUTPUT_PREFIX, ConfigError, FeatureKind, FeatureOutput, PipelineConfig,
                                TransformStep, graph_input_name, graph_input_names)
from tft_features.steps import STEPS, RawDomain, StepInput, StepKind


@dataclasses.dataclass(frozen=True)
class ColumnPlan:
    """One configured column: how it is read and the checked chain of steps."""

    column: str
    read_as: str  # "float", "string" or "timestamp"
    nullable: bool  # first step is impute: missing values are kept for it to fill
    steps: tuple[TransformStep, ...]
    kinds: tuple[StepKind, ...]  # the kind after each step
    raw_domain: RawDomain | None  # None: any number (or text)

    @property
    def output_kind(self) -> FeatureKind:
        return self.kinds[-1].kind

    @property
    def raw_kind(self) -> StepKind:
        """What its first step is given: the raw column, as text, a number or a timestamp."""
        return _raw_kind(self.read_as)

    def partners(self) -> dict[str, str]:
        """The other raw columns its steps read (polynomial's and cross's `with`), each with the step that reads
        it (StepDef.partner_reads says how)."""
        return {other: step.name for step in self.steps for other in STEPS[step.name].partners(step.params)}

    def step_groups(self) -> list[tuple[int, tuple[TransformStep, ...]]]:
        """The steps as they are built: (index of the first, the steps), a step alone or with the next one
        it fuses with (StepDef.fused), e.g. [box_cox, z_score] in one analysis pass."""
        groups, i = [], 0
        while i < len(self.steps):
            pair = self.steps[i:i + 2]
            fuses = len(pair) == 2 and pair[1].name in STEPS[pair[0].name].fused
            # a next step keyed by another column (z_score's `per`) is built on its own
            size = 2 if fuses and not STEPS[pair[1].name].partners(pair[1].params) else 1
            groups.append((i, self.steps[i:i + size]))
            i += size
        return groups

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
        """Every column the transform reads: name -> (read_as, nullable). Partners (polynomial's and cross's `with`)
        included."""
        cols: dict[str, tuple[str, bool]] = {c.column: (c.read_as, c.nullable) for c in self.columns}
        for plan in self.columns:
            for other, step in plan.partners().items():
                cols.setdefault(other, (STEPS[step].partner_reads, False))
        return cols

    def analysis_phases(self) -> int:
        """The longest chain of full-pass steps (a fused pair counting once): TFT runs one analysis phase per link."""
        return max((sum(STEPS[group[0].name].full_pass(group[0].params) for _, group in c.step_groups())
                    for c in self.columns), default=0)

    def raw_domains(self) -> dict[str, RawDomain]:
        return {c.column: c.raw_domain for c in self.columns if c.raw_domain is not None}


def plan_features(config: PipelineConfig) -> FeaturePlan:
    """Checks every chain against the registry; errors name the column, the step and what was expected."""
    plans = [_plan_column(column, steps, config) for column, steps in config.features.items()]
    plan = FeaturePlan(tuple(plans), config.label)
    by_name = {c.column: c for c in plans}
    for column in config.datetime_formats:
        if by_name[column].read_as != "timestamp":
            raise ConfigError(f"{config.source}: features.{column}: 'datetime' says how text reads as dates and "
                              f"times, for a column whose first step is calendar, cyclical or since (after impute); "
                              f"its steps read {by_name[column].read_as}")
    read_as = plan.raw_columns()
    for c in plans:
        for other, step in c.partners().items():
            wanted = STEPS[step].partner_reads
            if read_as[other] != (wanted, False):
                must = "numeric with no missing values" if wanted == "float" else "text, not imputed"
                raise ConfigError(f"{config.source}: features.{c.column}: {step} uses the raw column '{other}', "
                                  f"which must be {must}")
    graph_input_names([config.label, *plan.raw_columns()], f"{config.source}: features")
    return plan


_RAW_KINDS = {"string": FeatureKind.TEXT, "timestamp": FeatureKind.TIMESTAMP}


def _raw_kind(read_as: str) -> StepKind:
    return StepKind(_RAW_KINDS.get(read_as, FeatureKind.NUMBER))


def _plan_column(column: str, steps: tuple[TransformStep, ...], config: PipelineConfig) -> ColumnPlan:
    where = f"{config.source}: features.{column}"
    steps = tuple(_named_params(step, where) for step in steps)
    nullable = STEPS[steps[0].name].fills_missing
    lead = steps[1] if nullable and len(steps) > 1 else steps[0]
    read_as = STEPS[steps[0].name].reads(steps[0].params) or STEPS[lead.name].reads(lead.params) or "float"
    kind = _raw_kind(read_as)
    kinds = []
    for i, step in enumerate(steps):
        spec = STEPS[step.name]
        if spec.fills_missing and i > 0:
            raise ConfigError(f"{where}: {step.name} must be the first step (it fills the raw column's missing values)")
        unknown = sorted(set(step.params) - set(spec.params))
        if unknown:
            raise ConfigError(f"{where}: step '{step.name}' has unknown parameter(s) {unknown}; "
                              f"it takes {sorted(p for p in spec.params if p) or 'none'}")
        if kind.kind not in spec.accepts:
            raise ConfigError(f"{where}: step '{step.name}' needs {' or '.join(spec.accepts)} input, "
                              f"but the step before it gives {kind.kind}")
        problem = spec.problem(step.params, kind)
        if problem:
            raise ConfigError(f"{where}: step '{step.name}': {problem}")
        kind = spec.result(kind, step.params)
        kinds.append(kind)
    return ColumnPlan(column, read_as, nullable, steps, tuple(kinds), _raw_domain(steps, where))


def _raw_domain(steps: tuple[TransformStep, ...], where: str) -> RawDomain | None:
    """The bound the raw values must be above for every step's Domain to hold, found walking back from the
    last step: each step's own domain, and what it needs of its input to keep its output above the bound of
    the steps after it (StepDef.input_above). [log1p, box_cox] needs x > 0; [clip: {min: 1}, box_cox] needs
    nothing; [z_score, box_cox] is a ConfigError: z_score gives values <= 0 whatever it reads."""
    bound, owner = -math.inf, 0  # the bound on the current step's output, and the step whose domain set it
    for i in reversed(range(len(steps))):
        spec = STEPS[steps[i].name]
        if bound > -math.inf:
            needed = spec.input_above(steps[i].params, bound)
            if needed is None:
                domain = STEPS[steps[owner].name].domain
                raise ConfigError(f"{where}: {steps[owner].name} needs values > {domain.above:g}, but {spec.name} "
                                  f"before it can give values <= {bound:g} whatever it reads: put "
                                  f"{steps[owner].name} before {spec.name}, or {domain.advice}")
            bound = needed
        if spec.domain is not None and spec.domain.above >= bound:
            bound, owner = spec.domain.above, i
    if bound == -math.inf:
        return None
    owner_name = steps[owner].name
    after = f" after {', '.join(s.name for s in steps[:owner])} needs raw" if owner else " needs"
    return RawDomain(bound, f"{owner_name}{after} values > {bound:.6g} ({STEPS[owner_name].domain.advice})")


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


def vocabulary_name(column: str, index: int) -> str:
    """The name TFT keeps the vocabulary of step `index` of a column under (`analyzers.vocabulary` names it after
    its scope), for `TFTransformOutput.vocabulary_file_by_name`."""
    return f"{_scope(graph_input_name(column), index, 'vocabulary')}_vocabulary"


class StatsReport:
    """Collects each step's statistics during tracing and exposes them as transform_fn outputs.

    Each statistic becomes an output named `__stat__<column>__<key>` (see
    `stat_output_name`), the value repeated for every row.
    That keeps analyzer results reachable by name from the transform_fn and
    adds no analysis phase: a statistic is read off the first transformed row,
    and the outputs are dropped before the shard files are written.
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
            for i, steps in col.step_groups():
                x, stats = _apply_steps(x, col, i, steps, inputs)
                report.add(col.key, stats, batch_size)
            if isinstance(x, tf.RaggedTensor):
                x = x.to_sparse()
            outputs[col.key] = x
        outputs[label_key] = label
        outputs.update(report.outputs)
        return outputs

    return preprocessing_fn


def _apply_steps(x, col: ColumnPlan, index: int, steps: tuple[TransformStep, ...], inputs: dict):
    """A step, or a fused pair of steps (ColumnPlan.step_groups), on x."""
    first = steps[0]
    scope = _scope(col.key, index, first.name)
    incoming = col.kinds[index - 1] if index else col.raw_kind
    build = STEPS[first.name].fused[steps[1].name] if len(steps) == 2 else STEPS[first.name].build
    with tf.name_scope(scope):
        return build(x, StepInput(scope, dict(first.params), col.column, incoming, inputs))


def feature_outputs(spec: Mapping[str, Any], plan: FeaturePlan | None, stats: Mapping[str, Any],
                    id_ranges: Mapping[str, int]) -> dict[str, FeatureOutput]:
    """What each materialized feature is, for the trainer: kind from the spec, id range (and, for a
    vocabulary's ids, the ids of values outside it) from plan and stats.

    `spec` is the transformed feature spec less statistics and label. With no
    plan (a user's preprocessing_fn) an integer feature's id range is TFT's
    (`id_ranges`, from the transformed schema's int domains), else unknown.
    """
    chains = {c.key: c for c in plan.columns} if plan else {}
    outputs = {}
    for name, feature in spec.items():
        fixed = isinstance(feature, tf.io.FixedLenFeature)
        if feature.dtype == tf.string:
            outputs[name] = FeatureOutput(FeatureKind.TEXT if fixed else FeatureKind.TOKENS)
        elif feature.dtype.is_floating:
            shape = list(feature.shape) if fixed else [None]
            outputs[name] = FeatureOutput(FeatureKind.VECTOR, shape[0]) if shape else FeatureOutput(FeatureKind.NUMBER)
        else:
            width, unseen = None, None
            if name in chains:
                width = chains[name].kinds[-1].width
                column_stats = stats.get("features", {}).get(chains[name].column, {})
                if "vocabulary_size" in column_stats:
                    size, buckets = int(column_stats["vocabulary_size"]), int(column_stats["num_oov_buckets"])
                    width = width or size + max(buckets, 1)
                    unseen = (size, size + buckets) if buckets else (-1, 0)
            outputs[name] = FeatureOutput(FeatureKind.IDS if fixed and not feature.shape else FeatureKind.TOKEN_IDS,
                                          width or id_ranges.get(name), unseen)
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
