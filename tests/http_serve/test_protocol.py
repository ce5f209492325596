"""The request forms alone, in this process: what a classification answer looks like (the shared model is a
regression), JSON's lack of NaN, the conversions of text columns the feature stage made, the limit on a string."""

from __future__ import annotations

import json

import numpy as np
import pytest

from http_serve.model import PREDICTION, PROBABILITIES
from http_serve.protocol import (RequestError, Rows, decode_infer, decode_instances, encode_infer, encode_predictions,
                                 parse_json)
from tfbridge.contracts import RawColumn

COLUMNS = {"Shop ID": RawColumn("Shop ID", "string", False), "qty": RawColumn("qty", "float", True)}


def test_a_classification_answer_in_both_forms():
    outputs = {PREDICTION: np.array(["yes", "no"], object), PROBABILITIES: np.array([[0.2, 0.8], [0.9, 0.1]])}
    v2 = json.loads(json.dumps(encode_infer("m", "v1", outputs, Rows({}, 2, request_id="r7"))))
    assert v2 == {"model_name": "m", "model_version": "v1", "id": "r7", "outputs": [
        {"name": "prediction", "shape": [2], "datatype": "BYTES", "data": ["yes", "no"]},
        {"name": "prediction_probabilities", "shape": [2, 2], "datatype": "FP64", "data": [0.2, 0.8, 0.9, 0.1]}]}
    assert encode_predictions(outputs) == {"predictions": [
        {"prediction": "yes", "prediction_probabilities": [0.2, 0.8]},
        {"prediction": "no", "prediction_probabilities": [0.9, 0.1]}]}
    only = encode_infer("m", "v1", outputs, Rows({}, 2, outputs=(PROBABILITIES,)))
    assert [o["name"] for o in only["outputs"]] == [PROBABILITIES]


def test_nan_and_infinity_answer_as_null():
    outputs = {PREDICTION: np.array([1.5, np.nan, np.inf])}
    assert encode_predictions(outputs)["predictions"] == [{"prediction": 1.5}, {"prediction": None},
                                                          {"prediction": None}]


def test_text_columns_take_integers_and_booleans_as_the_feature_stage_read_them():
    """And a number with no fraction as an integer: JSON (and JSON Schema's "integer") does not tell 7.0 from 7."""
    rows = [{"Shop ID": 103, "qty": True}, {"Shop ID": False, "qty": None}, {"Shop ID": 7.0, "qty": 7.0}]
    instances = decode_instances({"instances": rows}, COLUMNS, 10, 100)
    assert instances.columns["Shop ID"] == ["103", "false", "7"]
    assert instances.columns["qty"] == [True, None, 7.0]  # a boolean is 1.0 to Arrow (ServedModel.arrays)
    with pytest.raises(RequestError, match="column 'Shop ID' takes strings, integers or booleans; instance 0 holds "
                                           "7.5"):
        decode_instances({"instances": [{"Shop ID": 7.5, "qty": 1.0}]}, COLUMNS, 10, 100)
    v2 = decode_infer({"inputs": [{"name": "Shop ID", "shape": [2.0, 1], "datatype": "INT64", "data": [[103], [7.0]]},
                                  {"name": "qty", "shape": [2], "datatype": "BOOL", "data": [True, None]}]},
                      COLUMNS, [PREDICTION], 10, 100)
    assert v2.count == 2 and v2.columns["Shop ID"] == ["103", "7"]


def test_a_string_over_the_limit_is_refused_naming_the_column_and_row():
    """The limit is on UTF-8 bytes: 30 characters of "é" are 60 bytes."""
    rows = [{"Shop ID": "a" * 50, "qty": 1.0}, {"Shop ID": "é" * 30, "qty": 2.0}]
    with pytest.raises(RequestError) as refused:
        decode_instances({"instances": rows}, COLUMNS, 10, 59)
    assert refused.value.status == 413
    assert str(refused.value).startswith("column 'Shop ID': instance 1 holds a string of 60 bytes; this server takes "
                                         "at most 59 bytes per string")
    v2 = {"inputs": [{"name": "Shop ID", "shape": [2], "datatype": "BYTES", "data": ["a" * 50, "é" * 30]},
                     {"name": "qty", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}]}
    assert decode_infer(v2, COLUMNS, [PREDICTION], 10, 60).count == 2
    with pytest.raises(RequestError, match="input 'Shop ID': row 1 holds a string of 60 bytes"):
        decode_infer(v2, COLUMNS, [PREDICTION], 10, 59)


def test_integers_beyond_a_double_s_precision_round_as_arrow_casts_them_and_beyond_int64_are_refused_where_typed():
    """Arrow makes no double of a Python integer beyond 2**53; the batch form holds the double it rounds to (as
    Arrow rounds an int64 cast to float64), and an INT64 input beyond int64 is refused, naming the row."""
    big = [2**53 + 1, 2**63 + 5, -(2**62) - 1, 7, None]
    rows = decode_instances({"instances": [{"Shop ID": "a", "qty": v} for v in big]}, COLUMNS, 10, 100)
    assert rows.columns["qty"] == [float(2**53 + 1), float(2**63 + 5), float(-(2**62) - 1), 7, None]
    assert [type(v) for v in rows.columns["qty"]][:3] == [float] * 3
    v2 = {"inputs": [{"name": "Shop ID", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
                     {"name": "qty", "shape": [2], "datatype": "INT64", "data": [1, 2**63]}]}
    with pytest.raises(RequestError, match=r"input 'qty' \(INT64\): row 1 holds 9223372036854775808, beyond int64"):
        decode_infer(v2, COLUMNS, [PREDICTION], 10, 100)
    with pytest.raises(RequestError, match="instance 0 holds 1000000000.*, beyond any double"):
        decode_instances({"instances": [{"Shop ID": "a", "qty": 10**400}]}, COLUMNS, 10, 100)


def test_a_lone_surrogate_is_refused_naming_the_column_and_row():
    """JSON's escapes make one ("\\ud800"); it has no UTF-8, so neither Arrow nor the model can take it."""
    body = parse_json(b'{"instances": [{"Shop ID": "ok", "qty": 1}, {"Shop ID": "a\\ud800b", "qty": 2}]}')
    with pytest.raises(RequestError, match="column 'Shop ID': instance 1 holds a string that is not valid Unicode"):
        decode_instances(body, COLUMNS, 10, 100)


@pytest.mark.parametrize("text", [b'{"a": 1, "a": 2}', b'{"a": NaN}', b'{"a": -9472728390710239232}',
                                  b'{"a": 18446744073709551616}', b'{"a": 0.1234567890123456789012}',
                                  b'{"a": 1e400}', b'{"a": "\\ud800"}', b'{"a": [1.5e-320, -0.0, 1E5]}'])
def test_bodies_parse_as_python_s_json_parses_them(text):
    """orjson reads most bodies; where it would read them otherwise (an integer beyond int64 as a float) or refuses
    them, Python's json does."""
    expected = json.loads(text)
    parsed = parse_json(text)
    assert repr(parsed) == repr(expected) and [type(v) for v in parsed.values()] == [type(v) for v in expected.values()]
