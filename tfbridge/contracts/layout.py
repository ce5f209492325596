"""Where each stage writes under `<output>/`: stages find each other's artifacts only here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

SCORE_RECORD = "_tfbridge_score.json"
# The file name ending of each transformed-rows format (config.OUTPUT_FORMATS).
TRANSFORMED_SUFFIXES = {"parquet": "parquet", "tfrecord": "tfrecord.gz"}


def transformed_file_name(split: str, shard: int, shards: int, output_format: str) -> str:
    """`<split>-NNNNN-of-NNNNN.<suffix>`: shard `shard` of `shards` of a split's transformed rows."""
    return f"{split}-{shard:05d}-of-{shards:05d}.{TRANSFORMED_SUFFIXES[output_format]}"


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
    def check_rows_path(self) -> Path:
        """Raw eval rows kept for the hand-off checks (FeaturesManifest.check_rows)."""
        return self.features_dir / "check_rows.parquet"

    @property
    def features_manifest_path(self) -> Path:
        return self.features_dir / "manifest.json"

    def transformed_pattern(self, split: str, output_format: str) -> str:
        """Glob of the shard files of one split ('train' or 'eval') in one format ('parquet' or 'tfrecord')."""
        return str(self.transformed_dir / f"{split}-*.{TRANSFORMED_SUFFIXES[output_format]}")

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
    def score_record_path(self) -> Path:
        """What the scoring job did (rows, seconds, input, model), beside Spark's part files (`_` hides it
        from Parquet readers)."""
        return self.scores_dir / SCORE_RECORD

    @property
    def report_path(self) -> Path:
        """The run's report, one self-contained page (`tfbridge report` writes it again)."""
        return self.root / "report.html"

    @property
    def report_dir(self) -> Path:
        """The report's plots as PNG files, and results.json: the figures the console's summary prints."""
        return self.root / "report"

    @property
    def report_results_path(self) -> Path:
        return self.report_dir / "results.json"

    @property
    def logs_dir(self) -> Path:
        """Each stage's full output under `tfbridge` (its console shows only its own lines): <stage>.log."""
        return self.root / "logs"

    @property
    def backup_dir(self) -> Path:
        return self.model_dir / "backup"

    @property
    def metrics_path(self) -> Path:
        """Eval metrics of the model and of its linear baseline, and the train and eval loss per epoch."""
        return self.model_dir / "metrics.json"

    @property
    def eval_predictions_path(self) -> Path:
        """Eval rows (up to 50,000) with the label and both models' predictions, for the report's plots."""
        return self.model_dir / "eval_predictions.parquet"

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
