"""The request forms the service takes and the answers it gives, checked at the boundary, once.

Two forms of the same rows:

- the Open Inference Protocol (KServe v2) REST form, one input per raw column under the user's column name:
  `{"inputs": [{"name": "carat", "shape": [2], "datatype": "FP64", "data": [0.3, 1.1]}, ...]}` ->
  `{"model_name", "model_version", "outputs": [{"name": "prediction", "shape": [2], "datatype": "FP64",
  "data": [...]}]}`;
- the plain form people type by hand: `{"instances": [{"carat": 0.3, "cut": "Ideal", ...}]}` ->
  `{"predictions": [{"prediction": 512.3}, ...]}`.

What a column takes follows the Spark scorer's schema check (`ScoringModel.check_schema`): a number column
numbers or booleans (v2: FP16/32/64, INT8..64, UINT8..64, BOOL), a text column strings, integers or booleans
(v2: BYTES, INT*, UINT*, BOOL), read as the feature stage read them ("3", "true"). Where an integer is taken (a
shape, an INT* input, a text column) a number with no fraction is one: JSON does not tell 3.0 from 3 (nor does
JSON Schema's "integer"), so neither does the service. `null` is a missing value:
"" in a text column, and in a number column allowed only where the model imputes (MissingValues otherwise).
A string longer than the limit (`--max-string-kb`) is refused (413) before it reaches the model, whose text ops
would hold the scoring thread, and every request batched with it, while they read it.
Every wrong request raises RequestError naming the column, the row and what was expected.

A decoded request holds plain Python values, checked and put in the one form the batch converts
(`ServedModel.arrays`): a number column's numbers, booleans and nulls, every integer one a double holds exactly;
a text or date column's strings and nulls. Arrow and the graph's feeds are made once per batch of requests, not once per
request: for single rows that conversion cost more than the run (benchmarks/serve_throughput.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math

import numpy as np
import orjson

from tfbridge.contracts import RawColumn

_INTEGER_TYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_FLOAT_TYPES = ("FP16", "FP32", "FP64")
# v2 datatype -> the JSON values it holds. Numbers become doubles whatever their width: JSON numbers are doubles,
# and the model rounds them to float32 itself (`model_numbers`), as Spark's do.
_DATATYPES = {"BYTES": (str,), "BOOL": (bool,), **{name: (int, float) for name in _FLOAT_TYPES},
              **{name: (int,) for name in _INTEGER_TYPES}}
# The v2 datatypes each kind of column takes (`column_kind`).
COLUMN_DATATYPES = {"string": ("BYTES", *_INTEGER_TYPES, "BOOL"), "timestamp": ("BYTES",),
                    "float": (*_FLOAT_TYPES, *_INTEGER_TYPES, "BOOL")}
_EXPECTED = {"string": "strings, integers or booleans", "float": "numbers or booleans",
             "timestamp": "dates or times as text (ISO 8601, or the column's datetime format)"}
_SHOWN = 60  # characters of a wrong value quoted in a message (a value may be megabytes long)
_EXACT = 2**53  # an integer beyond it has no exact double (and Arrow refuses to make one of it)
# A run of 19 digits: maybe an integer orjson reads as a float (beyond int64), or a long fraction. Found as nines
# in the body with every digit made a 9: 50 µs on 50 KB, where a regular expression took 380.
_DIGITS_AS_NINES = bytes.maketrans(b"012345678", b"999999999")
_LONG_DIGITS = b"9" * 19


class RequestError(Exception):
    """A request the service cannot score as sent: the status to answer and a message naming what is wrong."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Rows:
    """A request's rows: the values of each raw column (the user's names; see above for their form), and what the
    answer should hold."""

    columns: dict[str, list]
    count: int
    outputs: tuple[str, ...] | None = None  # v2 `outputs`: only these, in this order; None: all
    request_id: str | None = None  # v2 `id`, echoed


def parse_json(body: bytes) -> dict:
    """The body as a JSON object, read as Python's json reads it; RequestError otherwise.

    orjson reads it faster, and the same, except for what it refuses (NaN, a lone surrogate, deep nesting: Python's
    json then reads it, or says why not) and for an integer beyond 64 bits, which it reads as a float: a body with a
    run of 19 digits goes to Python's json (tests/http_serve/test_protocol.py compares the two)."""
    try:
        if _LONG_DIGITS not in body.translate(_DIGITS_AS_NINES):
            with contextlib.suppress(orjson.JSONDecodeError):
                value = orjson.loads(body)
                return _object(value)
        value = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError; RecursionError: deep nesting
        raise RequestError(f"the body is not valid JSON: {str(e)[:200]}") from None
    return _object(value)


def _object(value) -> dict:
    if not isinstance(value, dict):
        raise RequestError(f"the body must be a JSON object, not {type(value).__name__}")
    return value


def decode_infer(body: dict, columns: dict[str, RawColumn], outputs: list[str], max_rows: int,
                 max_string_bytes: int) -> Rows:
    """A v2 inference request: every model column exactly once, each [n] (or [n, 1]) of one datatype."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError('the body must hold "inputs": a list of {"name", "shape", "datatype", "data"}, one per '
                           f"column the model takes: {list(columns)}")
    given: dict[str, dict] = {}
    for entry in inputs:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise RequestError('each of "inputs" must be an object with a "name" (a column the model takes), '
                               f'"shape", "datatype" and "data"; got {_shown(entry)}')
        if entry["name"] in given:
            raise RequestError(f"input '{entry['name']}' is given twice")
        given[entry["name"]] = entry
    _check_names(given, columns, "input")
    data = {name: _v2_data(name, entry, max_rows) for name, entry in given.items()}
    counts = {name: len(values) for name, values in data.items()}
    if len(set(counts.values())) > 1:
        raise RequestError(f"the inputs differ in rows (shape[0]): {counts}; every column needs one value per row")
    values = {name: _v2_values(name, given[name].get("datatype"), data[name], columns[name], max_string_bytes)
              for name in columns}
    return Rows(values, next(iter(counts.values())), _requested(body.get("outputs"), outputs),
                _request_id(body.get("id")))


def decode_instances(body: dict, columns: dict[str, RawColumn], max_rows: int, max_string_bytes: int) -> Rows:
    """The plain form: `instances`, a list of objects, each with every column the model takes."""
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise RequestError('the body must hold "instances": a non-empty list of objects, each with the columns '
                           f"{list(columns)}")
    if len(instances) > max_rows:
        raise _too_many(len(instances), max_rows)
    expected = columns.keys()
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise RequestError(f"instance {i} is {_json_type(instance)}, not an object of the columns {list(columns)}")
        if instance.keys() != expected:
            _check_names(instance, columns, f"instance {i}: column")
    values = {name: _instances_values(name, [instance[name] for instance in instances], column, max_string_bytes)
              for name, column in columns.items()}
    return Rows(values, len(instances))


def _check_names(given, columns: dict[str, RawColumn], what: str) -> None:
    missing = [name for name in columns if name not in given]
    unknown = [name for name in given if name not in columns]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise RequestError(f"{what} '{missing[0]}' is missing{more}; the model takes {list(columns)}")
    if unknown:
        raise RequestError(f"{what} '{unknown[0]}' is not one the model takes; it takes {list(columns)}")


def _v2_data(name: str, entry: dict, max_rows: int) -> list:
    """An input's values, one per row: its shape ([n] or [n, 1]) checked against its data and the limit; the
    nested row-major form of [n, 1] flattened."""
    shape, data = entry.get("shape"), entry.get("data")
    if isinstance(shape, list):
        shape = _integers(shape)
    if (not isinstance(shape, list) or len(shape) not in (1, 2) or not all(type(d) is int and d >= 0 for d in shape)
            or len(shape) == 2 and shape[1] != 1):
        raise RequestError(f"input '{name}' has shape {_shown(shape)}; a column is [rows] or [rows, 1]")
    if shape[0] > max_rows:
        raise _too_many(shape[0], max_rows)
    if shape[0] == 0:
        raise RequestError(f"input '{name}' has no rows (shape {shape}): send at least one")
    if not isinstance(data, list):
        raise RequestError(f'input \'{name}\' needs "data": a list of {shape[0]} values')
    if data and isinstance(data[0], list):
        if not all(isinstance(row, list) and len(row) == 1 for row in data):
            raise RequestError(f"input '{name}' has nested data that is not [rows, 1]")
        data = [row[0] for row in data]
    if len(data) != shape[0]:
        raise RequestError(f'input \'{name}\' has shape {shape} but {len(data)} values in "data"')
    return data


def column_kind(column: RawColumn) -> str:
    """What a column takes in a request: "string" (text), "timestamp" (dates or times, as text the scoring core
    reads: `model_timestamps`) or "float" (numbers)."""
    return column.dtype if column.dtype in ("string", "timestamp") else "float"


def _v2_values(name: str, datatype, values: list, column: RawColumn, max_string_bytes: int) -> list:
    kind = column_kind(column)
    if datatype not in COLUMN_DATATYPES[kind]:
        raise RequestError(f"input '{name}' has datatype {_shown(datatype)}; the model takes {_EXPECTED[kind]} "
                           f"there: one of {list(COLUMN_DATATYPES[kind])}")
    accepted = _DATATYPES[datatype]
    if accepted == (int,):
        values = _integers(values)
    kinds = _check_values(values, accepted, f"input '{name}' ({datatype}) takes {_python_names(accepted)}", "row")
    if accepted == (int,):
        _within_int64(values, f"input '{name}' ({datatype})")
    return _batch_form(values, kinds, kind, f"input '{name}'", "row", max_string_bytes)


def _instances_values(name: str, values: list, column: RawColumn, max_string_bytes: int) -> list:
    """An instances column: numbers or booleans; in a text column, integers and booleans read as the feature
    stage read them ("3", "true"); in a date or time column, text."""
    kind = column_kind(column)
    if kind == "string":
        values = _integers(values)
    accepted = {"string": (str, int, bool), "timestamp": (str,), "float": (int, float, bool)}[kind]
    kinds = _check_values(values, accepted, f"column '{name}' takes {_EXPECTED[kind]}", "instance")
    return _batch_form(values, kinds, kind, f"column '{name}'", "instance", max_string_bytes)


def _batch_form(values: list, kinds: set[type], kind: str, where: str, row_word: str, max_string_bytes: int) -> list:
    """Checked values (of the types `kinds`, null aside) in the form the batch converts: text as strings (within
    the size limit, valid Unicode), numbers with every integer beyond 2**53 as the double it rounds to (as Arrow
    casts an int64)."""
    if kind in ("string", "timestamp"):
        if not kinds <= {str}:
            values = [_text(v) for v in values]
        _check_strings(values, max_string_bytes, where, row_word)
        return values
    if int not in kinds:
        return values
    integers = values if kinds == {int} and None not in values else [v for v in values if type(v) is int]
    if -_EXACT <= min(integers) and max(integers) <= _EXACT:
        return values
    return [_double(v, where, row_word, i) if type(v) is int and not -_EXACT <= v <= _EXACT else v
            for i, v in enumerate(values)]


def _within_int64(values: list, where: str) -> None:
    integers = [v for v in values if v is not None]
    if integers and not (-2**63 <= min(integers) and max(integers) < 2**63):
        i, value = next((i, v) for i, v in enumerate(values) if v is not None and not -2**63 <= v < 2**63)
        raise RequestError(f"{where}: row {i} holds {_shown(value)}, beyond int64")


def _check_strings(values: list, max_bytes: int, where: str, row_word: str) -> None:
    """Every string valid Unicode (JSON's escapes can make a lone surrogate, which has no UTF-8) and at most
    `max_bytes` bytes of UTF-8: 413 for the first longer one."""
    present = [v for v in values if v is not None] if None in values else values
    try:
        "".join(present).encode()
    except UnicodeEncodeError:
        i, value = next((i, v) for i, v in enumerate(values) if v is not None and not _encodes(v))
        raise RequestError(f"{where}: {row_word} {i} holds a string that is not valid Unicode (a lone surrogate): "
                           f"{_shown(value)}") from None
    if not present or max(map(len, present)) * 4 <= max_bytes:  # a character is 4 bytes of UTF-8 at most
        return
    for i, value in enumerate(values):
        if value is not None and len(value.encode()) > max_bytes:
            raise RequestError(f"{where}: {row_word} {i} holds a string of {len(value.encode()):,} bytes; this "
                               f"server takes at most {max_bytes:,} bytes per string (--max-string-kb)", status=413)


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _double(value, where: str, row_word: str, i: int) -> float:
    try:
        return float(value)
    except OverflowError:
        raise RequestError(f"{where}: {row_word} {i} holds {_shown(value)}, beyond any double") from None


def _integers(values: list) -> list:
    """The values, each number with no fraction (within int64) as an integer: 3.0 is JSON's 3."""
    if float not in set(map(type, values)):
        return values
    return [int(v) if type(v) is float and v.is_integer() and -2**63 <= v < 2**63 else v for v in values]


def _check_values(values: list, accepted: tuple[type, ...], expected: str, row_word: str) -> set[type]:
    """Every value of one of the `accepted` types or null, the first other one named; the types found (null aside)."""
    kinds = set(map(type, values)) - {type(None)}
    if kinds.issubset(accepted):
        return kinds
    i, value = next((i, v) for i, v in enumerate(values) if v is not None and type(v) not in accepted)
    raise RequestError(f"{expected}; {row_word} {i} holds {_shown(value)} ({_json_type(value)})")


def _text(value):
    if type(value) is bool:
        return "true" if value else "false"
    return str(value) if type(value) is int else value


def _requested(outputs, names: list[str]) -> tuple[str, ...] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and o.get("name") in names for o in outputs):
        raise RequestError(f'"outputs" must be a list of {{"name": ...}} naming outputs the model gives: {names}; got '
                           f"{_shown(outputs)}")
    return tuple(o["name"] for o in outputs)


def _request_id(value) -> str | None:
    if value is not None and not isinstance(value, str):
        raise RequestError(f'"id" must be a string, not {_shown(value)}')
    return value


def _too_many(rows: int, max_rows: int) -> RequestError:
    return RequestError(f"the request has {rows:,} rows; this server takes at most {max_rows:,} per request "
                        f"(--max-request-rows): split it", status=413)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text):,} characters)"


def _json_type(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _python_names(types: tuple[type, ...]) -> str:
    return {(str,): "strings", (bool,): "booleans", (int, float): "numbers", (int,): "integers"}[types]


def encode_infer(model_name: str, version: str, outputs: dict[str, np.ndarray], rows: Rows) -> dict:
    """The v2 response: one output per prediction column, as the Spark scorer names them."""
    names = rows.outputs or tuple(outputs)
    response = {"model_name": model_name, "model_version": version,
                "outputs": [_v2_output(name, outputs[name]) for name in names]}
    if rows.request_id is not None:
        response["id"] = rows.request_id
    return response


def _v2_output(name: str, values: np.ndarray) -> dict:
    return {"name": name, "shape": list(values.shape), "datatype": datatype(values.dtype),
            "data": json_values(values.reshape(-1))}


def encode_predictions(outputs: dict[str, np.ndarray]) -> dict:
    """The plain response: one object per row, its prediction columns by name."""
    columns = {name: json_values(values) for name, values in outputs.items()}
    return {"predictions": [dict(zip(columns, row)) for row in zip(*columns.values())]}


def datatype(dtype: np.dtype) -> str:
    """The v2 datatype of an output array."""
    return {"f": "FP64", "i": "INT64", "u": "UINT64", "b": "BOOL"}.get(np.dtype(dtype).kind, "BYTES")


def json_values(values: np.ndarray) -> list:
    """An output as JSON values (a list per row for a 2-D one); NaN and ±inf, which JSON lacks, as null."""
    listed = values.tolist()
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        return _finite(listed)
    return listed


def _finite(value):
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value if math.isfinite(value) else None
