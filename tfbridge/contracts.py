"""Data contracts shared by the stages: the pipeline config, the artifact layout, the manifests.

Every stage reads these and nothing else of another stage: what passes between
stages is files on disk, described here. The config is one YAML file, read with
`yaml.safe_load` and validated here once, with errors that name the key.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import keyword
import os
import re
import shutil
import unicodedata
import uuid
from pathlib import Path
from typing import Any, Mapping

import yaml

TASKS = ("regression", "binary", "multiclass")
DATA_FORMATS = ("parquet", "csv")
# In a CSV number column these fields are missing values (R writes NA, pandas an empty field); in a
# string column every field is text, and only an empty one is missing (see README, "Empty strings").
CSV_NULL_VALUES = ("", "NA", "N/A", "NaN", "nan", "null", "NULL")

# normalize_text's punctuation pass, shared by the transform, its ONNX lowering and the scorer's self-check.
# ASCII punctuation; apostrophes are deleted first (don't -> dont), the rest become spaces. Tabs and
# newlines become spaces in the same pass: the split does not change, and the ONNX export, whose
# split breaks on spaces only, needs no replace pass of its own (onnx_export.lowerings.string_split_v2).
PUNCTUATION_AND_WHITESPACE = r"""[!"#$%&()*+,\-./:;<=>?@\[\\\]^_`{|}~\t\n\v\f\r]"""

# Analyzer results travel inside the transform_fn as outputs with this prefix
# (one value repeated per row). They are statistics, not model inputs: the
# materialized TFRecords leave them out and the trainer must skip them.
STAT_OUTPUT_PREFIX = "__stat__"


def materialized_feature_spec(transformed_feature_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The features in the transformed TFRecords: the transform_fn's outputs less its statistics."""
    return {k: v for k, v in transformed_feature_spec.items() if not k.startswith(STAT_OUTPUT_PREFIX)}


class ConfigError(ValueError):
    """The pipeline config is malformed: the message names the file and the key."""


class DataError(ValueError):
    """The input data breaks the contract: the message names the file, column and value."""


class TrainingError(RuntimeError):
    """A training worker died with no retry left: the message names it and quotes its last log lines."""


class StageError(RuntimeError):
    """A stage cannot do its work on valid input (e.g. an op with no ONNX lowering): the message says what to change."""


class BrokenRuntimeError(RuntimeError):
    """A library misbehaves in this process, so a stage would give wrong results: the message says which and why."""


def graph_input_name(column: str) -> str:
    """The name a raw column has inside the transform, the SavedModel signature and the ONNX graph.

    The user's column names are theirs (`Home Team`, `sample.yr`, `price ($)`, `2nd_visit`, `class`,
    `Größe`, `価格`); TF accepts only some names (the signature lower-cases them, a Python keyword is
    not a valid parameter name, an op name cannot hold spaces). Inside, a column is lower-case ASCII
    letters, digits and single underscores, starting with a letter and never a keyword: accents are
    dropped, other letters become their code point (`u4fa1`), anything else `_`. The manifests map
    each raw column to it, and every consumer feeds the graph through that mapping.
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
    if not name or not name[0].isalpha() or keyword.iskeyword(name) or keyword.issoftkeyword(name):
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


LABEL_TRANSFORMS = ("none", "log")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The `train:` section: the model and how it is fitted. Every key has a default."""

    hidden_units: tuple[int, ...] = (64, 32)  # () is a linear model on the same inputs
    embedding_dim: int | None = None  # None: min(16, about 1.6 * width ** 0.56) per id feature
    epochs: int = 10
    batch_size: int = 256  # global: per-replica batch x replicas
    learning_rate: float = 1e-3
    seed: int = 42
    label_transform: str = "none"  # regression: "log" trains on log(label), predicts in label units
    workers: int = 2  # worker processes the embedded launcher starts

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> "TrainConfig":
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: 'train' must be a mapping, got {raw!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) train.{unknown}; expected some of {sorted(fields)}")
        values = dict(raw)

        def positive_int(key: str) -> None:
            v = values[key]
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ConfigError(f"{source}: 'train.{key}' must be a positive integer, got {v!r}")

        for key in ("epochs", "batch_size", "workers"):
            if key in values:
                positive_int(key)
        if "embedding_dim" in values and values["embedding_dim"] is not None:
            positive_int("embedding_dim")
        if "seed" in values and not isinstance(values["seed"], int):
            raise ConfigError(f"{source}: 'train.seed' must be an integer, got {values['seed']!r}")
        if "hidden_units" in values:
            units = values["hidden_units"]
            if not (isinstance(units, list) and all(isinstance(u, int) and u >= 1 for u in units)):
                raise ConfigError(f"{source}: 'train.hidden_units' must be a list of positive integers "
                                  f"([] for a linear model), got {units!r}")
            values["hidden_units"] = tuple(units)
        if "learning_rate" in values:
            lr = values["learning_rate"]
            if not (isinstance(lr, (int, float)) and lr > 0):
                raise ConfigError(f"{source}: 'train.learning_rate' must be a positive number, got {lr!r}")
            values["learning_rate"] = float(lr)
        if values.get("label_transform", "none") not in LABEL_TRANSFORMS:
            raise ConfigError(f"{source}: 'train.label_transform' must be one of {LABEL_TRANSFORMS}, "
                              f"got {values['label_transform']!r}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden_units"] = list(self.hidden_units)
        return out


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
    train: TrainConfig = TrainConfig()
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
        partners = [str(o) for steps in features.values() for s in steps if s.name == "polynomial"
                    and isinstance(s.params.get("with"), list) for o in s.params["with"]]
        graph_input_names([label, *features, *partners], f"{source}: features")

        split_raw = raw.get("split") or {}
        if not isinstance(split_raw, dict) or set(split_raw) - {"eval_fraction"}:
            raise ConfigError(f"{source}: 'split' takes only 'eval_fraction', got {split_raw!r}")
        eval_fraction = split_raw.get("eval_fraction", SplitConfig.eval_fraction)
        if not isinstance(eval_fraction, (int, float)) or not 0.0 <= eval_fraction < 1.0:
            raise ConfigError(f"{source}: 'split.eval_fraction' must be a number in [0, 1), got {eval_fraction!r}")

        train = TrainConfig.from_dict(raw.get("train"), source)
        if train.label_transform != "none" and task != "regression":
            raise ConfigError(f"{source}: 'train.label_transform' applies to regression only, not {task}")

        return cls(
            data=DataSource(path=data_path, format=fmt),
            label=label,
            task=task,
            output=output,
            features=features,
            preprocessing_fn=preprocessing_fn,
            split=SplitConfig(eval_fraction=float(eval_fraction)),
            train=train,
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
            "train": self.train.to_dict(),
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

    @property
    def model_dir(self) -> Path:
        """saved_model/, model.onnx, metrics.json, manifest.json (see ModelFiles); backup/ while training runs."""
        return self.root / "model"

    @property
    def saved_model_dir(self) -> Path:
        return ModelFiles(self.model_dir).saved_model

    @property
    def scores_dir(self) -> Path:
        """`tfbridge run` scores the config's data here (Parquet: the input's columns and the predictions)."""
        return self.root / "scores"

    @property
    def onnx_path(self) -> Path:
        """One ONNX graph from raw columns to predictions (the export stage)."""
        return ModelFiles(self.model_dir).onnx

    @property
    def backup_dir(self) -> Path:
        return self.model_dir / "backup"

    @property
    def metrics_path(self) -> Path:
        return self.model_dir / "metrics.json"

    @property
    def model_manifest_path(self) -> Path:
        return ModelFiles(self.model_dir).manifest


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """What a model directory holds, wherever it was copied to (the scorer takes any such directory)."""

    directory: Path

    @property
    def saved_model(self) -> Path:
        return self.directory / "saved_model"

    @property
    def onnx(self) -> Path:
        return self.directory / "model.onnx"

    @property
    def manifest(self) -> Path:
        return self.directory / "manifest.json"


@dataclasses.dataclass(frozen=True)
class FeatureOutput:
    """One transformed feature as the model sees it.

    kind: number (float, one per row), vector (float, `width` per row), ids
    (int64 in [0, width), one per row), token_ids (int64 in [0, width), a list
    per row), text or tokens (strings: not a model input until a vocabulary
    step turns them into ids). width is None where it is not known.
    """

    kind: str
    width: int | None = None


@dataclasses.dataclass(frozen=True)
class FeaturesManifest:
    """What the feature stage produced, for the stages after it (written as features/manifest.json)."""

    raw_columns: Mapping[str, str]  # column -> "float" | "int" | "string", as read by the transform
    nullable: tuple[str, ...]  # raw columns whose missing values the transform imputes
    input_names: Mapping[str, str]  # raw column (label too) -> its name inside the transform (graph_input_name)
    label: str
    task: str
    outputs: Mapping[str, FeatureOutput]  # transformed feature -> what it is, less the label
    rows: Mapping[str, int]  # split -> row count
    shards: Mapping[str, int]  # split -> file count
    versions: Mapping[str, str]
    config: Mapping[str, Any]

    @property
    def label_key(self) -> str:
        """The label's name in the transformed data."""
        return self.input_names[self.label]

    def write(self, path: Path) -> None:
        write_json_atomic(dataclasses.asdict(self), path)

    @classmethod
    def read(cls, path: Path) -> "FeaturesManifest":
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError as e:
            raise DataError(f"no feature-stage manifest at {path}: run `tfbridge features` first") from e
        raw["outputs"] = {k: FeatureOutput(**v) for k, v in raw["outputs"].items()}
        raw["nullable"] = tuple(raw["nullable"])
        return cls(**raw)


@dataclasses.dataclass(frozen=True)
class ModelManifest:
    """What the training stage exported (model/manifest.json): enough to score raw data with it.

    `inputs` are the raw columns the model reads, by the user's names, one tensor
    [batch] each: dtype "float" (float32), "int" (int64) or "string"; a nullable
    column takes NaN (numbers) or "" (strings) for a missing value, which the
    transform imputes. `input_names` gives each one's name in the SavedModel
    signature and the ONNX graph (`graph_input_name`).
    """

    inputs: Mapping[str, Mapping[str, Any]]  # column -> {"dtype": ..., "nullable": bool}
    input_names: Mapping[str, str]  # column -> graph input name
    outputs: tuple[str, ...]  # the signature's outputs: prediction, or label and probabilities
    label: str
    task: str
    classes: tuple[Any, ...] | None  # classification: the label value of each probability column
    label_transform: str
    versions: Mapping[str, str]
    checksums: Mapping[str, str]  # path under model/ -> sha256, for every exported file
    onnx: Mapping[str, Any] | None = None  # after `tfbridge export`: see OnnxGraph

    def write(self, path: Path) -> None:
        write_json_atomic(dataclasses.asdict(self), path)

    @classmethod
    def read(cls, path: Path) -> "ModelManifest":
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError as e:
            raise DataError(f"no model manifest at {path}: run `tfbridge train` first") from e
        raw["outputs"] = tuple(raw["outputs"])
        if raw["classes"] is not None:
            raw["classes"] = tuple(raw["classes"])
        return cls(**raw)


@dataclasses.dataclass(frozen=True)
class OnnxGraph:
    """The exported ONNX graph (model/model.onnx) as the scorer must feed it: the `onnx` entry of ModelManifest.

    inputs/outputs: name -> {"dtype": ONNX element type ("float", "int64", "string"), "shape": [None, ...]}.
    custom_ops_library: "onnxruntime_extensions" when the graph uses its ops (register its library).
    """

    path: str  # under model/
    opset: int
    inputs: Mapping[str, Mapping[str, Any]]
    outputs: Mapping[str, Mapping[str, Any]]
    custom_ops_library: str | None
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(value: Any, path: Path) -> None:
    """Writes JSON beside the target and renames it into place: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def replace_dir(staging: Path, final: Path) -> None:
    """Renames a complete staging directory into place, then drops the previous one.

    Stages write into a staging directory beside the final one, so a failed
    run leaves no partial output and an earlier run's stays intact until then.
    """
    previous = None
    if final.exists():
        previous = final.with_name(f".{final.name}-previous-{uuid.uuid4().hex[:8]}")
        final.rename(previous)
    staging.rename(final)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
