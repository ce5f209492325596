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
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tfbridge.contracts import RawColumn

_INTEGER_TYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_FLOAT_TYPES = ("FP16", "FP32", "FP64")
# v2 datatype -> (the JSON values it holds, how they become Arrow). Floats become float64 whatever their width:
# JSON numbers are doubles, and the model rounds them to float32 itself (`model_numbers`), as Spark's do.
_DATATYPES = {
    "BYTES": ((str,), pa.string()), "BOOL": ((bool,), pa.bool_()),
    **{name: ((int, float), pa.float64()) for name in _FLOAT_TYPES},
    **{name: ((int,), pa.int64()) for name in _INTEGER_TYPES},
}
# The v2 datatypes each kind of column takes.
COLUMN_DATATYPES = {"string": ("BYTES", *_INTEGER_TYPES, "BOOL"),
                    "float": (*_FLOAT_TYPES, *_INTEGER_TYPES, "BOOL")}
_EXPECTED = {"string": "strings, integers or booleans", "float": "numbers or booleans"}
_SHOWN = 60  # characters of a wrong value quoted in a message (a value may be megabytes long)


class RequestError(Exception):
    """A request the service cannot score as sent: the status to answer and a message naming what is wrong."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Rows:
    """A request's rows: one Arrow array per raw column (the user's names), and what the answer should hold."""

    columns: dict[str, pa.Array]
    count: int
    outputs: tuple[str, ...] | None = None  # v2 `outputs`: only these, in this order; None: all
    request_id: str | None = None  # v2 `id`, echoed


def parse_json(body: bytes) -> dict:
    """The body as a JSON object; RequestError otherwise."""
    try:
        value = json.loads(body)  # not orjson's: it reads an integer beyond 64 bits as a float
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError; RecursionError: deep nesting
        raise RequestError(f"the body is not valid JSON: {str(e)[:200]}") from None
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
    arrays = {name: _v2_array(name, given[name].get("datatype"), data[name], columns[name], max_string_bytes)
              for name in columns}
    return Rows(arrays, next(iter(counts.values())), _requested(body.get("outputs"), outputs),
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
    arrays = {name: _instances_array(name, [instance[name] for instance in instances], column, max_string_bytes)
              for name, column in columns.items()}
    return Rows(arrays, len(instances))


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


def _v2_array(name: str, datatype, values: list, column: RawColumn, max_string_bytes: int) -> pa.Array:
    kind = "string" if column.dtype == "string" else "float"
    if datatype not in COLUMN_DATATYPES[kind]:
        raise RequestError(f"input '{name}' has datatype {_shown(datatype)}; the model takes {_EXPECTED[kind]} "
                           f"there: one of {list(COLUMN_DATATYPES[kind])}")
    accepted, arrow_type = _DATATYPES[datatype]
    if accepted == (int,):
        values = _integers(values)
    _check_values(values, accepted, f"input '{name}' ({datatype}) takes {_python_names(accepted)}", "row")
    array = _to_arrow(values, arrow_type, f"input '{name}' ({datatype})", "row")
    return _within_string_limit(array, max_string_bytes, f"input '{name}'", "row")


def _instances_array(name: str, values: list, column: RawColumn, max_string_bytes: int) -> pa.Array:
    """An instances column as Arrow: numbers as float64; in a text column, integers and booleans as the feature
    stage read them ("3", "true")."""
    kind = "string" if column.dtype == "string" else "float"
    if kind == "string":
        values = _integers(values)
    _check_values(values, (str, int, bool) if kind == "string" else (int, float, bool),
                  f"column '{name}' takes {_EXPECTED[kind]}", "instance")
    if kind == "string":
        array = pa.array([_text(v) for v in values], type=pa.string())
        return _within_string_limit(array, max_string_bytes, f"column '{name}'", "instance")
    return _to_arrow(values, pa.float64(), f"column '{name}'", "instance")


def _within_string_limit(array: pa.Array, max_bytes: int, where: str, row_word: str) -> pa.Array:
    """The array, when none of its strings is over `max_bytes` bytes of UTF-8 (numbers pass as they are)."""
    if not pa.types.is_string(array.type):
        return array
    sizes = pc.binary_length(array)
    largest = pc.max(sizes).as_py()
    if largest is not None and largest > max_bytes:
        raise RequestError(f"{where}: {row_word} {pc.index(sizes, largest).as_py()} holds a string of {largest:,} "
                           f"bytes; this server takes at most {max_bytes:,} bytes per string (--max-string-kb)",
                           status=413)
    return array


def _to_arrow(values: list, arrow_type: pa.DataType, where: str, row_word: str) -> pa.Array:
    """Checked values as Arrow; an integer beyond int64 becomes a double in a float column, as JSON parsers read it,
    and is refused in an integer one."""
    try:
        return pa.array(values, type=arrow_type)
    except (pa.ArrowInvalid, OverflowError):
        if arrow_type != pa.float64():
            i, value = next((i, v) for i, v in enumerate(values) if type(v) is int and not -2**63 <= v < 2**63)
            raise RequestError(f"{where}: {row_word} {i} holds {_shown(value)}, beyond int64") from None
        return pa.array([None if v is None else _double(v, where, row_word, i) for i, v in enumerate(values)],
                        type=pa.float64())


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


def _check_values(values: list, accepted: tuple[type, ...], expected: str, row_word: str) -> None:
    """Every value of one of the `accepted` types or null; the first other one named."""
    kinds = set(map(type, values)) - {type(None)}
    if kinds.issubset(accepted):
        return
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
