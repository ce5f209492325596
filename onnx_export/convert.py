"""The export stage: the raw-features SavedModel (TFT transform + model) as ONE ONNX graph.

tf2onnx converts the SavedModel's serving signature (converting from the saved
model, not a tf.function, is what lets TFT's vocabulary tables become
CategoryMapper nodes), with our handlers (`onnx_export.lowerings`) for the ops it
lacks. The graph uses opset 20 (standard StringSplit) plus
onnxruntime-extensions for regex replacement in text normalisation; the
scorer registers that library. An op nobody lowers stops the export with its
name and the feature it came from; a graph that disagrees with the SavedModel
(`parity_gate`) stops it with the rows that differ, and is never named in the
manifest.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
import tempfile
import time
from pathlib import Path

import onnx

from onnx_export.lowerings import EXTENSIONS_DOMAIN, HANDLERS, UnsupportedOp
from onnx_export.parity_gate import check_graph
from onnx_export.trees import trees_marker, with_ml_opset
from tfbridge.contracts import (DataError, ModelManifest, OnnxGraph, ParityRecord, PipelineConfig, StageError,
                                fingerprints, named_attempts)
from tfbridge.contracts.layout import ONNX, XGBOOST_MODEL
from tfbridge.scoring.parity import HandOff, ParityError
from tfbridge.storage.attempts import commit

log = logging.getLogger(__name__)

OPSET = 20
ONNX_IR_VERSION = 9  # opset 20


class ExportError(StageError):
    """The serving graph has an op with no ONNX lowering: names the op and its feature."""


class _Unsupported(logging.Handler):
    """Collects tf2onnx's 'Tensorflow op [node: type] is not supported' reports."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.ops: list[tuple[str, str]] = []

    def emit(self, record):
        if record.msg.startswith("Tensorflow op [") and record.args:
            self.ops.append((str(record.args[0]), str(record.args[1])))


def feature_of(node_name: str, columns) -> str | None:
    """The feature a node belongs to, from the step scopes `<column>_<index>_<step>` of the transform."""
    for part in node_name.split("/"):
        for column in sorted(columns, key=len, reverse=True):
            if re.fullmatch(rf"{re.escape(column)}_\d+_\w+", part):
                return column
    return None


def allow_opset_20() -> None:
    """tf2onnx 1.17 lists IR versions up to opset 18; opset 20 (for StringSplit) is IR 9."""
    from tf2onnx import constants

    constants.OPSET_TO_IR_VERSION.setdefault(19, ONNX_IR_VERSION)
    constants.OPSET_TO_IR_VERSION.setdefault(OPSET, ONNX_IR_VERSION)


def convert_saved_model(saved_model: Path, columns, trees: bytes | None = None) -> onnx.ModelProto:
    """The SavedModel's serving signature as ONNX; `columns` name the features for error messages; `trees`: a gbdt
    model's xgboost.json, its trees' TreeEnsembleRegressor (onnx_export.trees)."""
    from tf2onnx import tf_loader

    graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
        str(saved_model), None, None, tag="serve", signatures=["serving_default"],
        return_initialized_tables=True, return_tensors_to_rename=True)
    return convert_graph(graph_def, inputs, outputs, columns, str(saved_model), tables, renames, trees)


def convert_graph(graph_def, inputs, outputs, columns, name: str, tables=None, renames=None,
                  trees: bytes | None = None) -> onnx.ModelProto:
    """A frozen TF graph as ONNX with our handlers; an op nobody lowers raises ExportError."""
    from tf2onnx import convert

    allow_opset_20()
    unsupported = _Unsupported()
    tf2onnx_log = logging.getLogger("tf2onnx")
    tf2onnx_log.addHandler(unsupported)
    try:
        # Not tf2onnx's from_function/from_saved_model API: those go on past a failed handler.
        model, _ = convert._convert_common(
            graph_def, name=name, opset=OPSET, custom_op_handlers={**HANDLERS, "PreventGradient": (
                functools.partial(trees_marker, booster_json=trees), [])},
            extra_opset=[onnx.helper.make_opsetid(EXTENSIONS_DOMAIN, 1)], input_names=inputs,
            output_names=outputs, initialized_tables=tables, tensors_to_rename=renames)
    except UnsupportedOp:
        raise
    except Exception as e:
        if not unsupported.ops:
            raise ExportError(f"ONNX export of {name} failed: {e}") from e
    finally:
        tf2onnx_log.removeHandler(unsupported)
    if unsupported.ops:
        lines = []
        for node, op in unsupported.ops:
            feature = feature_of(node, columns)
            lines.append(f"op {op} (feature '{feature}', node {node})" if feature else f"op {op} (node {node})")
        raise ExportError("ONNX export: no lowering for " + "; ".join(lines) + ". Score with the SavedModel "
                          "instead (spark_infer picks the SavedModel path when the manifest names no graph).")
    return with_ml_opset(model)


def export_onnx(config: PipelineConfig) -> HandOff:
    """Writes the model's ONNX graph once it agrees with the SavedModel (`parity_gate`), and records its inputs,
    outputs and that check in the model manifest; ParityError (and no graph named) when it does not."""
    layout = config.layout
    manifest = ModelManifest.read(layout.model_manifest_path)
    saved_model = manifest.saved_model_dir(layout.model_dir)
    trees = (manifest.file(layout.model_dir, XGBOOST_MODEL).read_bytes() if XGBOOST_MODEL in manifest.checksums
             else None)
    model = convert_saved_model(saved_model, list(manifest.input_names.values()), trees)
    lacking = sorted(set(manifest.input_names.values()) - {value.name for value in model.graph.input})
    if lacking:
        raise ExportError(f"the ONNX graph of {saved_model} lacks the inputs {lacking}")
    uses_extensions = any(node.domain == EXTENSIONS_DOMAIN for node in model.graph.node)
    onnx_bytes = model.SerializeToString()
    graph = OnnxGraph(path=ONNX, opset=OPSET, inputs=_signature(model.graph.input),
                      outputs=_signature(model.graph.output),
                      custom_ops_library="onnxruntime_extensions" if uses_extensions else None,
                      sha256=hashlib.sha256(onnx_bytes).hexdigest(),
                      fingerprint=fingerprints.onnx_fingerprint(manifest.fingerprint))
    # The manifest is the commit point: a graph is named only once it passed its check, and a failed check
    # leaves the SavedModel as the model (the manifest names no graph), never a graph that disagrees with it.
    try:
        hand_off = check_graph(config, dataclasses.replace(manifest, onnx=graph), onnx_bytes).check()
    except ParityError:
        _name_graph(layout, manifest, None)
        raise
    with tempfile.TemporaryDirectory(prefix="tfbridge-onnx-") as local:
        (Path(local) / ONNX).write_bytes(onnx_bytes)
        attempt = commit(layout.model_dir, Path(local), lambda sums, name: _name_graph(
            layout, manifest, dataclasses.replace(graph, path=f"{name}/{ONNX}", parity=_record(graph, hand_off))),
            named=lambda: named_attempts(layout.model_manifest_path), keep=[manifest.attempt])
    log.info("export: %s (%d nodes, opset %d%s)", attempt / ONNX, len(model.graph.node), OPSET,
             ", onnxruntime-extensions" if uses_extensions else "")
    return hand_off


def check_exported(config: PipelineConfig) -> HandOff:
    """The graph the manifest names, checked again against the SavedModel where it changed since its check (a
    graph copied or edited into place): on failure the manifest stops naming it (ParityError)."""
    layout = config.layout
    manifest = ModelManifest.read(layout.model_manifest_path)
    graph = manifest.onnx
    if graph is None:
        raise ExportError(f"{layout.model_manifest_path} names no ONNX graph: run `tfbridge export`")
    location = layout.model_dir / graph.path
    onnx_bytes = location.read_bytes()
    if hashlib.sha256(onnx_bytes).hexdigest() != graph.sha256:
        raise DataError(f"{location} is not the graph {layout.model_manifest_path} records (sha256): "
                        f"run `tfbridge export`")
    try:
        hand_off = check_graph(config, manifest, onnx_bytes).check()
    except ParityError:
        _name_graph(layout, manifest, None)
        raise
    _name_graph(layout, manifest, dataclasses.replace(graph, parity=_record(graph, hand_off)))
    return hand_off


def _record(graph: OnnxGraph, hand_off: HandOff) -> ParityRecord:
    return ParityRecord(graph.sha256, hand_off.rows, hand_off.max_abs_diff)


def _name_graph(layout, manifest: ModelManifest, graph: OnnxGraph | None) -> None:
    dataclasses.replace(manifest, onnx=graph).write(layout.model_manifest_path)


def _signature(values) -> dict[str, dict]:
    out = {}
    for value in values:
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        out[value.name] = {"dtype": "string" if dtype.kind == "O" else dtype.name,
                           "shape": [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]}
    return out


def export_job(config: PipelineConfig) -> None:
    """The stage as a job (`python -m onnx_export`, `tfbridge export`): export, report one line."""
    start = time.monotonic()
    hand_off = export_onnx(config)
    print(f"export: {onnx_location(config)} ({time.monotonic() - start:.1f} s); {describe_check(hand_off)}")


def onnx_location(config: PipelineConfig):
    """Where the graph the model manifest names lies."""
    layout = config.layout
    return layout.model_dir / ModelManifest.read(layout.model_manifest_path).onnx.path


def describe_check(hand_off: HandOff) -> str:
    """One line for the console: the rows checked and the largest difference per output."""
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in hand_off.max_abs_diff.items())
    return f"{hand_off.name}: largest difference {diffs}"
