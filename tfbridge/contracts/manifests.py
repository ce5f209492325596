"""The manifests: what a stage produced, read back by the stages after it as the same typed objects.

features/manifest.json (FeaturesManifest) and model/manifest.json (ModelManifest, with OnnxGraph once
the graph is exported). Each is written last, and commits the files it names: they lie under an attempt prefix of
their own (`tfbridge.storage.attempts`), each with its sha256, checked when a stage reads it back.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import Any, Mapping

from tfbridge.contracts.columns import RawColumn
from tfbridge.contracts.errors import DataError
from tfbridge.contracts.files import write_json_atomic
from tfbridge.contracts.layout import SAVED_MODEL, STATS, TRANSFORMED
from tfbridge.storage import ChecksumMismatch, Location
from tfbridge.storage.attempts import local_copy

# Analyzer results travel inside the transform_fn as outputs with this prefix
# (one value repeated per row). They are statistics, not model inputs: the
# transformed shard files leave them out and the trainer must skip them.
STAT_OUTPUT_PREFIX = "__stat__"


def materialized_feature_spec(transformed_feature_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The features in the transformed shard files: the transform_fn's outputs less its statistics."""
    return {k: v for k, v in transformed_feature_spec.items() if not k.startswith(STAT_OUTPUT_PREFIX)}


class FeatureKind(enum.StrEnum):
    """What a value is after a transform step (and, for the last step, what the model is given).

    number: float32 [batch]; vector: float32 [batch, width]; ids: int64 [batch] in [0, width);
    token_ids: int64 [batch, *] (a list per row) in [0, width); text: string [batch]; tokens: string
    [batch, *]; timestamp: int64 [batch], whole seconds since 1970-01-01 00:00 UTC (a raw date or time
    inside the transform). Text and tokens are no model input until a vocabulary step turns them into ids,
    a timestamp until a date step (calendar, cyclical, since) turns it into numbers.
    """

    NUMBER = "number"
    VECTOR = "vector"
    IDS = "ids"
    TOKEN_IDS = "token_ids"
    TEXT = "text"
    TOKENS = "tokens"
    TIMESTAMP = "timestamp"

    @property
    def is_model_input(self) -> bool:
        return self not in (FeatureKind.TEXT, FeatureKind.TOKENS, FeatureKind.TIMESTAMP)


@dataclasses.dataclass(frozen=True)
class FeatureOutput:
    """One transformed feature as the model sees it; width is None where it is not known.

    unseen_ids: for ids from a vocabulary, the range [start, stop) of the ids a value outside it gets: its OOV
    buckets, or (-1, 0) with none. The trainer shows the model some training rows under those ids, so that an
    unseen value meets an embedding learned from data. None: no value is unseen (buckets) or nobody knows.
    """

    kind: FeatureKind
    width: int | None = None
    unseen_ids: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class ShardFile:
    """One file of transformed rows, as the feature stage wrote it: readers check what they read against it."""

    name: str  # under <attempt>/transformed/ (a check-rows file: under <attempt>/)
    rows: int
    sha256: str


def _read_json(path: Location, what: str, stage: str) -> dict:
    try:
        return json.loads(Location.of(path).read_text())
    except FileNotFoundError as e:
        raise DataError(f"no {what} at {path}: run `tfbridge {stage}` first") from e


def named_attempts(manifest_path: Location) -> tuple[str, ...] | None:
    """The attempts a manifest names (its own; a model's ONNX graph's too), read from its JSON alone, so that a
    manifest of another version still protects its files: () when there is none, None when it cannot be read (then
    no attempt may be removed)."""
    try:
        raw = json.loads(Location.of(manifest_path).read_text())
    except FileNotFoundError:
        return ()
    except (OSError, ValueError):
        return None
    graph = raw.get("onnx") or {}
    return tuple(name for name in (raw.get("attempt"), str(graph.get("path", "")).split("/")[0]) if name)


def _checked(location: Location, sha256: str, stage: str) -> Location:
    """`location`, if it holds the file a manifest names; DataError naming it otherwise."""
    try:
        found = location.sha256()
    except FileNotFoundError:
        found = None
    if found != sha256:
        raise DataError(f"{location} is missing or is not the file the {stage} stage wrote (its sha256 differs "
                        f"from its manifest): rerun `tfbridge {stage}`")
    return location


def _local_copy(directory: Location, files: Mapping[str, str], stage: str) -> Path:
    try:
        return local_copy(directory, files)
    except ChecksumMismatch as e:
        raise DataError(f"{e}: rerun `tfbridge {stage}`") from e


def _raw_columns(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, RawColumn]:
    return {name: RawColumn(**column) for name, column in raw.items()}


@dataclasses.dataclass(frozen=True)
class FeaturesManifest:
    """What the feature stage produced, for the stages after it (written as features/manifest.json)."""

    raw_columns: Mapping[str, RawColumn]  # every column the transform reads, label included, by the user's name
    input_names: Mapping[str, str]  # raw column (label too) -> its name inside the transform (graph_input_name)
    label: str
    task: str
    outputs: Mapping[str, FeatureOutput]  # transformed feature -> what it is, less the label
    rows: Mapping[str, int]  # split -> row count
    shards: Mapping[str, int]  # split -> file count
    versions: Mapping[str, str]
    config: Mapping[str, Any]
    fingerprint: str = ""  # what it was made from (fingerprints.features_fingerprint)
    format: str = "tfrecord"  # of the transformed rows (config.OUTPUT_FORMATS); manifests before it had TFRecords
    files: Mapping[str, tuple[ShardFile, ...]] = dataclasses.field(default_factory=dict)  # split -> its files
    # Raw rows of the eval split (train without one), as the stage read them: the hand-off checks' rows.
    check_rows: ShardFile | None = None
    attempt: str = ""  # the directory under features/ that holds every file named here
    # The transform (transform_fn/, transformed_metadata/, metadata/) and stats.json: path -> sha256.
    artifacts: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def directory(self, features_dir: Location) -> Location:
        return Location.of(features_dir) / self.attempt

    def shard_paths(self, features_dir: Location, split: str) -> tuple[str, ...]:
        """The split's files (paths or URIs), in shard order, each checked against what the stage wrote (its
        sha256): a file changed or lost since raises DataError naming it."""
        transformed = self.directory(features_dir) / TRANSFORMED
        return tuple(str(_checked(transformed / f.name, f.sha256, "features")) for f in self.files.get(split, ()))

    def transform_dir(self, features_dir: Location) -> Path:
        """A local directory that `tft.TFTransformOutput` reads: the attempt itself on local disk, a checked copy
        of the transform's files from a store."""
        files = {name: sha for name, sha in self.artifacts.items() if name != STATS}
        return _local_copy(self.directory(features_dir), files, "features")

    def stats(self, features_dir: Location) -> dict:
        """stats.json: what the analyzers found, per feature."""
        location = self.directory(features_dir) / STATS
        return json.loads(_checked(location, self.artifacts[STATS], "features").read_text())

    def read_check_rows(self, features_dir: Location):
        """The raw rows the hand-off checks score (a pyarrow Table, the user's column names), checked against
        their sha256; DataError when the stage kept none or the file changed since."""
        import pyarrow.parquet as pq

        if self.check_rows is None:
            raise DataError(f"{Location.of(features_dir) / 'manifest.json'} names no check rows (written by an "
                            f"older version): rerun `tfbridge features`")
        location = _checked(self.directory(features_dir) / self.check_rows.name, self.check_rows.sha256, "features")
        with location.open_input() as f:
            return pq.read_table(f)

    @property
    def label_key(self) -> str:
        """The label's name in the transformed data."""
        return self.input_names[self.label]

    @property
    def model_inputs(self) -> dict[str, RawColumn]:
        """The raw columns a model built on these features reads: all but the label."""
        return {name: column for name, column in self.raw_columns.items() if name != self.label}

    def write(self, path: Location) -> None:
        write_json_atomic(dataclasses.asdict(self), path)

    @classmethod
    def read(cls, path: Location) -> "FeaturesManifest":
        raw = _read_json(path, "feature-stage manifest", "features")
        raw["raw_columns"] = _raw_columns(raw["raw_columns"])
        raw["outputs"] = {k: FeatureOutput(FeatureKind(v["kind"]), v["width"],
                                           tuple(v["unseen_ids"]) if v.get("unseen_ids") else None)
                          for k, v in raw["outputs"].items()}
        raw["files"] = {split: tuple(ShardFile(**f) for f in files) for split, files in raw.get("files", {}).items()}
        if raw.get("check_rows") is not None:
            raw["check_rows"] = ShardFile(**raw["check_rows"])
        return cls(**raw)


@dataclasses.dataclass(frozen=True)
class ParityRecord:
    """The export's check of its graph against the SavedModel (onnx_export.parity_gate): the graph it proved
    (sha256), on how many rows, and the largest difference per output. A graph whose sha256 differs was not
    checked in that state, and is checked again before it is used."""

    sha256: str
    rows: int
    max_abs_diff: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class OnnxGraph:
    """The exported ONNX graph as the scorer must feed it: the `onnx` entry of ModelManifest.

    inputs/outputs: name -> {"dtype": ONNX element type ("float", "int64", "string"), "shape": [None, ...]}.
    custom_ops_library: "onnxruntime_extensions" when the graph uses its ops (register its library).
    """

    path: str  # under model/: <the export's attempt>/model.onnx
    opset: int
    inputs: Mapping[str, Mapping[str, Any]]
    outputs: Mapping[str, Mapping[str, Any]]
    custom_ops_library: str | None
    sha256: str
    fingerprint: str = ""  # what it was made from (fingerprints.onnx_fingerprint)
    parity: ParityRecord | None = None  # its check against the SavedModel; None: never checked

    @property
    def proven(self) -> bool:
        """The graph as it is now passed the export's parity check."""
        return self.parity is not None and self.parity.sha256 == self.sha256


@dataclasses.dataclass(frozen=True)
class TrainedCandidate:
    """One of the models `train.model: [network, gbdt]` (or `numeric_embedding: [none, periodic]`) trained in turn
    (ModelManifest.candidates): how it did, for the report and the console. The one with the lowest validation
    loss is kept; only its files are committed."""

    model: str  # TrainConfig.candidate_name: "network", "network (periodic)", "gbdt"
    validation_loss: float | None  # of the epoch or boosting round it kept; None: no validation rows
    kept_epoch: int  # that epoch or round
    eval: Mapping[str, float]  # its eval-split metrics (its metrics.json's "eval"), empty without an eval split
    seconds: float | None  # its training, workers started to commit; None: committed by an earlier run, reused
    kept: bool = False  # the model the manifest commits


@dataclasses.dataclass(frozen=True)
class ModelManifest:
    """What the training stage exported (model/manifest.json): enough to score raw data with it.

    `inputs` are the raw columns the model reads, by the user's names, one tensor [batch] each (see
    RawColumn). `input_names` gives each one's name in the SavedModel signature and the ONNX graph.
    """

    inputs: Mapping[str, RawColumn]
    input_names: Mapping[str, str]  # column -> graph input name
    outputs: tuple[str, ...]  # the signature's outputs: prediction, or label and probabilities
    label: str
    task: str
    classes: tuple[Any, ...] | None  # classification: the label value of each probability column
    label_transform: str
    versions: Mapping[str, str]
    checksums: Mapping[str, str]  # path under the attempt -> sha256, for every file training wrote
    onnx: OnnxGraph | None = None  # after the export stage
    fingerprint: str = ""  # what it was made from (fingerprints.model_fingerprint)
    attempt: str = ""  # the directory under model/ that holds the files of `checksums`
    candidates: tuple[TrainedCandidate, ...] = ()  # with several models to choose from, each one's record

    def file(self, model_dir: Location, name: str) -> Location:
        """A file training wrote (metrics.json, eval_predictions.parquet), checked against its sha256."""
        location = Location.of(model_dir) / self.attempt / name
        return _checked(location, self.checksums.get(name, ""), "train")

    def saved_model_dir(self, model_dir: Location) -> Path:
        """A local directory holding the SavedModel (TensorFlow reads it from local disk): the attempt's own on
        local disk, a checked copy from a store."""
        prefix = SAVED_MODEL + "/"
        files = {name[len(prefix):]: sha for name, sha in self.checksums.items() if name.startswith(prefix)}
        return _local_copy(Location.of(model_dir) / self.attempt / SAVED_MODEL, files, "train")

    def write(self, path: Location) -> None:
        write_json_atomic(dataclasses.asdict(self), path)

    @classmethod
    def read(cls, path: Location) -> "ModelManifest":
        raw = _read_json(path, "model manifest", "train")
        raw["inputs"] = _raw_columns(raw["inputs"])
        raw["outputs"] = tuple(raw["outputs"])
        if raw["classes"] is not None:
            raw["classes"] = tuple(raw["classes"])
        raw["candidates"] = tuple(TrainedCandidate(**c) for c in raw.get("candidates", ()))
        if raw.get("onnx") is not None:
            graph = raw["onnx"]
            raw["onnx"] = OnnxGraph(**{**graph, "parity": ParityRecord(**graph["parity"]) if graph.get("parity")
                                       else None})
        return cls(**raw)
