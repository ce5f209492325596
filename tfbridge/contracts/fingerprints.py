"""What each stage's output was made from, as one digest recorded beside it: `tfbridge run` skips a stage whose
recorded digest matches the one computed now, and redoes it (and every stage after it) otherwise.

A digest covers the stage's config section, its inputs' identity (each data file's path, size and modification
time; the upstream stage's digest) and the project's version. A user's `preprocessing_fn` module counts as an
input: editing it redoes the feature stage. Computing one reads no data and imports nothing, not even the parent
packages of that module: only a config the user passes names code, and only the feature stage runs it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sys
from typing import Any

from pyarrow.fs import FileType

from tfbridge.contracts.config import DataSource, PipelineConfig
from tfbridge.contracts.errors import DataError
from tfbridge.contracts.layout import ArtifactLayout
from tfbridge.contracts.manifests import FeaturesManifest, ModelManifest
from tfbridge.storage import Location


# Raised whenever the same config and data would make other artifacts than before (how rows are split, a column's
# graph input name), so that a run made before is redone rather than mixed with the new rules: 2 splits rows by
# their columns in name order, names columns alike on every Python, reads YAML keys as written; 3 commits each
# artifact by its manifest under an attempt prefix.
FINGERPRINT_VERSION = 3


def project_version() -> str:
    try:
        return importlib.metadata.version("tfbridge")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([FINGERPRINT_VERSION, project_version(), *parts], sort_keys=True,
                                     default=str).encode()).hexdigest()


def files_identity(paths) -> list[tuple[str, int, int]]:
    """(absolute path or URI, size, modification time in ns) of each file: a changed or replaced file changes it."""
    out = []
    for path in paths:
        location = Location.of(path)
        info = location.info()
        if info.type == FileType.NotFound:
            raise FileNotFoundError(str(location))
        out.append((location.hadoop_uri() if location.is_local else location.uri, info.size, info.mtime_ns or 0))
    return out


def data_identity(source: DataSource) -> list[tuple[str, int, int]]:
    return files_identity(source.files())


def module_file(module: str) -> str | None:
    """The file a dotted module would be imported from, or None, found without running any code of it or of its
    packages: each level is looked up as the import system does (every finder on sys.meta_path, within the
    package's search path), but no package's `__init__` is executed, as `importlib.util.find_spec` would."""
    parts = module.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    search_path, spec = None, None
    for depth in range(len(parts)):
        if depth and search_path is None:  # a module, not a package, cannot hold another
            return None
        try:
            spec = _find_spec(".".join(parts[:depth + 1]), search_path)
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        search_path = spec.submodule_search_locations
    origin = spec.origin if spec.has_location else None
    return origin if origin and os.path.isfile(origin) else None


def _find_spec(name: str, search_path):
    """The spec of one level, from the first finder on sys.meta_path that knows it (None: none does)."""
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        found = find_spec(name, search_path) if find_spec else None
        if found is not None:
            return found
    return None


def _module_identity(spec: str | None) -> list:
    """A `preprocessing_fn: package.module:function` and its module's file, when that can be found."""
    if not spec:
        return []
    found = module_file(spec.partition(":")[0])
    return [spec, *files_identity([found])] if found else [spec]


def features_fingerprint(config: PipelineConfig) -> str:
    raw = config.to_dict()
    return _digest("features", data_identity(config.data), raw["data"], raw["label"], raw["task"], raw["split"],
                   raw["output_format"], raw.get("features"), _module_identity(config.preprocessing_fn))


def model_fingerprint(config: PipelineConfig, features: str) -> str:
    """`features`: the feature stage's fingerprint. The worker count is left out: it does not change the model; so
    are `model` and `gbdt` for a network (which the trees' settings do not change), as before trees existed."""
    train = {k: v for k, v in config.train.to_dict().items()
             if k != "workers" and (config.train.model != "network" or k not in ("model", "gbdt"))}
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
