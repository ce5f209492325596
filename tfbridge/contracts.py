"""Data contracts shared by the stages: the pipeline config, the artifact layout, the manifests.

Every stage reads these and nothing else of another stage: what passes between
stages is files on disk, described here. The config is one YAML file, read with
`yaml.safe_load` and validated here once, with errors that name the key.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

TASKS = ("regression", "binary", "multiclass")
DATA_FORMATS = ("parquet", "csv")

# Analyzer results travel inside the transform_fn as outputs with this prefix
# (one value repeated per row). They are statistics, not model inputs: the
# materialized TFRecords leave them out and the trainer must skip them.
STAT_OUTPUT_PREFIX = "__stat__"


def stat_output_name(column: str, key: str) -> str:
    return f"{STAT_OUTPUT_PREFIX}{column}__{key}"


def parse_stat_output_name(name: str) -> tuple[str, str] | None:
    """(column, key) for a statistic output, None for a feature."""
    if not name.startswith(STAT_OUTPUT_PREFIX):
        return None
    column, _, key = name[len(STAT_OUTPUT_PREFIX):].rpartition("__")
    return column, key


def materialized_feature_spec(transformed_feature_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The features in the transformed TFRecords: the transform_fn's outputs less its statistics."""
    return {k: v for k, v in transformed_feature_spec.items() if parse_stat_output_name(k) is None}


class ConfigError(ValueError):
    """The pipeline config is malformed: the message names the file and the key."""


class DataError(ValueError):
    """The input data breaks the contract: the message names the file, column and value."""


@dataclasses.dataclass(frozen=True)
class TransformStep:
    """One step of a feature's chain, e.g. `{bucketize: {num_buckets: 10}}`.

    `params` is kept as given; the feature stage checks names and parameters
    against its registry of transforms.
    """

    name: str
    params: Mapping[str, Any]

    @classmethod
    def parse(cls, raw: Any, where: str) -> "TransformStep":
        """Accepts `name`, `{name: {param: value}}` or `{name: value}` (one main parameter)."""
        if isinstance(raw, str):
            return cls(raw, {})
        if isinstance(raw, dict) and len(raw) == 1:
            (name, params), = raw.items()
            if params is None:
                params = {}
            if not isinstance(params, dict):
                # `{impute: mean}`: a scalar is the step's main parameter.
                params = {"": params}
            return cls(str(name), dict(params))
        raise ConfigError(
            f"{where}: a transform step is a name or a one-key mapping "
            f"like {{bucketize: {{num_buckets: 10}}}}, got {raw!r}"
        )

    def to_yaml(self) -> Any:
        if not self.params:
            return self.name
        if set(self.params) == {""}:
            return {self.name: self.params[""]}
        return {self.name: dict(self.params)}


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where raw rows come from: a Parquet file, directory or glob, or CSV files."""

    path: str
    format: str

    def pattern(self) -> str:
        """A glob of the files: a directory means every `*.parquet` (or `*.csv`) file directly in it."""
        if os.path.isdir(self.path):
            return os.path.join(self.path, f"*.{self.format}")
        return self.path

    def files(self) -> list[str]:
        """The files this source names, sorted."""
        return sorted(f for f in glob.glob(self.pattern()) if os.path.isfile(f))


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """The train/eval split: rows are assigned by a hash of their raw values, so a rerun agrees."""

    eval_fraction: float = 0.2


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """One run of the pipeline, as the YAML file says it (see README, "The pipeline config")."""

    data: DataSource
    label: str
    task: str
    output: str
    features: Mapping[str, tuple[TransformStep, ...]]
    preprocessing_fn: str | None = None
    split: SplitConfig = SplitConfig()
    source: str = "<config>"

    @property
    def layout(self) -> "ArtifactLayout":
        return ArtifactLayout(Path(self.output))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "PipelineConfig":
        path = str(path)
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.safe_load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        return cls.from_dict(raw, source=path, base_dir=os.path.dirname(os.path.abspath(path)))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<config>", base_dir: str | None = None) -> "PipelineConfig":
        """Validates a parsed config. Relative paths stay relative to the working directory,
        as a user typing `tfbridge run --config C` in the repo expects."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: the config must be a mapping, got {type(raw).__name__}")
        known = {"data", "label", "task", "features", "preprocessing_fn", "output", "split", "train"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; expected some of {sorted(known)}")

        def required(key: str) -> Any:
            if key not in raw or raw[key] in (None, ""):
                raise ConfigError(f"{source}: missing required key '{key}'")
            return raw[key]

        data_raw = required("data")
        if isinstance(data_raw, str):
            data_raw = {"path": data_raw}
        if not isinstance(data_raw, dict) or not data_raw.get("path"):
            raise ConfigError(f"{source}: 'data.path' is required (a Parquet file, directory or glob, or CSV)")
        data_path = str(data_raw["path"])
        fmt = data_raw.get("format") or ("csv" if data_path.lower().endswith(".csv") else "parquet")
        if fmt not in DATA_FORMATS:
            raise ConfigError(f"{source}: 'data.format' must be one of {DATA_FORMATS}, got {fmt!r}")

        label = str(required("label"))
        task = required("task")
        if task not in TASKS:
            raise ConfigError(f"{source}: 'task' must be one of {TASKS}, got {task!r}")
        output = str(required("output"))

        features_raw = raw.get("features")
        preprocessing_fn = raw.get("preprocessing_fn")
        if features_raw and preprocessing_fn:
            raise ConfigError(f"{source}: give either 'features' or 'preprocessing_fn', not both")
        if not features_raw and not preprocessing_fn:
            raise ConfigError(f"{source}: missing 'features' (or a 'preprocessing_fn: package.module:function')")
        if preprocessing_fn is not None and (not isinstance(preprocessing_fn, str) or ":" not in preprocessing_fn):
            raise ConfigError(f"{source}: 'preprocessing_fn' must read 'package.module:function', got {preprocessing_fn!r}")

        features: dict[str, tuple[TransformStep, ...]] = {}
        if features_raw:
            if not isinstance(features_raw, dict):
                raise ConfigError(f"{source}: 'features' must map column names to lists of steps")
            for column, steps in features_raw.items():
                where = f"{source}: features.{column}"
                if str(column) == label:
                    raise ConfigError(f"{where}: the label '{label}' cannot also be a feature")
                if isinstance(steps, (str, dict)):
                    steps = [steps]
                if not isinstance(steps, list) or not steps:
                    raise ConfigError(f"{where}: expected a non-empty list of transform steps")
                features[str(column)] = tuple(TransformStep.parse(s, where) for s in steps)

        split_raw = raw.get("split") or {}
        if not isinstance(split_raw, dict) or set(split_raw) - {"eval_fraction"}:
            raise ConfigError(f"{source}: 'split' takes only 'eval_fraction', got {split_raw!r}")
        eval_fraction = split_raw.get("eval_fraction", SplitConfig.eval_fraction)
        if not isinstance(eval_fraction, (int, float)) or not 0.0 <= eval_fraction < 1.0:
            raise ConfigError(f"{source}: 'split.eval_fraction' must be a number in [0, 1), got {eval_fraction!r}")

        return cls(
            data=DataSource(path=data_path, format=fmt),
            label=label,
            task=task,
            output=output,
            features=features,
            preprocessing_fn=preprocessing_fn,
            split=SplitConfig(eval_fraction=float(eval_fraction)),
            source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        """The config as YAML would hold it (recorded in manifests for provenance)."""
        out: dict[str, Any] = {
            "data": {"path": self.data.path, "format": self.data.format},
            "label": self.label,
            "task": self.task,
            "output": self.output,
            "split": {"eval_fraction": self.split.eval_fraction},
        }
        if self.features:
            out["features"] = {c: [s.to_yaml() for s in steps] for c, steps in self.features.items()}
        if self.preprocessing_fn:
            out["preprocessing_fn"] = self.preprocessing_fn
        return out


@dataclasses.dataclass(frozen=True)
class ArtifactLayout:
    """Where each stage writes under `<output>/`. Stages find each other's artifacts only here."""

    root: Path

    @property
    def features_dir(self) -> Path:
        """transform_fn/ and transformed_metadata/ (read with `tft.TFTransformOutput(features_dir)`),
        transformed/, stats.json, manifest.json."""
        return self.root / "features"

    @property
    def transformed_dir(self) -> Path:
        return self.features_dir / "transformed"

    @property
    def stats_path(self) -> Path:
        return self.features_dir / "stats.json"

    @property
    def features_manifest_path(self) -> Path:
        return self.features_dir / "manifest.json"

    def transformed_pattern(self, split: str) -> str:
        """Glob of the gzipped TFRecord shards of one split ('train' or 'eval')."""
        return str(self.transformed_dir / f"{split}-*.tfrecord.gz")


@dataclasses.dataclass(frozen=True)
class FeaturesManifest:
    """What the feature stage produced, for the stages after it (written as features/manifest.json)."""

    raw_columns: Mapping[str, str]  # column -> "float" | "int" | "string", as read by the transform
    label: str
    task: str
    rows: Mapping[str, int]  # split -> row count
    shards: Mapping[str, int]  # split -> file count
    versions: Mapping[str, str]
    config: Mapping[str, Any]

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: Path) -> "FeaturesManifest":
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError as e:
            raise DataError(f"no feature-stage manifest at {path}: run `tfbridge features` first") from e
        return cls(**raw)
