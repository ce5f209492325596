"""Lowerings tf2onnx 1.17 lacks or makes slow, for the ops our transforms produce: one handler per TF op.

Each handler rewrites one TF node into standard ONNX nodes in tf2onnx's graph,
keeping the node's output names so its consumers are untouched. The registry
`HANDLERS` is what the export passes to tf2onnx as `custom_op_handlers`; each
handler has its own test running the ONNX result against TF on fresh inputs.

  UpperBound (tft.apply_buckets)      GreaterOrEqual + ReduceSum: a value on a boundary goes up
  Log1p, Expm1 (log1p, Box-Cox, YJ)   Kahan's forms log(u) * x / (u - 1), (u - 1) * x / log(u):
                                      full float32 accuracy near 0, where log(1 + x) would lose it
  StringToHashBucketFast (OOV ids,    one bucket: every string hashes to bucket 0; more buckets need
  hash, cross)                        FarmHash's Fingerprint64, which no ONNX op computes: refused
  StringLower, StringUpper            StringNormalizer in a named locale, never the host's default:
  (normalize_text's lower-casing)     "C" for TF's ASCII-only default, C.UTF-8 for encoding="utf-8"
  StringSplitV2 (text to tokens)      ONNX StringSplit (opset 20) back to TF's sparse triple; tabs and
                                      newlines become spaces first, as TF splits on all whitespace
  UnsortedSegmentSum, DenseBincount   ScatterND / ScatterElements with reduction "add" (opset 16+),
  (ragged row lengths of tokens)      ids outside [0, n) dropped (TF drops negative segment ids
                                      and bincount values >= size, refuses the rest). tf2onnx's own
                                      lowering sorts (TopK + Unique): a quarter of the graph's time
  RaggedTensorToSparse (token ids     row of each value by CumSum of scattered row starts; tf2onnx's
  to the model's sparse input)        divided by the longest row: 0 in a batch of empty texts
  FloorDiv, FloorMod on integers      Mod with fmod=0 (the divisor's sign, as Python's %), and
  (the calendar of dates and times)   (a - mod) / b: tf2onnx's Div truncates toward 0, which puts
                                      1969-12-31 23:59:59 (-1 s) on day 0, 1970-01-01

Vocabulary lookups (CategoryMapper), regex replacement (onnxruntime-extensions'
StringRegexReplace: standard ONNX has no regex replace) and string equality (its
StringEqual, with Where: the vocabulary's "" -> VOCABULARY_EMPTY) are tf2onnx's own handlers.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper
from tf2onnx import utils

from tfbridge.contracts import StageError
from tfbridge.contracts.columns import PUNCTUATION_AND_WHITESPACE, TEXT_CASE_LOCALE


EXTENSIONS_DOMAIN = "ai.onnx.contrib"  # onnxruntime-extensions


class UnsupportedOp(StageError):
    """A TF op of the serving graph that a handler refuses to lower (the message says why and what to change)."""


def _const(ctx, value, dtype=np.int64) -> str:
    return ctx.make_const(utils.make_name("const"), np.array(value, dtype)).output[0]


def _node(ctx, op: str, inputs: list[str], **attr) -> str:
    return ctx.make_node(op, inputs, attr=attr or None).output[0]


def _take_over(ctx, node, op: str, inputs: list[str], **attr) -> None:
    """Replaces `node` by one `op` node that keeps its name, output names, shapes and dtypes."""
    name, outputs = node.name, list(node.output)
    shapes = [ctx.get_shape(o) for o in outputs]
    dtypes = [ctx.get_dtype(o) for o in outputs]
    ctx.remove_node(name)
    ctx.make_node(op, inputs, attr=attr or None, outputs=outputs, name=name, shapes=shapes, dtypes=dtypes)


def upper_bound(ctx, node, name, args):
    """searchsorted(boundaries [R, B], values [R, N], side=right) = how many boundaries are <= value."""
    boundaries, values = node.input
    column = _node(ctx, "Unsqueeze", [values, _const(ctx, [2])])  # [R, N, 1]
    row = _node(ctx, "Unsqueeze", [boundaries, _const(ctx, [1])])  # [R, 1, B]
    counts = _node(ctx, "Cast", [_node(ctx, "GreaterOrEqual", [column, row])], to=TensorProto.INT64)
    out_type = ctx.get_dtype(node.output[0])
    if out_type == TensorProto.INT64:
        _take_over(ctx, node, "ReduceSum", [counts, _const(ctx, [2])], keepdims=0)
    else:
        total = _node(ctx, "ReduceSum", [counts, _const(ctx, [2])], keepdims=0)
        _take_over(ctx, node, "Cast", [total], to=out_type)


def log1p(ctx, node, name, args):
    """log(1 + x) as log(u) * (x / (u - 1)) with u = 1 + x, and x itself where u rounds to 1."""
    x = node.input[0]
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(x))
    one = _const(ctx, 1, dtype)
    u = _node(ctx, "Add", [x, one])
    d = _node(ctx, "Sub", [u, one])
    ratio = _node(ctx, "Div", [x, _node(ctx, "Where", [_node(ctx, "Equal", [d, _const(ctx, 0, dtype)]), one, d])])
    general = _node(ctx, "Mul", [_node(ctx, "Log", [u]), ratio])
    _take_over(ctx, node, "Where", [_node(ctx, "Equal", [u, one]), x, general])


def expm1(ctx, node, name, args):
    """exp(x) - 1 as (u - 1) * (x / log(u)) with u = exp(x); x where u rounds to 1, u - 1 where u is 0 or inf."""
    x = node.input[0]
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(x))
    one = _const(ctx, 1, dtype)
    u = _node(ctx, "Exp", [x])
    d = _node(ctx, "Sub", [u, one])
    log_u = _node(ctx, "Log", [u])
    near_one = _node(ctx, "Equal", [u, one])
    extreme = _node(ctx, "Or", [_node(ctx, "Equal", [u, _const(ctx, 0, dtype)]), _node(ctx, "IsInf", [u])])
    safe_log = _node(ctx, "Where", [_node(ctx, "Or", [near_one, extreme]), one, log_u])
    general = _node(ctx, "Mul", [d, _node(ctx, "Div", [x, safe_log])])
    _take_over(ctx, node, "Where", [near_one, x, _node(ctx, "Where", [extreme, d, general])])


def string_to_hash_bucket_fast(ctx, node, name, args):
    """With one bucket every string hashes to 0; with more, FarmHash's Fingerprint64 of the bytes would be needed.

    Standard ONNX cannot read a string's bytes, and onnxruntime-extensions' op of the same name is not TF's:
    it hashes with std::hash (0.15.2; tests/onnx_export/test_hash_lowering.py shows it differ on every kind
    of string), so tf2onnx's own handler, which maps to it, would change every id without a word."""
    buckets = node.get_attr_int("num_buckets")
    if buckets != 1:
        raise UnsupportedOp(f"StringToHashBucketFast with {buckets} buckets in node {node.name} (FarmHash's "
                            f"Fingerprint64: no ONNX op computes it; onnxruntime-extensions' op of that name hashes "
                            f"otherwise): the hash and cross steps and a vocabulary with num_oov_buckets above 1 do "
                            f"not export; score with the SavedModel, or use num_oov_buckets of 0 or 1")
    shape = _node(ctx, "Shape", [node.input[0]])
    _take_over(ctx, node, "ConstantOfShape", [shape], value=numpy_helper.from_array(np.zeros([1], np.int64)))


def string_case(ctx, node, name, args):
    """StringLower / StringUpper as StringNormalizer (tf2onnx's lowering) in a locale that says what TF does.

    tf2onnx leaves the locale unset, and onnxruntime then asks the host for en_US.UTF-8, which many hosts
    lack. TF's default encoding maps ASCII letters only: locale "C". With encoding="utf-8" TF maps every
    letter (ICU): locale C.UTF-8, glibc's Unicode mapping. The two agree on every letter of TF's Unicode
    13 except the final-sigma and İ rules, which normalize_text's next passes make equal (see
    tfbridge.contracts.columns); letters added in Unicode 14 and later only onnxruntime may map.
    """
    from tf2onnx.custom_opsets.string_ops import StringLower

    unicode = node.get_attr_value("encoding", b"") == b"utf-8"
    StringLower.version_10(ctx, node)
    node.set_attr("locale", TEXT_CASE_LOCALE if unicode else "C")


def _whitespace_already_spaces(ctx, text: str) -> bool:
    """Whether `text` comes from normalize_text's punctuation pass, which already turned tabs and newlines into
    spaces (saves a regex pass over every string, ~5% of the graph's time)."""
    producer = ctx.get_node_by_output(text)
    if producer is None or producer.type != "StringRegexReplace":  # tf2onnx's lowering of StaticRegexReplace
        return False
    pattern, rewrite = (ctx.get_node_by_output(i) for i in producer.input[1:])
    return (pattern.is_const() and rewrite.is_const()
            and pattern.get_tensor_value() == [PUNCTUATION_AND_WHITESPACE] and rewrite.get_tensor_value() == [" "])


def string_split_v2(ctx, node, name, args):
    """TF's (indices, values, dense_shape) of the split tokens from ONNX StringSplit's padded [N, M] + lengths."""
    text, sep = node.input
    sep_node = ctx.get_node_by_output(sep)
    if not sep_node.is_const():
        raise UnsupportedOp(f"StringSplitV2 with a separator computed in the graph, in node {node.name}")
    delimiter = sep_node.get_tensor_value()
    maxsplit = node.get_attr_int("maxsplit")
    delimiter = delimiter.decode() if isinstance(delimiter, bytes) else delimiter
    attr = {"delimiter": delimiter}
    if maxsplit >= 0:
        attr["maxsplit"] = maxsplit
    if not delimiter and not _whitespace_already_spaces(ctx, text):
        # TF splits on any ASCII whitespace, ONNX StringSplit on spaces: other whitespace becomes a
        # space first (onnxruntime-extensions' regex replace; standard ONNX has none).
        pattern = ctx.make_const(utils.make_name("whitespace"), np.array(["[\t\n\v\f\r]"], object)).output[0]
        space = ctx.make_const(utils.make_name("space"), np.array([" "], object)).output[0]
        text = ctx.make_node("StringRegexReplace", [text, pattern, space], domain=EXTENSIONS_DOMAIN).output[0]
        ctx.set_dtype(text, TensorProto.STRING)
    split = ctx.make_node("StringSplit", [text], attr=attr, output_count=2)
    tokens, lengths = split.output
    ctx.set_dtype(tokens, TensorProto.STRING)
    ctx.set_dtype(lengths, TensorProto.INT64)
    padded_shape = _node(ctx, "Shape", [tokens])  # [N, M]
    width = _node(ctx, "Gather", [padded_shape, _const(ctx, 1)])
    positions = _node(ctx, "Unsqueeze", [_node(ctx, "Range", [_const(ctx, 0), width, _const(ctx, 1)]),
                                         _const(ctx, [0])])  # [1, M]
    present = _node(ctx, "Less", [positions, _node(ctx, "Unsqueeze", [lengths, _const(ctx, [1])])])
    indices_out, values_out, shape_out = node.output
    dtypes = [ctx.get_dtype(o) for o in node.output]
    ctx.remove_node(node.name)
    ctx.make_node("Transpose", [_node(ctx, "NonZero", [present])], attr={"perm": [1, 0]}, outputs=[indices_out],
                  dtypes=[dtypes[0]], shapes=[[-1, 2]])
    ctx.make_node("GatherND", [tokens, indices_out], outputs=[values_out], dtypes=[dtypes[1]], shapes=[[-1]])
    ctx.make_node("Identity", [padded_shape], outputs=[shape_out], dtypes=[dtypes[2]], shapes=[[2]])


def _spill_row(ctx, ids: str, count: str) -> tuple[str, str]:
    """(n, ids): the scalar `count` as an int64 [1] tensor, and the ids as int64 with those outside [0, n)
    sent to row n, a spill row that `_without_spill_row` cuts off after the scatter."""
    n = _node(ctx, "Reshape", [_node(ctx, "Cast", [count], to=TensorProto.INT64), _const(ctx, [1])])
    ids = _node(ctx, "Cast", [ids], to=TensorProto.INT64)
    valid = _node(ctx, "And", [_node(ctx, "GreaterOrEqual", [ids, _const(ctx, 0)]), _node(ctx, "Less", [ids, n])])
    return n, _node(ctx, "Where", [valid, ids, n])


def _without_spill_row(ctx, node, scattered: str, n: str) -> None:
    _take_over(ctx, node, "Slice", [scattered, _const(ctx, [0]), n, _const(ctx, [0])])


def _filled(ctx, shape: str, value, dtype) -> str:
    return _node(ctx, "ConstantOfShape", [shape], value=numpy_helper.from_array(np.full([1], value, dtype)))


def unsorted_segment_sum(ctx, node, name, args):
    """Sums of data rows per segment id, for rank-1 ids (TF's RaggedReduceSum); other ranks: tf2onnx's lowering."""
    from tf2onnx.onnx_opset.reduction import SegmentSum

    data, segment_ids, num_segments = node.input
    if ctx.get_rank(segment_ids) != 1:
        return SegmentSum.any_version(ctx.opset, ctx, node)
    n, ids = _spill_row(ctx, segment_ids, num_segments)
    rows = _node(ctx, "Concat", [_node(ctx, "Add", [n, _const(ctx, [1])]),
                                 _node(ctx, "Slice", [_node(ctx, "Shape", [data]), _const(ctx, [1]),
                                                      _const(ctx, [np.iinfo(np.int64).max])])], axis=0)
    zeros = _filled(ctx, rows, 0, utils.map_onnx_to_numpy_type(ctx.get_dtype(data)))
    summed = _node(ctx, "ScatterND", [zeros, _node(ctx, "Unsqueeze", [ids, _const(ctx, [1])]), data],
                   reduction="add")
    _without_spill_row(ctx, node, summed, n)


def dense_bincount(ctx, node, name, args):
    """Counts of each value in [0, size) of a rank-1 input, unweighted (TF's ragged row lengths from row ids);
    other ranks and weights: tf2onnx's lowering."""
    from tf2onnx.onnx_opset.tensor import Bincount

    values, size, weights = node.input
    if ctx.get_rank(values) != 1 or ctx.get_shape(weights) != [0]:
        return Bincount.any_version(ctx.opset, ctx, node)
    n, ids = _spill_row(ctx, values, size)
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
    zeros = _filled(ctx, _node(ctx, "Add", [n, _const(ctx, [1])]), 0, dtype)
    ones = _filled(ctx, _node(ctx, "Shape", [ids]), 1, dtype)
    reduction = "max" if node.get_attr_value("binary_output", False) else "add"
    counts = _node(ctx, "ScatterElements", [zeros, ids, ones], axis=0, reduction=reduction)
    _without_spill_row(ctx, node, counts, n)


def ragged_tensor_to_sparse(ctx, node, name, args):
    """The sparse triple of a ragged [rows, (tokens)] tensor from its row splits, in O(rows + values).

    tf2onnx's lowering enumerates rows x longest row and divides by the longest
    row's length: a batch whose rows are all empty (every text empty or stop
    words) made onnxruntime fail with "Integer division by zero". Here each
    value's row is a running count of the row starts at or before it (a
    scatter-add of the interior splits, then CumSum), its column is its
    position minus its row's start; dense_shape is [rows, longest row], as TF
    gives it. Deeper ragged tensors: tf2onnx's lowering.
    """
    from tf2onnx.onnx_opset.tensor import RaggedTensorToSparse

    if len(node.input) != 2:
        return RaggedTensorToSparse.version_11(ctx, node)
    splits = _node(ctx, "Cast", [node.input[0]], to=TensorProto.INT64)
    values = node.input[1]
    end = _const(ctx, [np.iinfo(np.int64).max])
    starts = _node(ctx, "Slice", [splits, _const(ctx, [0]), _const(ctx, [-1]), _const(ctx, [0])])
    lengths = _node(ctx, "Sub", [_node(ctx, "Slice", [splits, _const(ctx, [1]), end, _const(ctx, [0])]), starts])
    count = _node(ctx, "Shape", [values])  # [1]
    interior = _node(ctx, "Slice", [splits, _const(ctx, [1]), _const(ctx, [-1]), _const(ctx, [0])])
    n, ids = _spill_row(ctx, interior, _node(ctx, "Squeeze", [count]))  # trailing empty rows start at the end
    ones = _filled(ctx, _node(ctx, "Shape", [ids]), 1, np.int64)
    zeros = _filled(ctx, _node(ctx, "Add", [n, _const(ctx, [1])]), 0, np.int64)
    marks = _node(ctx, "ScatterElements", [zeros, ids, ones], axis=0, reduction="add")
    marks = _node(ctx, "Slice", [marks, _const(ctx, [0]), n, _const(ctx, [0])])
    rows = _node(ctx, "CumSum", [marks, _const(ctx, 0)])
    positions = _node(ctx, "Range", [_const(ctx, 0), _node(ctx, "Squeeze", [count]), _const(ctx, 1)])
    columns = _node(ctx, "Sub", [positions, _node(ctx, "Gather", [starts, rows])])
    longest = _node(ctx, "ReduceMax", [lengths], keepdims=1)  # [0] for no rows: TF gives 0 too
    longest = _node(ctx, "Max", [longest, _const(ctx, [0])])
    indices_out, values_out, shape_out = node.output
    dtypes = [ctx.get_dtype(o) for o in node.output]
    ctx.remove_node(node.name)
    ctx.make_node("Concat", [_node(ctx, "Unsqueeze", [rows, _const(ctx, [1])]),
                             _node(ctx, "Unsqueeze", [columns, _const(ctx, [1])])], attr={"axis": 1},
                  outputs=[indices_out], dtypes=[dtypes[0]], shapes=[[-1, 2]])
    ctx.make_node("Identity", [values], outputs=[values_out], dtypes=[dtypes[1]], shapes=[[-1]])
    ctx.make_node("Concat", [_node(ctx, "Shape", [lengths]), longest], attr={"axis": 0}, outputs=[shape_out],
                  dtypes=[dtypes[2]], shapes=[[2]])


def _is_integer(ctx, name: str) -> bool:
    return np.issubdtype(utils.map_onnx_to_numpy_type(ctx.get_dtype(name)), np.integer)


def floor_mod(ctx, node, name, args):
    """a mod b with the sign of b (TF's FloorMod): ONNX Mod with fmod=0 on integers; floats: tf2onnx's lowering."""
    from tf2onnx.onnx_opset.math import FloorMod

    if not _is_integer(ctx, node.input[0]):
        return FloorMod.version_7(ctx, node)
    _take_over(ctx, node, "Mod", list(node.input), fmod=0)


def floor_div(ctx, node, name, args):
    """a // b rounded toward minus infinity (TF's FloorDiv): on integers (a - a mod b) / b, a division with no
    remainder, where ONNX Div would truncate toward zero; floats: tf2onnx's lowering (Div, Floor)."""
    from tf2onnx.onnx_opset.math import FloorDiv

    if not _is_integer(ctx, node.input[0]):
        return FloorDiv.version_6(ctx, node)
    a, b = node.input
    _take_over(ctx, node, "Div", [_node(ctx, "Sub", [a, _node(ctx, "Mod", [a, b], fmod=0)]), b])


HANDLERS = {
    "UpperBound": (upper_bound, []),
    "Log1p": (log1p, []),
    "Expm1": (expm1, []),
    "StringToHashBucketFast": (string_to_hash_bucket_fast, []),
    "StringLower": (string_case, []),
    "StringUpper": (string_case, []),
    "StringSplitV2": (string_split_v2, []),
    "UnsortedSegmentSum": (unsorted_segment_sum, []),
    "DenseBincount": (dense_bincount, []),
    "RaggedTensorToSparse": (ragged_tensor_to_sparse, []),
    "FloorDiv": (floor_div, []),
    "FloorMod": (floor_mod, []),
}
