"""Where each stage writes under `<output>/`: stages find each other's artifacts only here."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class ArtifactLayout:
    """The artifacts of one run, under its `output:` directory."""

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
