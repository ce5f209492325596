"""The manifests: what a stage produced, read back by the stages after it as the same typed objects.

features/manifest.json (FeaturesManifest) and model/manifest.json (ModelManifest, with OnnxGraph once
the graph is exported). Each is written last, through `staged`, so it only ever names complete files.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import Any, Mapping

from tfbridge.contracts.columns import RawColumn
from tfbridge.contracts.errors import DataError
from tfbridge.contracts.files import file_sha256, write_json_atomic

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
    [batch, *]. Text and tokens are no model input until a vocabulary step turns them into ids.
    """

    NUMBER = "number"
    VECTOR = "vector"
    IDS = "ids"
    TOKEN_IDS = "token_ids"
    TEXT = "text"
    TOKENS = "tokens"

    @property
    def is_model_input(self) -> bool:
        return self not in (FeatureKind.TEXT, FeatureKind.TOKENS)


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

    name: str  # under features/transformed/
    rows: int
    sha256: str


def _read_json(path: Path, what: str, stage: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise DataError(f"no {what} at {path}: run `tfbridge {stage}` first") from e


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

    def shard_paths(self, transformed_dir: Path, split: str) -> tuple[str, ...]:
        """The split's files, in shard order, each checked against what the stage wrote (its sha256): a file
        changed or lost since raises DataError naming it."""
        files = self.files.get(split, ())
        paths = tuple(str(Path(transformed_dir) / f.name) for f in files)
        for file, path in zip(files, paths):
            if not Path(path).is_file():
                raise DataError(f"{path} is missing: {len(files)} {split} files were written; "
                                f"rerun `tfbridge features`")
            if file_sha256(Path(path)) != file.sha256:
                raise DataError(f"{path} is not the file the feature stage wrote (its sha256 differs from "
                                f"manifest.json): rerun `tfbridge features`")
        return paths

    def read_check_rows(self, features_dir: Path):
        """The raw rows the hand-off checks score (a pyarrow Table, the user's column names), checked against
        their sha256; DataError when the stage kept none or the file changed since."""
        import pyarrow.parquet as pq

        if self.check_rows is None:
            raise DataError(f"{Path(features_dir) / 'manifest.json'} names no check rows (written by an older "
                            f"version): rerun `tfbridge features`")
        path = Path(features_dir) / self.check_rows.name
        if not path.is_file() or file_sha256(path) != self.check_rows.sha256:
            raise DataError(f"{path} is missing or not the file the feature stage wrote: rerun `tfbridge features`")
        return pq.read_table(path)

    @property
    def label_key(self) -> str:
        """The label's name in the transformed data."""
        return self.input_names[self.label]

    @property
    def model_inputs(self) -> dict[str, RawColumn]:
        """The raw columns a model built on these features reads: all but the label."""
        return {name: column for name, column in self.raw_columns.items() if name != self.label}

    def write(self, path: Path) -> None:
        write_json_atomic(dataclasses.asdict(self), path)

    @classmethod
    def read(cls, path: Path) -> "FeaturesManifest":
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
    fingerprint: str = ""  # what it was made from (fingerprints.onnx_fingerprint)
    parity: ParityRecord | None = None  # its check against the SavedModel; None: never checked

    @property
    def proven(self) -> bool:
        """The graph as it is now passed the export's parity check."""
        return self.parity is not None and self.parity.sha256 == self.sha256


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
    checksums: Mapping[str, str]  # path under model/ -> sha256, for every exported file
    onnx: OnnxGraph | None = None  # after the export stage
    fingerprint: str = ""  # what it was made from (fingerprints.model_fingerprint)

    def write(self, path: Path) -> None:
        write_json_atomic(dataclasses.asdict(self), path)

    @classmethod
    def read(cls, path: Path) -> "ModelManifest":
        raw = _read_json(path, "model manifest", "train")
        raw["inputs"] = _raw_columns(raw["inputs"])
        raw["outputs"] = tuple(raw["outputs"])
        if raw["classes"] is not None:
            raw["classes"] = tuple(raw["classes"])
        if raw.get("onnx") is not None:
            graph = raw["onnx"]
            raw["onnx"] = OnnxGraph(**{**graph, "parity": ParityRecord(**graph["parity"]) if graph.get("parity")
                                       else None})
        return cls(**raw)
