"""Where each stage writes under `<output>/` (a local directory or a URI: `tfbridge.storage`): stages find each
other's artifacts only here, and inside an artifact only through its manifest.

    <output>/features/manifest.json   names features/attempt-*/ (transform_fn/, transformed/, stats.json, ...)
    <output>/model/manifest.json      names model/attempt-*/ (saved_model/, metrics.json, ...) and the ONNX graph
    <output>/scores/                  Spark's part files, then _tfbridge_score.json last
    <output>/report.html, report/, logs/
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tfbridge.storage import Location
from tfbridge.storage.attempts import work_dir

SCORE_RECORD = "_tfbridge_score.json"
MANIFEST = "manifest.json"
# The file name ending of each transformed-rows format (config.OUTPUT_FORMATS).
TRANSFORMED_SUFFIXES = {"parquet": "parquet", "tfrecord": "tfrecord.gz"}

# Inside a feature-stage attempt (FeaturesManifest.attempt): transform_fn/, transformed_metadata/ and metadata/
# (read with `tft.TFTransformOutput(dir)` on a local copy), and these.
TRANSFORMED = "transformed"  # the shard files
STATS = "stats.json"
CHECK_ROWS_FILE = "check_rows.parquet"  # raw eval rows kept for the hand-off checks (FeaturesManifest.check_rows)
# Inside a model attempt (ModelManifest.attempt), and the export's (OnnxGraph.path).
SAVED_MODEL = "saved_model"
METRICS = "metrics.json"  # eval metrics of the model and its linear baseline, the loss per epoch
EVAL_PREDICTIONS = "eval_predictions.parquet"  # up to 50,000 eval rows: label and both models' predictions
ONNX = "model.onnx"  # one ONNX graph from raw columns to predictions
# Beside a gbdt SavedModel: the kept trees as XGBoost saves them (its JSON: data, never a pickle), which the
# export lowers to one ai.onnx.ml TreeEnsembleRegressor, and the names of the columns they split on.
XGBOOST_MODEL, XGBOOST_COLUMNS = "xgboost.json", "xgboost-columns.json"
# The names of the two identity ops (PreventGradient) around the TF trees in a gbdt SavedModel: the matrix the
# trees read, and the sum of their leaves; the export puts the TreeEnsembleRegressor between them.
TREES_INPUT, TREES_OUTPUT = "tfbridge_trees_input", "tfbridge_trees_output"


@dataclasses.dataclass(frozen=True)
class ArtifactLayout:
    """The artifacts of one run, under its `output:` (a local directory or a URI)."""

    root: Location

    def __post_init__(self):
        object.__setattr__(self, "root", Location.of(self.root))

    @property
    def features_dir(self) -> Location:
        return self.root / "features"

    @property
    def features_manifest_path(self) -> Location:
        return self.features_dir / MANIFEST

    @property
    def model_dir(self) -> Location:
        return self.root / "model"

    @property
    def model_manifest_path(self) -> Location:
        return self.model_dir / MANIFEST

    @property
    def scores_dir(self) -> Location:
        """`tfbridge run` scores the config's data here (Parquet: the input's columns and the predictions)."""
        return self.root / "scores"

    @property
    def score_record_path(self) -> Location:
        """What the scoring job did (rows, seconds, input, model), written last beside Spark's part files (`_` hides
        it from Parquet readers)."""
        return self.scores_dir / SCORE_RECORD

    @property
    def report_path(self) -> Location:
        """The run's report, one self-contained page (`tfbridge report` writes it again)."""
        return self.root / "report.html"

    @property
    def report_dir(self) -> Location:
        """The report's plots as PNG files, and results.json (written last): the figures the summary prints."""
        return self.root / "report"

    @property
    def report_results_path(self) -> Location:
        return self.report_dir / "results.json"

    @property
    def logs(self) -> Location:
        """Each stage's full output under `tfbridge` (its console shows only its own lines): <stage>.log."""
        return self.root / "logs"

    # What a run keeps on the host that runs it, beside the output on local disk, in the cache for a store.
    @property
    def work_dir(self) -> Path:
        return work_dir(self.root)

    @property
    def logs_dir(self) -> Path:
        """Where a stage's log is written while it runs: `logs` itself on local disk, else a local file that is
        copied to `logs` when the stage ends."""
        return self.work_dir / "logs"

    @property
    def training_dir(self) -> Path:
        """Training's state while it runs (its epoch backups, its progress), on the host of its chief."""
        return self.work_dir / "model"

    @property
    def backup_dir(self) -> Path:
        return self.training_dir / "backup"
