"""Lowerings tf2onnx 1.17 lacks or makes slow, for the ops our transforms produce: one handler per TF op.

Each handler rewrites one TF node into standard ONNX nodes in tf2onnx's graph,
keeping the node's output names so its consumers are untouched. The registry
`HANDLERS` is what the export passes to tf2onnx as `custom_op_handlers`; each
handler has its own test running the ONNX result against TF on fresh inputs.

  UpperBound (tft.apply_buckets)      GreaterOrEqual + ReduceSum: a value on a boundary goes up
  Log1p, Expm1 (log1p, Box-Cox, YJ)   Kahan's forms log(u) * x / (u - 1), (u - 1) * x / log(u):
                                      full float32 accuracy near 0, where log(1 + x) would lose it
  StringToHashBucketFast (OOV ids,    one bucket: every string hashes to bucket 0; more: FarmHash's
  hash, cross)                        Fingerprint64 by onnxruntime-extensions 0.14.0's op of that name
  StringLower, StringUpper            StringNormalizer in a named locale, never the host's default:
  (normalize_text's lower-casing)     "C" for TF's ASCII-only default, C.UTF-8 for encoding="utf-8"
  StringSplitV2 (text to tokens)      ONNX StringSplit (opset 20) back to TF's sparse triple; tabs and
                                      newlines become spaces first, as TF splits on all whitespace
  UnsortedSegmentSum, DenseBincount   ScatterND / ScatterElements with reduction "add" (opset 16+),
  (ragged row lengths of tokens)      ids outside [0, n) dropped (TF drops negative segment ids
                                      and bincount values >= size, refuses the rest). tf2onnx's own
                                      lowering sorts (TopK + Unique): a quarter of the graph's time
  UnsortedSegmentMin (bag_of_words)   ScatterND with reduction "min" into the dtype's largest value (TF's
                                      for an empty segment); tf2onnx's lowering fails on integers
  StringNGrams (ngrams, bag_of_words) each width's joined tokens (StringConcat, opset 20) where they stay
                                      within the row, ordered by an int64 permutation; no padding
  StringJoin (tf.strings.join: TFT's   StringConcat (opset 20) input by input, the separator between;
  ngrams joins shifted tokens)        tf2onnx's onnxruntime-extensions StringJoin crashes on no tokens
  SegmentSum (TFT's segment_indices   ScatterND with reduction "add" into max id + 1 rows; tf2onnx's
  in ngrams and tfidf)                sorts, fails on an empty batch and on ids of unknown rank
  SparseReduceSum, SparseReduceSum-   ScatterND "add" at the kept index columns (dense); Unique over the
  Sparse (TFT's tfidf counts)         index rows, sorted as TF's, then ScatterElements "add" (sparse)
  RaggedTensorToSparse (token ids     row of each value by CumSum of scattered row starts; tf2onnx's
  to the model's sparse input)        divided by the longest row: 0 in a batch of empty texts
  FloorDiv, FloorMod on integers      Mod with fmod=0 (the divisor's sign, as Python's %), and
  (the calendar of dates and times)   (a - mod) / b: tf2onnx's Div truncates toward 0, which puts
                                      1969-12-31 23:59:59 (-1 s) on day 0, 1970-01-01
  Select, SelectV2 (tf.where: TFT's   Where: tf2onnx's c * a + !c * b is NaN wherever the side not
  guarded divisions, e.g. per key,    taken is inf or NaN (0 * inf): an unseen key's zero variance,
  apply_buckets_with_interpolation)   a bucket of zero width, a value beyond the last boundary
  If, StatelessIf (tf.cond: TFT's     tf2onnx's If with each branch node's op domain kept: tf2onnx
  *_per_key compare keys in one)      re-creates branch nodes in the default domain, and onnxruntime
                                      refuses a StringEqual or StringToHashBucketFast there

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


def take_over(ctx, node, op: str, inputs: list[str], domain: str | None = None, **attr) -> None:
    """Replaces `node` by one `op` node (of `domain`) that keeps its name, output names, shapes and dtypes."""
    name, outputs = node.name, list(node.output)
    shapes = [ctx.get_shape(o) for o in outputs]
    dtypes = [ctx.get_dtype(o) for o in outputs]
    ctx.remove_node(name)
    ctx.make_node(op, inputs, attr=attr or None, outputs=outputs, name=name, shapes=shapes, dtypes=dtypes,
                  domain=domain)


def upper_bound(ctx, node, name, args):
    """searchsorted(boundaries [R, B], values [R, N], side=right) = how many boundaries are <= value."""
    boundaries, values = node.input
    column = _node(ctx, "Unsqueeze", [values, _const(ctx, [2])])  # [R, N, 1]
    row = _node(ctx, "Unsqueeze", [boundaries, _const(ctx, [1])])  # [R, 1, B]
    counts = _node(ctx, "Cast", [_node(ctx, "GreaterOrEqual", [column, row])], to=TensorProto.INT64)
    out_type = ctx.get_dtype(node.output[0])
    if out_type == TensorProto.INT64:
        take_over(ctx, node, "ReduceSum", [counts, _const(ctx, [2])], keepdims=0)
    else:
        total = _node(ctx, "ReduceSum", [counts, _const(ctx, [2])], keepdims=0)
        take_over(ctx, node, "Cast", [total], to=out_type)


def log1p(ctx, node, name, args):
    """log(1 + x) as log(u) * (x / (u - 1)) with u = 1 + x, and x itself where u rounds to 1."""
    x = node.input[0]
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(x))
    one = _const(ctx, 1, dtype)
    u = _node(ctx, "Add", [x, one])
    d = _node(ctx, "Sub", [u, one])
    ratio = _node(ctx, "Div", [x, _node(ctx, "Where", [_node(ctx, "Equal", [d, _const(ctx, 0, dtype)]), one, d])])
    general = _node(ctx, "Mul", [_node(ctx, "Log", [u]), ratio])
    take_over(ctx, node, "Where", [_node(ctx, "Equal", [u, one]), x, general])


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
    take_over(ctx, node, "Where", [near_one, x, _node(ctx, "Where", [extreme, d, general])])


def string_to_hash_bucket_fast(ctx, node, name, args):
    """FarmHash's Fingerprint64 of the string's bytes modulo the buckets: onnxruntime-extensions' op of the
    same name, which in the pinned 0.14.0 is TF's kernel (standard ONNX cannot read a string's bytes).

    tf2onnx's own handler maps to the same op; this one also keeps the graph free of the library where
    there is one bucket (every string hashes to 0, as with a vocabulary's single OOV bucket). The op reads
    a string up to its first NUL byte, TF the whole string: the feature stage and every scorer refuse NUL in
    any text column (tfbridge.contracts.columns.refuse_nul). 0.15 hashes with std::hash instead, which the text-op
    probes (tfbridge.scoring.session.check_text_ops) would catch before any row is scored."""
    buckets = node.get_attr_int("num_buckets")
    if buckets == 1:
        shape = _node(ctx, "Shape", [node.input[0]])
        take_over(ctx, node, "ConstantOfShape", [shape], value=numpy_helper.from_array(np.zeros([1], np.int64)))
        return
    take_over(ctx, node, "StringToHashBucketFast", [node.input[0], _const(ctx, [buckets])], EXTENSIONS_DOMAIN)


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
    take_over(ctx, node, "Slice", [scattered, _const(ctx, [0]), n, _const(ctx, [0])])


def _filled(ctx, shape: str, value, dtype) -> str:
    return _node(ctx, "ConstantOfShape", [shape], value=numpy_helper.from_array(np.full([1], value, dtype)))


def unsorted_segment_sum(ctx, node, name, args):
    """Sums of data rows per segment id, for rank-1 ids (TF's RaggedReduceSum); other ranks: tf2onnx's lowering."""
    _unsorted_segment_reduce(ctx, node, "add", lambda dtype: 0)


def unsorted_segment_min(ctx, node, name, args):
    """Minimum of data rows per segment id, for rank-1 ids (bag_of_words' first occurrences), the dtype's largest
    value for an empty segment as in TF; other ranks: tf2onnx's lowering, which fails on integer data."""
    _unsorted_segment_reduce(ctx, node, "min", lambda dtype: np.iinfo(dtype).max if np.issubdtype(dtype, np.integer)
                             else np.finfo(dtype).max)


def segment_sum(ctx, node, name, args):
    """Sums of data rows per sorted segment id (TFT's segment_indices, the position of each n-gram or tf-idf term in
    its row in ngrams and tfidf), max id + 1 segments (0 for no ids), as UnsortedSegmentSum's scatter. tf2onnx's own
    lowering sorts (TopK + Unique), fails in onnxruntime on no ids (a batch without a token: a segment count from
    the max of nothing), and refuses ids of unknown rank, as tfidf's are behind SparseReduceSumSparse: TF's ids are
    always a vector."""
    data, segment_ids = node.input
    ids = _node(ctx, "Cast", [segment_ids], to=TensorProto.INT64)
    count = _node(ctx, "Add", [_node(ctx, "ReduceMax", [_node(ctx, "Concat", [ids, _const(ctx, [-1])], axis=0)],
                                     keepdims=0), _const(ctx, 1)])  # 0 for no ids
    _scatter_segments(ctx, node, data, ids, count, "add", 0)


def _unsorted_segment_reduce(ctx, node, reduction: str, initial) -> None:
    """ScatterND with `reduction` into rows filled with `initial(dtype)`, ids outside [0, n) dropped (TF drops
    negative ids); tf2onnx's own lowering builds a one-hot matrix of values x segments."""
    from tf2onnx.onnx_opset.reduction import SegmentSum

    data, segment_ids, num_segments = node.input
    if ctx.get_rank(segment_ids) != 1:
        return SegmentSum.any_version(ctx.opset, ctx, node)
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(data))
    _scatter_segments(ctx, node, data, segment_ids, num_segments, reduction, initial(dtype))


def _scatter_segments(ctx, node, data: str, segment_ids: str, num_segments: str, reduction: str, initial) -> None:
    """Takes over `node` with its segments: the rows of `data` reduced by ScatterND into `num_segments` rows
    filled with `initial`, rank-1 ids outside [0, num_segments) dropped."""
    n, ids = _spill_row(ctx, segment_ids, num_segments)
    rows = _node(ctx, "Concat", [_node(ctx, "Add", [n, _const(ctx, [1])]),
                                 _node(ctx, "Slice", [_node(ctx, "Shape", [data]), _const(ctx, [1]),
                                                      _const(ctx, [np.iinfo(np.int64).max])])], axis=0)
    filled = _filled(ctx, rows, initial, utils.map_onnx_to_numpy_type(ctx.get_dtype(data)))
    reduced = _node(ctx, "ScatterND", [filled, _node(ctx, "Unsqueeze", [ids, _const(ctx, [1])]), data],
                    reduction=reduction)
    _without_spill_row(ctx, node, reduced, n)


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


def _sparse_reduction(ctx, node) -> tuple[str, str, int]:
    """(each value's index in the output, the output's dense shape, its rank) of a SparseReduceSum(Sparse) node whose
    reduction axes are a constant (TFT's tfidf: axis 1 of its [doc, term] and [doc, token, term] counts, axis 0 of
    its documents per term): the index's kept columns, or with keep_dims the whole index with the reduced columns 0,
    the reduced dimensions staying in the shape as 1."""
    indices, _, dense_shape, axes = node.input
    rank = (ctx.get_shape(dense_shape) or [-1])[0]
    axes_node = ctx.get_node_by_output(axes)
    if rank < 0 or not axes_node.is_const():
        raise UnsupportedOp(f"{node.type} with a rank or reduction axes known only when it runs, in node {node.name}")
    reduced = {int(a) % rank for a in np.atleast_1d(axes_node.get_tensor_value(as_list=False))}
    kept = [d not in reduced for d in range(rank)]
    if node.get_attr_value("keep_dims", False):
        return (_node(ctx, "Mul", [indices, _const(ctx, kept)]),
                _node(ctx, "Where", [_const(ctx, kept, bool), dense_shape, _const(ctx, [1] * rank)]), rank)
    columns = _const(ctx, np.flatnonzero(kept))
    return (_node(ctx, "Gather", [indices, columns], axis=1), _node(ctx, "Gather", [dense_shape, columns]),
            sum(kept))


def sparse_reduce_sum(ctx, node, name, args):
    """tf.sparse.reduce_sum to a dense tensor (TFT's tfidf: the tokens per document, the documents per term): the
    values added by ScatterND into zeros of the output's shape. tf2onnx has no lowering."""
    out_indices, shape, _ = _sparse_reduction(ctx, node)
    values = node.input[1]
    zeros = _filled(ctx, shape, 0, utils.map_onnx_to_numpy_type(ctx.get_dtype(values)))
    take_over(ctx, node, "ScatterND", [zeros, out_indices, values], reduction="add")


def sparse_reduce_sum_sparse(ctx, node, name, args):
    """tf.sparse.reduce_sum to a SparseTensor (TFT's tfidf: the count of each term in each document): one entry per
    distinct output index, in TF's row-major order, from ONNX Unique over the index rows (sorted, axis 0), whose
    inverse adds each value into its entry (ScatterElements). tf2onnx has no lowering."""
    out_indices, shape, rank = _sparse_reduction(ctx, node)
    values = node.input[1]
    unique = ctx.make_node("Unique", [out_indices], attr={"axis": 0, "sorted": 1}, output_count=4)
    entries, _, entry_of_value, _ = unique.output
    entry_count = _node(ctx, "Slice", [_node(ctx, "Shape", [entries]), _const(ctx, [0]), _const(ctx, [1])])
    zeros = _filled(ctx, entry_count, 0, utils.map_onnx_to_numpy_type(ctx.get_dtype(values)))
    sums = _node(ctx, "ScatterElements", [zeros, entry_of_value, values], axis=0, reduction="add")
    outputs = list(node.output)
    dtypes = [ctx.get_dtype(o) for o in outputs]
    ctx.remove_node(node.name)  # the outputs' ranks kept known: tf2onnx's lowerings of their consumers may need them
    for source, output, dtype, out_shape in zip((entries, sums, shape), outputs, dtypes, ([-1, rank], [-1], [rank])):
        ctx.make_node("Identity", [source], outputs=[output], dtypes=[dtype], shapes=[out_shape])


def string_join(ctx, node, name, args):
    """tf.strings.join (TFT's ngrams joins its shifted tokens with it) as standard StringConcat (opset 20), input by
    input with the separator between, scalars broadcast as in TF. tf2onnx maps it to onnxruntime-extensions'
    StringJoin, which crashes onnxruntime (segmentation fault) on empty inputs: a batch without a token."""
    separator = node.get_attr_value("separator", b"")
    separator = separator.decode() if isinstance(separator, bytes) else separator
    first, *others = node.input
    if separator:
        sep = ctx.make_const(utils.make_name("separator"), np.array(separator, object)).output[0]
        others = [piece for text in others for piece in (sep, text)]
    if not others:
        return take_over(ctx, node, "Identity", [first])
    for piece in others[:-1]:
        first = _node(ctx, "StringConcat", [first, piece])
    take_over(ctx, node, "StringConcat", [first, others[-1]])


def _value_rows(ctx, row_splits: str, values: str) -> tuple[str, str, str, str]:
    """(rows, positions, starts, lengths) of a ragged tensor's flat `values` from its `row_splits`, in
    O(rows + values): each value's row is a running count of the row starts at or before it (a scatter-add
    of the interior splits, then CumSum); positions are 0..values-1; starts and lengths are per row."""
    splits = _node(ctx, "Cast", [row_splits], to=TensorProto.INT64)
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
    return rows, positions, starts, lengths


def string_ngrams(ctx, node, name, args):
    """TF's StringNGrams (tf.strings.ngrams, the ngrams step) without padding: each row's n-grams of every
    width in order, width by width, each the row's consecutive tokens joined by the separator (ONNX
    StringConcat, opset 20); rows shorter than a width have none of it.

    Every token position t is a candidate start for each width w, kept where t + w reaches no further than its
    row's end; a kept n-gram goes to position out_start[row] + (n-grams of the smaller widths in its row) +
    (t - row start). The strings are gathered into that order through an int64 permutation (ScatterND), so no
    string is scattered or sorted."""
    if node.get_attr_int("pad_width") != 0 or node.get_attr_value("preserve_short_sequences", False):
        raise UnsupportedOp(f"StringNGrams with padding or preserve_short_sequences in node {node.name}: only "
                            f"unpadded n-grams (tf.strings.ngrams' defaults) export")
    data, splits = node.input
    separator = node.get_attr_value("separator")
    separator = separator.decode() if isinstance(separator, bytes) else separator
    widths = list(node.get_attr_value("ngram_widths"))
    rows, positions, starts, lengths = _value_rows(ctx, splits, data)
    ends = _node(ctx, "Add", [starts, lengths])
    token_ends = _node(ctx, "Gather", [ends, rows])
    within = _node(ctx, "Sub", [positions, _node(ctx, "Gather", [starts, rows])])
    last = _node(ctx, "Sub", [_node(ctx, "Shape", [data]), _const(ctx, [1])])
    sep = ctx.make_const(utils.make_name("separator"), np.array(separator, object)).output[0]
    counts = [_node(ctx, "Max", [_node(ctx, "Sub", [lengths, _const(ctx, w - 1)]), _const(ctx, 0)]) for w in widths]
    out_lengths = counts[0]
    for c in counts[1:]:
        out_lengths = _node(ctx, "Add", [out_lengths, c])
    out_splits = _node(ctx, "Concat", [_const(ctx, [0]), _node(ctx, "CumSum", [out_lengths, _const(ctx, 0)])],
                       axis=0)
    before = _node(ctx, "Slice", [out_splits, _const(ctx, [0]), _const(ctx, [-1]), _const(ctx, [0])])
    texts, places, keeps = [], [], []
    for w, count in zip(widths, counts):
        gram = data
        for k in range(1, w):
            later = _node(ctx, "Gather", [data, _node(ctx, "Min", [_node(ctx, "Add", [positions, _const(ctx, k)]),
                                                                    last])])
            gram = _node(ctx, "StringConcat", [_node(ctx, "StringConcat", [gram, sep]), later])
        texts.append(gram)
        keeps.append(_node(ctx, "LessOrEqual", [_node(ctx, "Add", [positions, _const(ctx, w)]), token_ends]))
        places.append(_node(ctx, "Add", [_node(ctx, "Gather", [before, rows]), within]))
        before = _node(ctx, "Add", [before, count])
    keep = _node(ctx, "Concat", keeps, axis=0)
    grams = _node(ctx, "Compress", [_node(ctx, "Concat", texts, axis=0), keep], axis=0)
    place = _node(ctx, "Compress", [_node(ctx, "Concat", places, axis=0), keep], axis=0)
    order = _node(ctx, "ScatterND", [_filled(ctx, _node(ctx, "Shape", [place]), 0, np.int64),
                                     _node(ctx, "Unsqueeze", [place, _const(ctx, [1])]),
                                     _node(ctx, "Range", [_const(ctx, 0), _node(ctx, "Squeeze", [
                                         _node(ctx, "Shape", [place])]), _const(ctx, 1)])])
    grams_out, splits_out = node.output
    dtypes = [ctx.get_dtype(o) for o in node.output]
    ctx.remove_node(node.name)
    ctx.make_node("Gather", [grams, order], outputs=[grams_out], dtypes=[dtypes[0]], shapes=[[-1]])
    ctx.make_node("Cast", [out_splits], attr={"to": dtypes[1]}, outputs=[splits_out], dtypes=[dtypes[1]],
                  shapes=[[-1]])


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
    values = node.input[1]
    rows, positions, starts, lengths = _value_rows(ctx, node.input[0], values)
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
    take_over(ctx, node, "Mod", list(node.input), fmod=0)


def floor_div(ctx, node, name, args):
    """a // b rounded toward minus infinity (TF's FloorDiv): on integers (a - a mod b) / b, a division with no
    remainder, where ONNX Div would truncate toward zero; floats: tf2onnx's lowering (Div, Floor)."""
    from tf2onnx.onnx_opset.math import FloorDiv

    if not _is_integer(ctx, node.input[0]):
        return FloorDiv.version_6(ctx, node)
    a, b = node.input
    take_over(ctx, node, "Div", [_node(ctx, "Sub", [a, _node(ctx, "Mod", [a, b], fmod=0)]), b])


def select(ctx, node, name, args):
    """tf.where(c, a, b) (Select, SelectV2) as ONNX Where, which takes each element from one side only.

    tf2onnx lowers a numeric select to c * a + !c * b (faster in old onnxruntime) unless it sees the condition
    test for NaN; that is NaN wherever the side not taken is inf or NaN (0 * inf), and TFT guards its divisions
    with tf.where: an unseen key's zero variance in `scale_to_z_score_per_key`, a bucket of zero width or a
    value beyond the last boundary in `apply_buckets_with_interpolation`. tf2onnx's `handles_nan` attribute (not an
    ONNX attribute of Where, so never written) sends it down tf2onnx's own Where path, Select's reshape included."""
    from tf2onnx.onnx_opset.controlflow import Select

    node.set_attr("handles_nan", True)
    Select.version_9(ctx, node)


def if_keeping_branch_domains(ctx, node, name, args):
    """tf.cond (If, StatelessIf) as tf2onnx lowers a StatelessIf, to ONNX If with the two branch functions as
    subgraphs, with the op domain of every branch node kept.

    tf2onnx's prefix_graph re-creates each branch node as `<branch function>_<node>` in the default domain, so an
    op of another domain in a branch (onnxruntime-extensions' StringEqual or StringToHashBucketFast, ai.onnx.ml's
    CategoryMapper) made a graph onnxruntime refuses ("No Op registered for StringEqual"): TFT's `*_per_key`
    functions compare the keys inside a tf.cond. Nested conds are lowered inside their branch function first, so
    one level is enough. TF's stateful If goes the same way: tf2onnx's own lowering of it skips one whose
    branches take no inputs, leaving TF's attributes in an invalid graph."""
    from tf2onnx.onnx_opset.controlflow import StatelessIfOp
    from tf2onnx.tf_loader import find_function

    domains = {}
    for branch in ("then_branch", "else_branch"):
        function = node.get_attr_str(branch)
        domains.update({f"{function}_{n.name}": n.domain for n in find_function(function).get_nodes() if n.domain})
    StatelessIfOp.version_1(ctx, node)
    for branch in ctx.get_node_by_name(name).get_body_graphs().values():
        for branch_node in branch.get_nodes():
            branch_node.domain = domains.pop(branch_node.name, branch_node.domain)
    if domains:
        raise UnsupportedOp(f"{node.type} {name}: tf2onnx renamed its branch nodes {sorted(domains)} otherwise than "
                            f"`<branch function>_<node>`, so their op domains cannot be restored")


HANDLERS = {
    "UpperBound": (upper_bound, []),
    "Log1p": (log1p, []),
    "Expm1": (expm1, []),
    "StringToHashBucketFast": (string_to_hash_bucket_fast, []),
    "StringNGrams": (string_ngrams, []),
    "StringJoin": (string_join, []),
    "StringLower": (string_case, []),
    "StringUpper": (string_case, []),
    "StringSplitV2": (string_split_v2, []),
    "SegmentSum": (segment_sum, []),
    "UnsortedSegmentSum": (unsorted_segment_sum, []),
    "UnsortedSegmentMin": (unsorted_segment_min, []),
    "DenseBincount": (dense_bincount, []),
    "SparseReduceSum": (sparse_reduce_sum, []),
    "SparseReduceSumSparse": (sparse_reduce_sum_sparse, []),
    "RaggedTensorToSparse": (ragged_tensor_to_sparse, []),
    "FloorDiv": (floor_div, []),
    "FloorMod": (floor_mod, []),
    "Select": (select, []),
    "SelectV2": (select, []),
    "If": (if_keeping_branch_domains, []),
    "StatelessIf": (if_keeping_branch_domains, []),
}
