"""The OpenAPI 3.1 document of the service (`GET /openapi.json`), written by hand for the model it serves.

The model's columns are in it (each instance's properties, each v2 input by name with the datatypes and values it
takes), so that a client generator or a fuzzer (schemathesis, in the tests) works from the document alone. The
values are bounded as the scoring core bounds them: numbers within float32's range and above the bound of a column
whose steps have one (compared after rounding to float32), integers within int64, `null` only where the model takes
a missing value. What a schema cannot say: the v2 inputs must agree in rows (each shape[0] the length of its data).
"""

from __future__ import annotations

import math

import numpy as np

from http_serve.model import PROBABILITIES
from http_serve.protocol import COLUMN_DATATYPES, column_kind
from tfbridge.contracts import RawColumn
from tfbridge.contracts.columns import FLOAT32_MAX, FLOAT32_TINY

_JSON = "application/json"


def document(name: str, version: str, columns: dict[str, RawColumn], outputs: list[str], task: str) -> dict:
    """The document for the model `name` with these raw columns and prediction outputs."""
    return {
        "openapi": "3.1.0",
        "info": {"title": f"tfbridge serve: {name}", "version": version,
                 "description": "The exported ONNX graph of a tfbridge run, raw columns in, predictions out, named "
                                "as the Spark scorer names its columns. Two forms of the same rows: the Open "
                                "Inference Protocol (KServe v2) and `instances`."},
        "paths": {
            "/v2/health/live": _get("The process is up", "Live"),
            "/v2/health/ready": _get("The model is loaded, verified and warmed up", "Ready"),
            "/v2": _get("Server metadata", "ServerMetadata"),
            "/v2/models/{name}": _get("Model metadata: its inputs (the raw columns) and outputs", "ModelMetadata",
                                      model=True),
            "/v2/models/{name}/ready": _get("The model is ready", "ModelReady", model=True),
            "/v2/models/{name}/infer": _post("Score rows sent as one input per column (Open Inference Protocol)",
                                             "InferRequest", "InferResponse"),
            "/v1/models/{name}:predict": _post("Score rows sent as objects, one per row", "InstancesRequest",
                                               "PredictionsResponse"),
            "/v2/repository/models/{name}/load": {"post": {
                "summary": "Load the model directory's version, if it is another, verified and warmed up before it "
                           "takes requests (KServe's repository extension)",
                "parameters": [{"$ref": "#/components/parameters/name"}],
                "responses": {"200": _response("Served now: the version, the one before, whether it changed",
                                               "LoadResponse"),
                              "404": _response("Unknown model", "Error"),
                              "422": _response("The new version failed verification; the old one serves on",
                                               "Error")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "The text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {
                "description": "OpenAPI 3.1", "content": {_JSON: {"schema": {"type": "object"}}}}}}},
        },
        "components": {
            "parameters": {"name": {"name": "name", "in": "path", "required": True,
                                    "schema": {"type": "string", "enum": [name]}}},
            "schemas": {**_protocol_schemas(columns, outputs), **_instance_schemas(columns, outputs, task)},
        },
    }


def _get(summary: str, schema: str, model: bool = False) -> dict:
    operation = {"summary": summary, "responses": {"200": _response("OK", schema),
                                                   **({"404": _response("Unknown model", "Error")} if model else {})}}
    if model:
        operation["parameters"] = [{"$ref": "#/components/parameters/name"}]
    return {"get": operation}


def _post(summary: str, request: str, response: str) -> dict:
    return {"post": {
        "summary": summary,
        "parameters": [{"$ref": "#/components/parameters/name"}],
        "requestBody": {"required": True, "content": {_JSON: {"schema": _ref(request)}}},
        "responses": {"200": _response("The predictions, one per row, in the order sent", response),
                      "400": _response("The request cannot be scored as sent: the error names the column", "Error"),
                      "404": _response("Unknown model", "Error"),
                      "413": _response("The body or the rows exceed the server's limits", "Error")},
    }}


def _response(description: str, schema: str) -> dict:
    return {"description": description, "content": {_JSON: {"schema": _ref(schema)}}}


def _ref(schema: str) -> dict:
    return {"$ref": f"#/components/schemas/{schema}"}


def _object(properties: dict, required=None, **extra) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required,
            **extra}


def _protocol_schemas(columns: dict[str, RawColumn], outputs: list[str]) -> dict:
    tensor = _object({"name": {"type": "string"}, "datatype": {"type": "string"},
                      "shape": {"type": "array", "items": {"type": "integer"}}})
    datatypes = sorted({d for kind in COLUMN_DATATYPES.values() for d in kind})
    return {
        "Error": _object({"error": {"type": "string", "description": "What is wrong, naming the column"}}),
        "Live": _object({"live": {"type": "boolean"}}),
        "Ready": _object({"ready": {"type": "boolean"}}),
        "ModelReady": _object({"name": {"type": "string"}, "ready": {"type": "boolean"}}),
        "ServerMetadata": _object({"name": {"type": "string"}, "version": {"type": "string"},
                                   "extensions": {"type": "array", "items": {"type": "string"}}}),
        "ModelMetadata": _object({"name": {"type": "string"},
                                  "versions": {"type": "array", "items": {"type": "string"}},
                                  "platform": {"type": "string"}, "inputs": {"type": "array", "items": tensor},
                                  "outputs": {"type": "array", "items": tensor}}),
        "InferRequest": _object({  # null for `id` or `outputs` is taken as absent, as clients send it
            "id": {"type": ["string", "null"]},
            "inputs": {"type": "array", "description": "one input per column, in the order of `prefixItems`",
                       "prefixItems": [_v2_input(name, column) for name, column in columns.items()],
                       "minItems": len(columns), "maxItems": len(columns), "items": False},
            "outputs": {"type": ["array", "null"], "items": _object({"name": {"type": "string", "enum": outputs}})},
        }, required=["inputs"]),
        "InferResponse": _object({
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "outputs": {"type": "array", "items": _object({
                **tensor["properties"], "datatype": {"type": "string", "enum": datatypes},
                "data": {"type": "array", "description": "row-major; null: not a finite number"}})},
        }, required=["model_name", "model_version", "outputs"]),
        "LoadResponse": _object({"name": {"type": "string"}, "version": {"type": "string"},
                                 "previous_version": {"type": "string"}, "loaded": {"type": "boolean"}}),
    }


_KIND_OF = {"BYTES": "string", "BOOL": "boolean", "FP16": "number", "FP32": "number", "FP64": "number"}


def _values(column: RawColumn) -> dict[str, dict]:
    """The JSON values a column takes by kind ("string", "number", "integer", "boolean", "null"), bounded as the
    scoring core bounds them; a kind it never takes is left out."""
    if column.dtype == "string":  # null is "", as in the feature stage
        text = {"type": "string", "pattern": "^[^\\x00]*$", "description": "text without NUL (U+0000)"}
        return {"string": text, "integer": {"type": "integer"}, "boolean": {"type": "boolean"},
                "null": {"type": "null"}}
    if column.dtype == "timestamp":
        text = {"type": "string", "description": f"a date or time: {_datetime_text(column)}; UTC unless it has a zone"}
        return {"string": text, **({"null": {"type": "null"}} if column.nullable else {})}
    low = -FLOAT32_MAX if column.above is None else _float32_above(column.above)
    kinds = {"number": {"type": "number", "minimum": low, "maximum": FLOAT32_MAX},
             "integer": {"type": "integer", "minimum": math.ceil(low), "maximum": math.floor(FLOAT32_MAX)}}
    if low <= 0:
        kinds["boolean"] = {"type": "boolean"}
    elif low <= 1:
        kinds["boolean"] = {"const": True}  # false is 0, not above the bound
    if column.nullable:
        kinds["null"] = {"type": "null"}
    return kinds


def _datetime_text(column: RawColumn) -> str:
    if column.datetime_format is None:
        return "ISO 8601 (2024-01-31, 2024-01-31 13:45:00, 2024-01-31T13:45:00+01:00)"
    return f"as the strptime format {column.datetime_format!r} reads it"


def _float32_above(bound: float) -> float:
    """The least value above `bound` once rounded to float32 as the scoring core rounds it (values below float32's
    smallest normal become 0)."""
    least = float(np.nextafter(np.float32(bound), np.float32(np.inf)))
    return max(least, FLOAT32_TINY) if bound == 0 else least


def _v2_input(name: str, column: RawColumn) -> dict:
    """A column's v2 input: its name, a shape of [rows] or [rows, 1], and one of its datatypes with values of the
    kind that datatype holds."""
    values = _values(column)
    if "integer" in values:  # an INT* input is read as int64
        values["integer"] = {"type": "integer", "minimum": max(values["integer"].get("minimum", -2**63), -2**63),
                             "maximum": 2**63 - 1}
    shape = {"type": "array", "prefixItems": [{"type": "integer", "minimum": 1}, {"const": 1}], "minItems": 1,
             "maxItems": 2, "items": False, "description": "[rows] or [rows, 1]"}
    by_kind: dict[str, list[str]] = {}
    for datatype in COLUMN_DATATYPES[column_kind(column)]:
        by_kind.setdefault(_KIND_OF.get(datatype, "integer"), []).append(datatype)
    variants = [_object({"name": {"const": name}, "shape": shape,
                         "datatype": {"type": "string", "enum": datatypes},
                         "data": {"type": "array", "minItems": 1, "description": "one value per row (null: missing)",
                                  "items": {"anyOf": [values[value_kind], *([values["null"]] if "null" in values
                                                                            else [])]}}})
                for value_kind, datatypes in by_kind.items() if value_kind in values]
    return {"anyOf": variants}


def _instance_schemas(columns: dict[str, RawColumn], outputs: list[str], task: str) -> dict:
    def column_schema(column: RawColumn) -> dict:
        values = _values(column)
        return {"anyOf": [schema for kind, schema in values.items() if not (kind == "integer" and "number" in values)]}

    finite = {"type": ["number", "null"], "description": "null: not a finite number"}
    prediction = finite if task == "regression" else {"type": ["string", "integer"]}
    row = {"prediction": prediction}
    if PROBABILITIES in outputs:
        row[PROBABILITIES] = {"type": "array", "items": finite}
    return {
        "Instance": _object({name: column_schema(column) for name, column in columns.items()},
                            additionalProperties=False),
        "InstancesRequest": _object({"instances": {"type": "array", "minItems": 1, "items": _ref("Instance")}}),
        "PredictionsResponse": _object({"predictions": {"type": "array", "items": _object(row)}}),
    }
