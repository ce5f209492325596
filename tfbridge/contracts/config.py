"""The pipeline config: one YAML file, read as `yaml.safe_load` reads it (keys as written: ConfigLoader) and
validated here once.

Errors name the file and the key. What each transform step accepts is the feature stage's to check
(`tft_features.steps`): here a step is its name and its parameters as written.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import yaml

from tfbridge.contracts.columns import graph_input_names
from tfbridge.contracts.errors import ConfigError
from tfbridge.contracts.layout import ArtifactLayout
from tfbridge import storage
from tfbridge.storage import Location, StorageError

TASKS = ("regression", "binary", "multiclass")
DATA_FORMATS = ("parquet", "csv")
# What the feature stage writes the transformed rows as (`layout.TRANSFORMED`): Parquet, one
# column per feature, which training reads as columns; or gzipped tf.Example TFRecords, for TFX trainers.
OUTPUT_FORMATS = ("parquet", "tfrecord")


class ConfigLoader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader (plain data, never code), except that a mapping key is the text written.

    Every key of a config is a name (a section, a parameter, a column), and YAML would otherwise read some
    names as numbers or booleans: the column `010` as 8, `on` as True, `1.10` as 1.1. A key that is not a
    scalar (`? [a, b]`) is an error.
    """

    def construct_mapping(self, node, deep=False):
        self.flatten_mapping(node)  # `<<` merge keys, as SafeLoader resolves them
        mapping = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a name, not a "
                                                        f"{key_node.id}", key_node.start_mark)
            mapping[key_node.value] = self.construct_object(value_node, deep=deep)
        return mapping


def _text(value: Any, key: str, source: str) -> str:
    """A name or a path as the config wrote it. YAML reads some unquoted text as another type (`010` as 8, `on` as
    True, `1.10` as 1.1), and str() of that is not what was written: such a value is an error, never a guess."""
    if isinstance(value, str):
        return value
    raise ConfigError(f"{source}: '{key}' must be text, but YAML read it as the {type(value).__name__} {value!r}; "
                      f"quote it (e.g. \"010\", \"on\")")


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


def _column_options(raw: dict, where: str, column: str, datetime_formats: dict[str, str | None]) -> Any:
    """A column written with options, `{datetime: {format: "%Y-%m-%d %H:%M:%S"}, steps: [...]}`: records its
    datetime format (None: ISO 8601) and returns its steps. The format is how the column's text reads as dates
    and times (CSV, or a string column); which steps read dates is the feature stage's to check."""
    unknown = sorted(set(raw) - {"steps", "datetime"})
    if unknown or "steps" not in raw:
        raise ConfigError(f"{where}: a column with options is {{datetime: {{format: \"%Y-%m-%d\"}}, steps: [...]}}; "
                          f"got the keys {sorted(raw)}")
    options = raw.get("datetime")
    if options is None:
        options = {}
    if not isinstance(options, dict) or set(options) - {"format"}:
        raise ConfigError(f"{where}.datetime: takes only 'format' (a strptime format like \"%Y-%m-%d %H:%M:%S\"), "
                          f"got {options!r}")
    datetime_format = options.get("format")
    if datetime_format is not None and not (isinstance(datetime_format, str) and "%" in datetime_format):
        raise ConfigError(f"{where}.datetime.format: expected a strptime format like \"%Y-%m-%d %H:%M:%S\" "
                          f"(%Y year, %m month, %d day, %H hour, %M minute, %S second, %z zone), got "
                          f"{datetime_format!r}")
    if "datetime" in raw:
        datetime_formats[column] = datetime_format
    return raw["steps"]


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where raw rows come from: a Parquet file, directory or glob, or CSV files."""

    path: str
    format: str

    def pattern(self) -> str:
        """A glob of the files (a path or a URI, wildcards in the last part): a directory means every `*.parquet`
        (or `*.csv`) file directly in it."""
        location = Location.of(self.path)
        if not any(ch in location.name for ch in "*?[") and location.is_dir():
            return str(location / f"*.{self.format}")
        return self.path

    def files(self) -> list[str]:
        """The files this source names (paths or URIs), sorted."""
        return [str(location) for location in storage.glob(self.pattern())]


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """The train/eval split: rows are assigned by a hash of their raw values, so a rerun agrees."""

    eval_fraction: float = 0.2


LABEL_TRANSFORMS = ("none", "log")
NUMERIC_EMBEDDINGS = ("none", "periodic")
CLASS_WEIGHTS = ("none", "balanced")
MAX_SYNC_EVERY = 64  # local steps between averages (each is a copy of the step in the compiled graph)


MODELS = ("network", "gbdt")


@dataclasses.dataclass(frozen=True)
class GbdtConfig:
    """`train.gbdt`: the gradient-boosted trees of `train.model: gbdt` (XGBoost's hist method). Every key has a
    default."""

    trees: int = 1000  # boosting rounds at most: with validation rows, boosting stops once their loss stops improving
    max_depth: int = 6
    learning_rate: float = 0.1  # XGBoost's eta
    patience: int = 50  # rounds without a better validation loss before boosting stops; the best round is kept

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> "GbdtConfig":
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: 'train.gbdt' must be a mapping, got {raw!r}")
        unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) train.gbdt.{unknown}; expected some of "
                              f"{sorted(f.name for f in dataclasses.fields(cls))}")
        for key in ("trees", "max_depth", "patience"):
            v = raw.get(key, 1)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ConfigError(f"{source}: 'train.gbdt.{key}' must be a positive integer, got {v!r}")
        rate = raw.get("learning_rate", 0.1)
        if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 < rate <= 1):
            raise ConfigError(f"{source}: 'train.gbdt.learning_rate' must be a number in (0, 1], got {rate!r}")
        return cls(**{**raw, "learning_rate": float(rate)})


def _one_or_several(value: Any, key: str, allowed: tuple[str, ...], source: str,
                    validation_fraction: float) -> str | tuple[str, ...]:
    """A setting that names one of `allowed`, or a list of different ones to train each of and keep the best (by
    validation loss, so there must be validation rows); a list of one is that one."""
    several = isinstance(value, list)
    if not (value in allowed if not several else value and len(set(value)) == len(value)
            and all(isinstance(v, str) and v in allowed for v in value)):
        raise ConfigError(f"{source}: '{key}' must be one of {allowed} or a list of different ones (each trained, "
                          f"the one with the lowest validation loss kept), got {value!r}")
    if not several:
        return value
    if len(value) > 1 and validation_fraction == 0:
        raise ConfigError(f"{source}: '{key}' lists {value}, which are told apart by their loss on the validation "
                          f"rows, but 'train.validation_fraction' is 0: give it a fraction (e.g. 0.1) or name one")
    return value[0] if len(value) == 1 else tuple(value)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The `train:` section: the model and how it is fitted. Every key has a default."""

    hidden_units: tuple[int, ...] = (64, 32)  # () is a linear model on the same inputs
    embedding_dim: int | None = None  # None: min(16, about 1.6 * width ** 0.56) per id feature
    epochs: int = 100  # at most: with validation rows, training stops once their loss stops improving
    batch_size: int | None = None  # global (per-replica batch x replicas); None: by the train split's size
    learning_rate: float = 1e-3
    seed: int = 42
    label_transform: str = "none"  # regression: "log" trains on log(label), predicts in label units
    workers: int | str = "auto"  # worker processes the embedded launcher starts; "auto": see tf_train.launcher
    # 1: synchronous updates (every step's gradients all-reduced). k > 1: local SGD, each worker takes k steps
    # on its own batches, then the workers' weights are averaged: one collective per k steps instead of k.
    sync_every: int = 1
    # Every round(1 / fraction)-th row of each train shard is held out as validation rows (never the eval
    # split): their loss after each epoch stops training early and halves the learning rate on a plateau.
    validation_fraction: float = 0.1  # 0: no validation rows, train all `epochs` at one learning rate
    patience: int = 6  # epochs without a better validation loss before training stops; the best epoch is kept
    # "periodic": each number feature through a learned periodic embedding; a list ([none, periodic]): a network
    # of each, trained in turn, the one with the lowest validation loss kept (as with several models)
    numeric_embedding: str | tuple[str, ...] = "none"
    class_weight: str = "none"  # classification: "balanced" weighs each class by rows / (classes x its rows)
    # "gbdt": gradient-boosted trees (XGBoost) on the same transformed features, exported the same way; several
    # (a list: [network, gbdt]) are trained in turn and the one with the lowest validation loss is kept
    model: str | tuple[str, ...] = "network"
    gbdt: GbdtConfig = GbdtConfig()

    @property
    def candidates(self) -> tuple["TrainConfig", ...]:
        """The models to train, each a TrainConfig naming one (itself when it names one): every model of `model`,
        a network once per `numeric_embedding` (the trees take no embedding)."""
        if isinstance(self.model, str) and isinstance(self.numeric_embedding, str):
            return (self,)
        models = (self.model,) if isinstance(self.model, str) else self.model
        embeddings = ((self.numeric_embedding,) if isinstance(self.numeric_embedding, str)
                      else self.numeric_embedding)
        return tuple(dataclasses.replace(self, model=model, numeric_embedding=embedding)
                     for model in models for embedding in (embeddings if model == "network" else embeddings[:1]))

    @property
    def candidate_name(self) -> str:
        """What a TrainConfig naming one model is called among several: "network", "network (periodic)", "gbdt"."""
        return (f"{self.model} ({self.numeric_embedding})"
                if self.model == "network" and self.numeric_embedding != "none" else str(self.model))

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

        for key in ("epochs", "patience", "sync_every"):
            if key in values:
                positive_int(key)
        workers = values.get("workers", "auto")
        if workers != "auto" and not (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1):
            raise ConfigError(f"{source}: 'train.workers' must be a positive integer or \"auto\", got {workers!r}")
        if values.get("sync_every", 1) > MAX_SYNC_EVERY:
            raise ConfigError(f"{source}: 'train.sync_every' must be at most {MAX_SYNC_EVERY}, "
                              f"got {values['sync_every']!r}")
        for key in ("embedding_dim", "batch_size"):
            if values.get(key) is not None:
                positive_int(key)
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
        if "validation_fraction" in values:
            fraction = values["validation_fraction"]
            if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 <= fraction <= 0.5):
                raise ConfigError(f"{source}: 'train.validation_fraction' must be a number in [0, 0.5], "
                                  f"got {fraction!r}")
            values["validation_fraction"] = float(fraction)
        if values.get("class_weight", "none") not in CLASS_WEIGHTS:
            raise ConfigError(f"{source}: 'train.class_weight' must be one of {CLASS_WEIGHTS}, "
                              f"got {values['class_weight']!r}")
        for key, allowed in (("numeric_embedding", NUMERIC_EMBEDDINGS), ("model", MODELS)):
            if key in values:
                values[key] = _one_or_several(values[key], f"train.{key}", allowed, source,
                                              values.get("validation_fraction", 0.1))
        values["gbdt"] = GbdtConfig.from_dict(values.get("gbdt"), source)
        if values.get("label_transform", "none") not in LABEL_TRANSFORMS:
            raise ConfigError(f"{source}: 'train.label_transform' must be one of {LABEL_TRANSFORMS}, "
                              f"got {values['label_transform']!r}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden_units"] = list(self.hidden_units)
        for key in ("model", "numeric_embedding"):
            out[key] = out[key] if isinstance(out[key], str) else list(out[key])
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
    output_format: str = "parquet"  # the transformed rows' files: OUTPUT_FORMATS
    # Columns declared `{datetime: {format: F}, steps: [...]}`: their text is read with F (None: ISO 8601).
    datetime_formats: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    split: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()
    source: str = "<config>"

    @property
    def layout(self) -> ArtifactLayout:
        return ArtifactLayout(Location.of(self.output))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "PipelineConfig":
        path = str(path)
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.load(f, Loader=ConfigLoader)
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
        known = {"data", "label", "task", "features", "preprocessing_fn", "output", "output_format", "split", "train"}
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
        data_path = _text(data_raw["path"], "data.path", source)
        fmt = data_raw.get("format") or ("csv" if data_path.lower().endswith(".csv") else "parquet")
        if fmt not in DATA_FORMATS:
            raise ConfigError(f"{source}: 'data.format' must be one of {DATA_FORMATS}, got {fmt!r}")

        label = _text(required("label"), "label", source)
        task = required("task")
        if task not in TASKS:
            raise ConfigError(f"{source}: 'task' must be one of {TASKS}, got {task!r}")
        output = _text(required("output"), "output", source)
        output_format = raw.get("output_format", "parquet")
        if output_format not in OUTPUT_FORMATS:
            raise ConfigError(f"{source}: 'output_format' must be one of {OUTPUT_FORMATS}, got {output_format!r}")
        for key, value in (("data.path", data_path), ("output", output)):
            try:
                location = Location.of(value)
            except StorageError as e:
                raise ConfigError(f"{source}: '{key}': {e}") from None
            if key == "output" and output_format == "tfrecord" and not location.is_local:
                raise ConfigError(f"{source}: 'output_format: tfrecord' needs a local 'output' (TensorFlow reads "
                                  f"no object store), got {value!r}: use 'output_format: parquet'")

        features_raw = raw.get("features")
        preprocessing_fn = raw.get("preprocessing_fn")
        if features_raw and preprocessing_fn:
            raise ConfigError(f"{source}: give either 'features' or 'preprocessing_fn', not both")
        if not features_raw and not preprocessing_fn:
            raise ConfigError(f"{source}: missing 'features' (or a 'preprocessing_fn: package.module:function')")
        if preprocessing_fn is not None and (not isinstance(preprocessing_fn, str) or ":" not in preprocessing_fn):
            raise ConfigError(f"{source}: 'preprocessing_fn' must read 'package.module:function', got {preprocessing_fn!r}")

        features: dict[str, tuple[TransformStep, ...]] = {}
        datetime_formats: dict[str, str | None] = {}
        if features_raw:
            if not isinstance(features_raw, dict):
                raise ConfigError(f"{source}: 'features' must map column names to lists of steps")
            for column, steps in features_raw.items():
                where = f"{source}: features.{column}"
                _text(column, f"features.{column}", source)
                if column == label:
                    raise ConfigError(f"{where}: the label '{label}' cannot also be a feature")
                if isinstance(steps, dict) and ("steps" in steps or "datetime" in steps):
                    steps = _column_options(steps, where, column, datetime_formats)
                if isinstance(steps, (str, dict)):
                    steps = [steps]
                if not isinstance(steps, list) or not steps:
                    raise ConfigError(f"{where}: expected a non-empty list of transform steps")
                features[column] = tuple(TransformStep.parse(s, where) for s in steps)
        graph_input_names([label, *features], f"{source}: features")

        split_raw = raw.get("split") or {}
        if not isinstance(split_raw, dict) or set(split_raw) - {"eval_fraction"}:
            raise ConfigError(f"{source}: 'split' takes only 'eval_fraction', got {split_raw!r}")
        eval_fraction = split_raw.get("eval_fraction", SplitConfig.eval_fraction)
        if not isinstance(eval_fraction, (int, float)) or not 0.0 <= eval_fraction < 1.0:
            raise ConfigError(f"{source}: 'split.eval_fraction' must be a number in [0, 1), got {eval_fraction!r}")

        train = TrainConfig.from_dict(raw.get("train"), source)
        if train.label_transform != "none" and task != "regression":
            raise ConfigError(f"{source}: 'train.label_transform' applies to regression only, not {task}")
        if train.class_weight != "none" and task == "regression":
            raise ConfigError(f"{source}: 'train.class_weight' applies to binary and multiclass, not regression")

        return cls(
            data=DataSource(path=data_path, format=fmt),
            label=label,
            task=task,
            output=output,
            features=features,
            preprocessing_fn=preprocessing_fn,
            output_format=output_format,
            datetime_formats=datetime_formats,
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
            "output_format": self.output_format,
            "split": {"eval_fraction": self.split.eval_fraction},
            "train": self.train.to_dict(),
        }
        if self.features:
            out["features"] = {c: [s.to_yaml() for s in steps] for c, steps in self.features.items()}
            for column, datetime_format in self.datetime_formats.items():
                out["features"][column] = {"datetime": {"format": datetime_format} if datetime_format else {},
                                           "steps": out["features"][column]}
        if self.preprocessing_fn:
            out["preprocessing_fn"] = self.preprocessing_fn
        return out
