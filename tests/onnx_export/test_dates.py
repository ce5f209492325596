"""The date steps' TF side through the export's conversion, onnxruntime against TF and pandas on edge times.

The graph takes what the serving signature takes for a timestamp column (float64 epoch seconds, floored to
whole seconds as `tf_train.model.RawFeaturesModel` does) and runs every calendar part, every cyclical part and
`since` in days and seconds: integer arithmetic with FloorDiv and FloorMod (onnx_export.lowerings), Where,
Sin and Cos, no date op.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tests.onnx_export.test_lowerings import convert, run
from tft_features import mappers

EDGE_TIMES = ["0001-01-01T00:00:00", "0001-03-01T00:00:00", "1600-02-29T23:59:59", "1700-02-28T12:00:00",
              "1899-12-31T23:59:59", "1900-02-28T00:00:00", "1900-03-01T00:00:00", "1969-12-31T00:00:00",
              "1969-12-31T23:59:59", "1970-01-01T00:00:00", "1970-01-01T00:00:01", "2000-02-29T12:00:00",
              "2000-03-01T00:00:00", "2000-12-31T23:59:59", "2100-02-28T23:59:59", "2100-03-01T00:00:00",
              "2400-12-31T23:00:00", "9999-12-31T23:59:59"]
PARTS = list(mappers.CALENDAR_PARTS)
CYCLES = list(mappers.CYCLES)


def date_steps(x):
    seconds = tf.cast(tf.floor(x), tf.int64)
    return (mappers.calendar(seconds, "c", PARTS)[0], mappers.cyclical(seconds, "y", CYCLES)[0],
            mappers.since(seconds, "d", "2000-01-01", "days")[0],
            mappers.since(seconds, "s", "1900-01-01T00:00:00-05:00", "seconds")[0])


@pytest.fixture(scope="module")
def graph():
    session, ops = convert(date_steps, tf.TensorSpec([None], tf.float64))
    return session, ops


def edge_seconds(seed: int) -> np.ndarray:
    """The edge times (and half a second before 1970: -0.5 floors to -1), then random times of years 1 to 9999."""
    rng = np.random.default_rng(seed)
    edges = np.array(EDGE_TIMES, "datetime64[s]").astype(np.int64).astype(np.float64)
    spread = rng.uniform(-62_135_596_800, 253_402_300_799, 2_000)
    return np.concatenate([edges, [-0.5, -86_400.5, 0.25], spread])


@pytest.mark.parametrize("seed", [0, 1])
def test_onnx_matches_tf_and_pandas_on_edge_and_random_times(graph, seed):
    session, ops = graph
    assert {"Mod", "Sin", "Cos"} <= set(ops) and not {"FloorDiv", "FloorMod"} & set(ops)
    x = edge_seconds(seed)
    got = run(session, x)
    want = [t.numpy() for t in date_steps(tf.constant(x))]
    np.testing.assert_array_equal(got[0], want[0])  # calendar parts: whole numbers in float32
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-7)

    times = pd.Series(np.floor(x).astype(np.int64).astype("datetime64[s]"))
    parts = {"year": times.dt.year, "month": times.dt.month, "day": times.dt.day, "weekday": times.dt.weekday,
             "hour": times.dt.hour, "day_of_year": times.dt.dayofyear}
    np.testing.assert_array_equal(got[0], np.stack([parts[p].to_numpy() for p in PARTS], axis=1))
    lengths = {"month": 12, "day_of_year": 365 + times.dt.is_leap_year.to_numpy(), "weekday": 7, "hour": 24}
    first = {"month": 1, "day_of_year": 1, "weekday": 0, "hour": 0}
    angles = [2 * np.pi * (parts[p].to_numpy() - first[p]) / lengths[p] for p in CYCLES]
    np.testing.assert_allclose(got[1], np.stack([f(a) for a in angles for f in (np.sin, np.cos)], axis=1),
                               atol=2e-7)
    seconds = np.floor(x)
    np.testing.assert_allclose(got[2], (seconds - 946_684_800) / 86_400, rtol=1e-7)
    np.testing.assert_allclose(got[3], seconds - (-2_208_988_800 + 5 * 3_600), rtol=1e-7)


def test_the_named_edges_come_out_as_the_calendar_says(graph):
    session, _ = graph
    x = edge_seconds(0)
    calendar = dict(zip([*EDGE_TIMES, "-0.5 s", "-86400.5 s"], run(session, x)[0].astype(int).tolist()))
    assert calendar["2000-02-29T12:00:00"] == [2000, 2, 29, 1, 12, 60]
    assert calendar["1900-03-01T00:00:00"] == [1900, 3, 1, 3, 0, 60]  # 1900 is no leap year
    assert calendar["2100-03-01T00:00:00"] == [2100, 3, 1, 0, 0, 60]  # nor is 2100
    assert calendar["2000-12-31T23:59:59"][-1] == 366 and calendar["2400-12-31T23:00:00"][-1] == 366
    assert calendar["1969-12-31T23:59:59"] == calendar["-0.5 s"] == [1969, 12, 31, 2, 23, 365]
    assert calendar["-86400.5 s"] == [1969, 12, 30, 1, 23, 364]
    assert calendar["1970-01-01T00:00:00"] == [1970, 1, 1, 3, 0, 1]
    assert calendar["0001-01-01T00:00:00"] == [1, 1, 1, 0, 0, 1]
    assert calendar["9999-12-31T23:59:59"] == [9999, 12, 31, 4, 23, 365]
