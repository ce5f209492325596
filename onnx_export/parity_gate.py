"""The export's own check: a new graph against the SavedModel it was converted from, before the manifest names it.

Both engines score the same raw rows: the eval rows the feature stage kept for these checks
(check_rows.parquet of the feature stage, up to 2,000 rows of the user's own eval split) and edge rows made here
from them, one column changed at a time: unseen categories, empty strings, non-ASCII and multi-line text,
missing values where the column imputes them, every bucket and piecewise-linear boundary, the column's
extremes and magnitudes a million times beyond them. A graph beyond tolerance
(`tfbridge.scoring.parity.ONNX_VS_SAVED_MODEL`) stops the export with the output and the rows that differ.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from tfbridge.contracts import FeaturesManifest, ModelManifest, PipelineConfig, RawColumn, model_timestamps
from tfbridge.scoring import ScoringModel
from tfbridge.scoring.parity import ONNX_VS_SAVED_MODEL, HandOff, compare

log = logging.getLogger(__name__)

HAND_OFF = "ONNX vs SavedModel"
EDGE_TEXTS = ("tfbridge-unseen-value", "", "Größe CAFÉ — “quoted” l’été", "two\nlines", "  padded\t",
              "x" * 300)
# Dates and times the calendar gets wrong first: the ends of the years a timestamp may hold, 1970 and the second
# before it, leap days (2000 is a leap year, 1900 and 2100 are not), the ends of years, a time before 1900.
EDGE_TIMES = ("0001-01-01T00:00:00", "1600-02-29T12:00:00", "1899-12-31T23:59:59", "1900-02-28T23:00:00",
              "1900-03-01T00:00:00", "1969-12-31T23:59:59", "1970-01-01T00:00:00", "2000-02-29T06:30:00",
              "2000-12-31T23:59:59", "2100-03-01T00:00:00", "9999-12-31T23:59:59")
_TIMESTAMP = pa.timestamp("us", "UTC")
MAGNITUDE = 1e6
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def check_graph(config: PipelineConfig, manifest: ModelManifest, onnx_bytes: bytes) -> HandOff:
    """The graph (`manifest.onnx` describes it) on the check rows and edge rows, held to the SavedModel."""
    layout = config.layout
    features = FeaturesManifest.read(layout.features_manifest_path)
    sample = features.read_check_rows(layout.features_dir)
    stats = features.stats(layout.features_dir).get("features", {})
    sample = as_input_types(sample, manifest.inputs)
    edges, reasons = edge_rows(sample, manifest.inputs, stats, config.features)
    rows = pa.concat_tables([sample, edges])
    model = ScoringModel(layout.model_dir, manifest, onnx_bytes)
    feeds = model.feeds(rows)
    onnx_out = model.predict(rows)
    saved_out = saved_model_outputs(manifest.saved_model_dir(layout.model_dir), feeds)
    labels = [f"eval row {i}" for i in range(sample.num_rows)] + reasons

    def describe(i: int) -> str:
        values = ", ".join(f"{name}={value!r}" for name, value in rows.slice(i, 1).to_pylist()[0].items())
        return f"{labels[i]} ({values})"

    hand_off = compare(f"{HAND_OFF} ({sample.num_rows:,} eval rows, {edges.num_rows:,} edge rows)", saved_out,
                       onnx_out, ONNX_VS_SAVED_MODEL, describe, typical_rows=sample.num_rows)
    log.info("export: %s, largest differences %s", hand_off.name, hand_off.max_abs_diff)
    return hand_off


def saved_model_outputs(saved_model: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The SavedModel's serving signature on the graph's feeds (strings as str tensors), as numpy arrays."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    out = signature(**{k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in feeds.items()})
    return {k: v.numpy() for k, v in out.items()}


def as_input_types(table: pa.Table, inputs: Mapping[str, RawColumn]) -> pa.Table:
    """The model's input columns as one schema for check and edge rows alike: numbers as float64, categories
    and text as strings (integers and booleans printed as the feature stage reads them, "3" and "true"), dates
    and times as UTC timestamps (text read with the column's format, as the feature stage read it)."""
    columns = {}
    for name, column in inputs.items():
        values = table.column(name)
        if column.dtype == "timestamp":
            seconds = model_timestamps(values, name, "in the check rows", column.datetime_format)
            columns[name] = pa.array(np.nan_to_num(seconds).astype(np.int64) * 1_000_000, _TIMESTAMP,
                                     mask=np.isnan(seconds))
            continue
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        # Numbers through float64 as every engine reads them (an integer above 2**53 rounds, it is not refused).
        columns[name] = values.cast(pa.string() if column.dtype == "string" else pa.float64(), safe=False)
    return pa.table(columns)


def edge_rows(sample: pa.Table, inputs: Mapping[str, RawColumn], stats: Mapping[str, Mapping[str, Any]],
              steps: Mapping[str, Any]) -> tuple[pa.Table, list[str]]:
    """Rows that each differ from the sample's first row in one column, and what each one tests.

    `stats`: stats.json's per-column statistics (boundaries and edges are tried exactly); `steps`: the
    config's feature steps (none for a user's preprocessing_fn), for fixed bucket boundaries. Values stay in
    the column's domain (`RawColumn.above`).
    """
    base = sample.slice(0, 1).to_pylist()[0]
    rows, reasons = [], []
    for name, column in inputs.items():
        for value, why in _edge_values(name, column, sample, stats.get(name, {}), steps.get(name, ())):
            rows.append({**base, name: value})
            reasons.append(f"edge row: '{name}' {why}")
    return pa.Table.from_pylist(rows, schema=sample.schema), reasons


def _edge_values(name: str, column: RawColumn, sample: pa.Table, stats: Mapping[str, Any], steps) -> list:
    if column.dtype == "timestamp":
        times = pa.array(EDGE_TIMES).cast(pa.timestamp("us")).cast(_TIMESTAMP).to_pylist()
        return [(time, f"at {text}") for time, text in zip(times, EDGE_TIMES)] + (
            [(None, "missing")] if column.nullable else [])
    if column.dtype == "string":
        values = [(text, "unseen text" if i == 0 else f"text {text!r}") for i, text in enumerate(EDGE_TEXTS)]
        return [(v, why) for v, why in values if v != "" or not column.nullable] + (
            [(None, "missing")] if column.nullable else [])
    present = np.asarray([v for v in sample.column(name).to_pylist() if v is not None], np.float64)
    present = present[np.isfinite(present)]
    if not present.size:
        return [(None, "missing")] if column.nullable else []
    lo, hi = float(present.min()), float(present.max())
    candidates = [(lo, "at its smallest"), (hi, "at its largest"), (0.0, "zero")]
    if hi > 0:
        candidates.append((min(hi * MAGNITUDE, FLOAT32_MAX / 10), "far above its range"))
    if lo < 0:
        candidates.append((max(lo * MAGNITUDE, -FLOAT32_MAX / 10), "far below its range"))
    if lo > 0:  # not below float32's normal range, where every engine reads 0
        candidates.append((max(lo / MAGNITUDE, FLOAT32_TINY * MAGNITUDE), "far below its range, near 0"))
    boundaries = [(b, f"on its quantile boundary {b:g}") for b in stats.get("boundaries", [])]
    boundaries += [(b, f"on its piecewise-linear edge {b:g}") for b in stats.get("edges", [])]
    boundaries += [(b, f"on its fixed boundary {b:g}") for step in steps if step.name == "bucketize"
                   for b in step.params.get("boundaries", [])]
    # Only values the column's steps take (box_cox: > 0, log1p: > -1; RawColumn.above): the scorer refuses others.
    values = [(float(v), why) for v, why in [*candidates, *boundaries] if column.above is None or v > column.above]
    if column.nullable:
        values.append((None, "missing"))
    return values

