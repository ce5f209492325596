"""What each stage's output was made from, as one digest recorded beside it: `tfbridge run` skips a stage whose
recorded digest matches the one computed now, and redoes it (and every stage after it) otherwise.

A digest covers the stage's config section, its inputs' identity (each data file's path, size and modification
time; the upstream stage's digest) and the project's version. A user's `preprocessing_fn` module counts as an
input: editing it redoes the feature stage. Computing one reads no data and imports no stage.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from typing import Any

from tfbridge.contracts.config import DataSource, PipelineConfig
from tfbridge.contracts.errors import DataError
from tfbridge.contracts.layout import ArtifactLayout
from tfbridge.contracts.manifests import FeaturesManifest, ModelManifest


def project_version() -> str:
    try:
        return importlib.metadata.version("tfbridge")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([project_version(), *parts], sort_keys=True, default=str).encode()).hexdigest()


def files_identity(paths) -> list[tuple[str, int, int]]:
    """(absolute path, size, modification time in ns) of each file: a changed or replaced file changes it."""
    out = []
    for path in paths:
        info = os.stat(path)
        out.append((os.path.abspath(path), info.st_size, info.st_mtime_ns))
    return out


def data_identity(source: DataSource) -> list[tuple[str, int, int]]:
    return files_identity(source.files())


def _module_identity(spec: str | None) -> list:
    """The file of a `preprocessing_fn: package.module:function`, when it can be found without importing it."""
    if not spec:
        return []
    try:
        found = importlib.util.find_spec(spec.partition(":")[0])
    except (ImportError, ValueError):
        return [spec]
    return [spec, *files_identity([found.origin])] if found and found.origin and os.path.isfile(found.origin) else [spec]


def features_fingerprint(config: PipelineConfig) -> str:
    raw = config.to_dict()
    return _digest("features", data_identity(config.data), raw["data"], raw["label"], raw["task"], raw["split"],
                   raw["output_format"], raw.get("features"), _module_identity(config.preprocessing_fn))


def model_fingerprint(config: PipelineConfig, features: str) -> str:
    """`features`: the feature stage's fingerprint. The worker count is left out: it does not change the model."""
    train = {k: v for k, v in config.train.to_dict().items() if k != "workers"}
    return _digest("train", features, train)


def onnx_fingerprint(model: str) -> str:
    return _digest("export", model)


def scores_fingerprint(model: ModelManifest, input_files) -> str:
    """Scores are made from the graph the scorer runs (the ONNX graph, or the SavedModel without one) and the input."""
    made_by = model.onnx.sha256 if model.onnx is not None else model.fingerprint
    return _digest("score", made_by, files_identity(input_files))


def report_fingerprint(layout: ArtifactLayout) -> str:
    """A report is made from every stage's output: their recorded fingerprints ("" for one not there)."""
    def recorded(path, read) -> str:
        try:
            return read(path)
        except (OSError, ValueError, KeyError, DataError):
            return ""

    features = recorded(layout.features_manifest_path, lambda p: FeaturesManifest.read(p).fingerprint)
    model = recorded(layout.model_manifest_path, lambda p: ModelManifest.read(p))
    scores = recorded(layout.score_record_path, lambda p: json.loads(p.read_text())["fingerprint"])
    graph = model.onnx.fingerprint if model and model.onnx else ""
    return _digest("report", features, model.fingerprint if model else "", graph, scores)
