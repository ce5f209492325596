"""The request forms alone, in this process: what a classification answer looks like (the shared model is a
regression), JSON's lack of NaN, the conversions of text columns the feature stage made, the limit on a string."""

from __future__ import annotations

import json

import numpy as np
import pytest

from http_serve.model import PREDICTION, PROBABILITIES
from http_serve.protocol import RequestError, Rows, decode_infer, decode_instances, encode_infer, encode_predictions
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
    assert instances.columns["Shop ID"].to_pylist() == ["103", "false", "7"]
    assert instances.columns["qty"].to_pylist() == [1.0, None, 7.0]
    with pytest.raises(RequestError, match="column 'Shop ID' takes strings, integers or booleans; instance 0 holds "
                                           "7.5"):
        decode_instances({"instances": [{"Shop ID": 7.5, "qty": 1.0}]}, COLUMNS, 10, 100)
    v2 = decode_infer({"inputs": [{"name": "Shop ID", "shape": [2.0, 1], "datatype": "INT64", "data": [[103], [7.0]]},
                                  {"name": "qty", "shape": [2], "datatype": "BOOL", "data": [True, None]}]},
                      COLUMNS, [PREDICTION], 10, 100)
    assert v2.count == 2 and v2.columns["Shop ID"].to_pylist() == [103, 7]  # cast to "103" by the scoring core


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
