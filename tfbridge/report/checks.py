"""The hand-off checks a finished run reports, measured on the user's own table; beyond tolerance they stop it.

- ONNX vs SavedModel: the eval rows the feature stage kept for these checks (check_rows.parquet)
  through both graphs, as the export's gate does (`onnx_export.parity_gate` adds edge rows there).
- Spark vs onnxruntime: rows of the scores Spark wrote (each holds its input columns and its predictions)
  scored again here by onnxruntime, joined row by row, as the scoring job's gate does.

Either beyond its tolerance (`tfbridge.scoring.parity`) raises ParityError: a report never presents
figures of a run whose hand-offs disagree.
"""

from __future__ import annotations

from tfbridge.contracts import FeaturesManifest, PipelineConfig
from tfbridge.scoring import ScoringModel
from tfbridge.scoring.parity import CHECK_ROWS, ONNX_VS_SAVED_MODEL, HandOff, compare

def hand_offs(config: PipelineConfig) -> list[HandOff]:
    """Both checks, with the model read (and its files checked) once; none before an ONNX graph is exported."""
    if not config.layout.model_manifest_path.exists():
        return []
    model = ScoringModel.load(config.layout.model_dir)
    if model.onnx_bytes is None:
        return []
    return [h.check() for h in (onnx_vs_saved_model(config, model), spark_vs_onnxruntime(config, model)) if h]


def onnx_vs_saved_model(config: PipelineConfig, model: ScoringModel) -> HandOff:
    """The check rows through model.onnx (onnxruntime) and the SavedModel (TensorFlow)."""
    from onnx_export.parity_gate import saved_model_outputs

    layout = config.layout
    rows = FeaturesManifest.read(layout.features_manifest_path).read_check_rows(layout.features_dir)
    saved = saved_model_outputs(model.manifest.saved_model_dir(model.directory), model.feeds(rows))
    return compare("ONNX vs SavedModel (eval rows)", saved, model.predict(rows), ONNX_VS_SAVED_MODEL,
                   lambda i: f"eval row {i}")


def spark_vs_onnxruntime(config: PipelineConfig, model: ScoringModel) -> HandOff | None:
    """The first scored rows again through onnxruntime here, as the scoring job checked them; None before
    scoring."""
    from spark_infer.job import check_scores, written_scores

    if not config.layout.score_record_path.exists():
        return None
    return check_scores(model, written_scores(config.layout.scores_dir).head(CHECK_ROWS))
