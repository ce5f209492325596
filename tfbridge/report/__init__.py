"""The report of a finished run: `<output>/report.html`, its plots as PNGs under `<output>/report/`.

Everything is read back from the run's artifacts (stats.json, the transformed shards, metrics.json, the eval
predictions, the models, the scores), so `tfbridge report --output DIR` regenerates it at any time. The
hand-off checks run here, on the user's own table (see `checks`). `results.json` beside the plots holds the
figures the console's summary prints.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tfbridge.contracts import (FeatureKind, FeaturesManifest, ModelManifest, PipelineConfig, fingerprints,
                                materialized_feature_spec, write_json_atomic)
from tfbridge.contracts.columns import vocabulary_value
from tfbridge.contracts.layout import EVAL_PREDICTIONS, METRICS
from tfbridge.storage import Location
from tfbridge.report import checks, figures, page

SAMPLE_ROWS = 20_000  # rows of raw and transformed data behind each feature's plot
TOP_VALUES = 15


@dataclasses.dataclass(frozen=True)
class Report:
    html: Location
    images: tuple[Location, ...]
    results: dict[str, Any]  # what results.json holds: metrics, hand-offs, scoring


def build_report(config: PipelineConfig) -> Report:
    """Writes report.html and report/*.png (replacing an earlier report whole) from the run's artifacts."""
    layout = config.layout
    fingerprint = fingerprints.report_fingerprint(layout)
    manifest = FeaturesManifest.read(layout.features_manifest_path)
    sections = [_features_section(config, manifest)]
    model = _model_manifest(layout)
    metrics = json.loads(model.file(layout.model_dir, METRICS).read_text()) if model else None
    if metrics is not None:
        sections.append(_model_section(config, metrics))
    hand_offs = checks.hand_offs(config)
    scoring = _scoring(config)
    sections.append(_hand_off_section(hand_offs, scoring))
    results = {"metrics": metrics, "hand_offs": [dataclasses.asdict(h) for h in hand_offs], "scoring": scoring,
               "fingerprint": fingerprint}
    with tempfile.TemporaryDirectory(prefix="tfbridge-report-") as directory:
        directory = Path(directory)
        for section in sections:
            for name, figure in section.figures.items():
                figure.savefig(directory / f"{name}.png", dpi=110)
                figures.close(figure)
        html = page.render(f"tfbridge report: {config.output}", _overview(config, manifest), sections, directory)
        # Each file replaced whole, the earlier report's plots gone; results.json, which the summary and the
        # resume read, last.
        layout.report_dir.remove()
        layout.report_dir.upload(directory)
    layout.report_path.write_text(html)
    write_json_atomic(results, layout.report_results_path)
    images = tuple(layout.report_dir / f"{name}.png" for section in sections for name in section.figures)
    return Report(layout.report_path, images, results)


def _model_manifest(layout) -> ModelManifest | None:
    """The model's manifest, or None before training."""
    return ModelManifest.read(layout.model_manifest_path) if layout.model_manifest_path.exists() else None


def _overview(config: PipelineConfig, manifest: FeaturesManifest) -> list[tuple[str, str]]:
    return [("config", config.source), ("data", config.data.path), ("label", f"{config.label} ({config.task})"),
            ("rows", ", ".join(f"{split} {rows:,}" for split, rows in manifest.rows.items())),
            ("versions", ", ".join(f"{k} {v}" for k, v in sorted(manifest.versions.items())))]


def _sample_split(config: PipelineConfig, manifest: FeaturesManifest) -> str:
    """The eval split, which the plots describe, unless the run kept none."""
    return "eval" if manifest.rows.get("eval") else "train"


def _transformed_sample(config: PipelineConfig, manifest: FeaturesManifest, transform_output,
                        split: str) -> dict[str, Any]:
    """Up to SAMPLE_ROWS rows of a split's transformed shards, by feature (token ids padded with -1)."""
    from tf_train.shards import decode_rows

    spec = materialized_feature_spec(transform_output.transformed_feature_spec())
    files = manifest.shard_paths(config.layout.features_dir, split)
    rows = decode_rows(files, manifest.format, spec, limit=SAMPLE_ROWS)
    return {k: _padded(v) if isinstance(v, list) and all(r.dtype.kind == "i" for r in v) else v
            for k, v in rows.items()}


def _padded(rows: list[np.ndarray]) -> np.ndarray:
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), -1, np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def _features_section(config: PipelineConfig, manifest: FeaturesManifest) -> page.Section:
    stats = manifest.stats(config.layout.features_dir).get("features", {})
    section = page.Section("Features", "How each column was transformed, with the statistics learnt on the train "
                           "split (stats.json). Plots use the first rows of the data and of the transformed shards.")
    if not config.features:
        section.note = f"The features come from the user's preprocessing_fn {config.preprocessing_fn}."
        section.table = [(name, output.kind, output.width) for name, output in sorted(manifest.outputs.items())]
        return section
    import tensorflow_transform as tft

    from tft_features.pipeline import split_rows

    transform_output = tft.TFTransformOutput(str(manifest.transform_dir(config.layout.features_dir)))
    split = _sample_split(config, manifest)
    transformed = _transformed_sample(config, manifest, transform_output, split)
    raw = split_rows(config, split, SAMPLE_ROWS)
    section.intro += f" Plots: the first {raw.num_rows:,} rows of the {split} split, raw and transformed."
    rows = []
    for column, steps in config.features.items():
        key = manifest.input_names[column]
        output = manifest.outputs.get(key)
        chain = " → ".join(s.name for s in steps)
        column_stats = stats.get(column, {})
        rows.append((column, chain, output.kind if output else "", page.stats_text(column_stats)))
        if output is None or key not in transformed:
            continue
        name = f"feature_{key}"
        if output.kind == FeatureKind.NUMBER and _is_number(raw.schema.field(column).type):
            section.figures[name] = figures.numeric_feature(
                column, raw.column(column).to_numpy(zero_copy_only=False), transformed[key], chain, column_stats)
        elif output.kind in (FeatureKind.IDS, FeatureKind.TOKEN_IDS) and "vocabulary_size" in column_stats:
            size = int(column_stats["vocabulary_size"])
            vocabulary = _vocabulary(transform_output, column, steps, size)
            ids = transformed[key].reshape(-1)
            ids = ids[ids >= 0]  # -1: token-list padding
            counts = np.bincount(np.minimum(ids, size), minlength=size + 1)
            top = [(vocabulary[i] if i < len(vocabulary) else "(out of vocabulary)", int(counts[i]))
                   for i in np.argsort(-counts, kind="stable")[:TOP_VALUES] if counts[i]]
            out_of_vocabulary = float((ids >= size).mean()) if ids.size and split == "eval" else None
            section.figures[name] = figures.categorical_feature(column, top, size, out_of_vocabulary)
    section.table = [("column", "steps", "becomes", "statistics"), *rows]
    return section


def _is_number(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type)


def _vocabulary(transform_output, column: str, steps, size: int) -> list[str]:
    """The values of a column's (last) vocabulary step, by id: TFT's vocabulary file, one value per line."""
    from tft_features.preprocessing import vocabulary_name

    index = max(i for i, step in enumerate(steps) if step.name == "vocabulary")
    path = transform_output.vocabulary_file_by_name(vocabulary_name(column, index))
    return vocabulary_lines(Path(path).read_bytes().decode("utf-8", errors="replace"))[:size]


def vocabulary_lines(text: str) -> list[str]:
    """The categories of a vocabulary file's text, as they were (`vocabulary_value`: `\\n` is a line break again,
    `\\0` the empty string). Lines end at "\n" only: `str.splitlines` also breaks at U+2028, U+0085, \\v and
    \\f, which a category may hold, and would shift every later id's label."""
    lines = text.split("\n")
    if lines[-1] == "":  # the last line's "\n"; no line is empty (VOCABULARY_EMPTY)
        lines.pop()
    return [vocabulary_value(line) for line in lines]


def _model_section(config: PipelineConfig, metrics: dict) -> page.Section:
    fitting = metrics.get("fitting")
    fitted = ""
    if fitting and fitting.get("model") == "gbdt":
        fitted = (f" Gradient-boosted trees (XGBoost), {fitting['epochs']} rounds on {fitting['batch_size']:,} rows"
                  + (f"; the trees up to round {fitting['kept_epoch']}, the best validation loss, were kept."
                     if fitting["validation_every"] else "."))
    elif fitting:
        fitted = f" Fitted for {fitting['epochs']} epochs in batches of {fitting['batch_size']:,}"
        fitted += (f"; the weights of epoch {fitting['kept_epoch']}, the best validation loss, were kept."
                   if fitting["validation_every"] else ".")
    model = ModelManifest.read(config.layout.model_manifest_path)
    ours, base = metrics.get("eval", {}), metrics.get("baseline", {})
    baseline = f"linear baseline ({base.get('model', '')})"
    if model.candidates:
        kept = next(c.model for c in model.candidates if c.kept)
        fitted += (f" Trained in turn: {', '.join(c.model for c in model.candidates)}; {kept}, the lowest loss on "
                   f"the validation rows, was kept (the plots are its own).")
        section = page.Section("Model", "Eval-split quality of each model trained next to a linear baseline trained "
                               f"in the same run on the same features (metrics.json).{fitted}")
        section.table = [("metric", *(f"{c.model} (kept)" if c.kept else c.model for c in model.candidates), baseline),
                         ("validation loss", *(page.number(c.validation_loss) for c in model.candidates), ""),
                         *[(k, *(page.number(c.eval.get(k)) for c in model.candidates), page.number(base.get(k)))
                           for k in ours],
                         ("train seconds", *(page.number(c.seconds) if c.seconds is not None else "reused"
                                             for c in model.candidates), "")]
    else:
        section = page.Section("Model", "Eval-split quality of the model next to a linear baseline trained in the "
                               f"same run on the same features (metrics.json).{fitted}")
        section.table = [("metric", "model", baseline),
                         *[(k, page.number(v), page.number(base.get(k))) for k, v in ours.items()]]
    if metrics.get("history"):
        section.figures["training_loss"] = figures.training_loss(metrics["history"],
                                                                 fitting["kept_epoch"] if fitting else None)
    if EVAL_PREDICTIONS not in model.checksums:
        return section
    with model.file(config.layout.model_dir, EVAL_PREDICTIONS).open_input() as f:
        kept = pq.read_table(f).to_pandas()
    task = metrics["task"]
    if task == "regression":
        section.figures["predictions"] = figures.regression(
            config.label, kept["label"].to_numpy(), kept["prediction"].to_numpy(),
            kept["baseline_prediction"].to_numpy(), ours["r2"], base["r2"])
        return section
    classes = [str(c) for c in model.classes]
    p_ours, p_base = np.stack(kept["probabilities"].to_numpy()), np.stack(kept["baseline_probabilities"].to_numpy())
    y = kept["label_index"].to_numpy()
    if task == "binary":
        section.figures["predictions"] = figures.binary(config.label, classes[1], y, p_ours[:, 1], p_base[:, 1],
                                                        ours["auc"], base["auc"])
    else:
        section.figures["predictions"] = figures.multiclass(config.label, classes, y, p_ours.argmax(axis=1),
                                                            p_base.argmax(axis=1), ours["accuracy"], base["accuracy"])
    return section


def _scoring(config: PipelineConfig) -> dict | None:
    path = config.layout.score_record_path
    return json.loads(path.read_text()) if path.exists() else None


def _hand_off_section(hand_offs: list[checks.HandOff], scoring: dict | None) -> page.Section:
    section = page.Section("Hand-offs and scoring", "Each hand-off compared on the user's own rows: the largest "
                           "difference per output (for labels, the share of rows that differ).")
    section.table = [("hand-off", "rows", "largest difference per output"),
                     *[(h.name, f"{h.rows:,}", ", ".join(f"{k} {v:.3g}" for k, v in h.max_abs_diff.items()))
                       for h in hand_offs]]
    if scoring:
        section.note = (f"Spark scored {scoring['rows']:,} rows in {scoring['job_seconds']:.1f} s "
                        f"({scoring['rows'] / max(scoring['job_seconds'], 1e-9):,.0f} rows/s; the whole job with "
                        f"Spark's start {scoring['seconds']:.1f} s) into {scoring['output']}.")
    return section
