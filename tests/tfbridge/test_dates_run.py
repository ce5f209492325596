"""A table with dates and times through `tfbridge run` by a config alone, checked at every hand-off.

The run reads CSV text: days in a format of their own (`datetime: {format: "%d/%m/%Y"}`), ISO 8601 times with
zones (and empty fields, imputed), naive times (UTC). The export's parity gate adds its edge times (years 1 and
9999, leap days, 1970 and the second before it). Then the SavedModel against ONNX on every row, the Spark
scores the run wrote from the CSV against ONNX, and `spark_infer.score()` on the same rows written as Parquet
with real types (date32, timestamp[us, UTC], naive timestamp[us]), joined by id: Spark hands those over as
Arrow dates and timestamps, and they must score as their text did. Last, the text rows sent to `tfbridge serve`
score as Spark scored them.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from tests.helpers import check_hand_offs
from tests.http_serve.serving import running
from tfbridge.cli import main
from tfbridge.contracts import ModelManifest, PipelineConfig

N = 300
# Within pandas' nanosecond range (1677-2262): Spark's toPandas, which the check uses, converts timestamps to it.
ZONES = {"Z": dt.timezone.utc, "+05:30": dt.timezone(dt.timedelta(hours=5, minutes=30)),
         "-08:00": dt.timezone(dt.timedelta(hours=-8))}
EDGES = ["1700-02-28 23:59:59", "1900-02-28 12:00:00", "1900-03-01 00:00:00", "1969-12-31 23:59:59",
         "1970-01-01 00:00:00", "2000-02-29 06:00:00", "2100-03-01 00:00:00", "2250-12-31 23:59:59"]


def tables(rng) -> tuple[pd.DataFrame, pa.Table]:
    """The same rows as CSV text and as typed Parquet columns."""
    lo, hi = (np.datetime64(t, "s").astype(np.int64) for t in ("1700-01-01", "2250-12-31"))
    seconds = [np.concatenate([np.array(EDGES, "datetime64[s]").astype(np.int64), rng.integers(lo, hi, N)])[:N]
               for _ in range(3)]
    day, stamp, seen = (pd.Series(s.astype("datetime64[s]")) for s in seconds)
    day = day.dt.floor("D")
    missing = rng.random(N) < 0.1
    zones = rng.choice(list(ZONES), N)
    # the label depends on each column, so the model has something to learn from them
    y = (day.dt.month.to_numpy() + 0.01 * (seen.dt.year.to_numpy() - 1700) + np.where(missing, 0, stamp.dt.hour)
         + rng.normal(0, 0.5, N))
    local = [t.tz_localize("UTC").tz_convert(ZONES[zone]) for t, zone in zip(stamp, zones)]
    text = pd.DataFrame({
        "id": np.arange(N), "y": y,
        "day": [f"{t.day:02d}/{t.month:02d}/{t.year:04d}" for t in day],
        "stamp": ["" if m else t.isoformat().replace("+00:00", "Z") for t, m in zip(local, missing)],
        "seen": [str(t) for t in seen],
    })
    typed = pa.table({
        "id": np.arange(N), "y": y,
        "day": pa.array(day.to_numpy("datetime64[D]"), pa.date32()),
        "stamp": pa.array(stamp.to_numpy("datetime64[us]"), pa.timestamp("us", "UTC"), mask=missing),
        "seen": pa.array(seen.to_numpy("datetime64[us]"), pa.timestamp("us")),
    })
    return text, typed


def test_dates_and_times_through_every_hand_off(tmp_path, spark):
    text, typed = tables(np.random.default_rng(9))
    text.to_csv(tmp_path / "events.csv", index=False)
    pq.write_table(typed, tmp_path / "events.parquet")
    config = {"data": {"path": str(tmp_path / "events.csv")}, "label": "y", "task": "regression",
              "features": {"day": {"datetime": {"format": "%d/%m/%Y"},
                                   "steps": [{"calendar": ["year", "month", "weekday"]}, "z_score"]},
                           "stamp": [{"impute": "median"}, {"cyclical": ["hour", "day_of_year"]}],
                           "seen": [{"since": {"reference": "2000-01-01", "unit": "days"}}, {"piecewise_linear": 4}]},
              "output": str(tmp_path / "out"), "split": {"eval_fraction": 0.0},
              "train": {"epochs": 2, "batch_size": 32, "hidden_units": [8], "workers": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) == 0
    layout = PipelineConfig.from_yaml(tmp_path / "c.yaml").layout

    inputs = ModelManifest.read(layout.model_manifest_path).inputs
    assert {name: (c.dtype, c.nullable, c.datetime_format) for name, c in inputs.items()} == {
        "day": ("timestamp", False, "%d/%m/%Y"), "stamp": ("timestamp", True, None), "seen": ("timestamp", False, None)}
    graph = ModelManifest.read(layout.model_manifest_path).onnx
    assert graph.inputs["day"] == {"dtype": "float64", "shape": [None]}

    raw = pd.read_csv(tmp_path / "events.csv", dtype={"day": str, "stamp": str, "seen": str}, keep_default_na=False)
    assert (raw["stamp"] == "").any() and raw["stamp"].str.endswith("+05:30").any()
    check_hand_offs(layout, raw, "id", "id", "regression", float(raw["y"].std()), spark, tmp_path / "events.parquet")

    results = json.loads((layout.report_dir / "results.json").read_text())
    onnx_check = next(h for h in results["hand_offs"] if h["name"].startswith("ONNX vs SavedModel"))
    assert onnx_check["rows"] == N

    # The same text rows through `tfbridge serve`, both forms, equal to the Spark scores by id.
    scores = pq.read_table(str(layout.scores_dir)).to_pandas().set_index("id")["prediction"]  # CSV: ids as text
    rows = raw[list(inputs)].astype(object).where(raw[list(inputs)] != "", None)  # an empty field is a null
    with running(layout.model_dir, tmp_path / "serve.log") as (_, client):
        predictions = client.post("/v1/models/out:predict", json={"instances": rows.to_dict("records")})
        assert predictions.status_code == 200, predictions.text
        v2 = client.post("/v2/models/out/infer", json={"inputs": [
            {"name": name, "shape": [N], "datatype": "BYTES", "data": rows[name].tolist()} for name in inputs]})
        assert v2.status_code == 200, v2.text
        metadata = client.get("/v2/models/out").json()
        wrong = client.post("/v1/models/out:predict",
                            json={"instances": [{**rows.iloc[0].to_dict(), "day": "2024-01-31"}]})
    served = pd.Series([p["prediction"] for p in predictions.json()["predictions"]])
    want = scores.loc[raw["id"].astype(str)].to_numpy()
    np.testing.assert_allclose(served.to_numpy(), want, rtol=1e-6, atol=1e-6 * float(raw["y"].std()))
    np.testing.assert_allclose(v2.json()["outputs"][0]["data"], want, rtol=1e-6, atol=1e-6 * float(raw["y"].std()))
    assert {i["name"]: i["datatype"] for i in metadata["inputs"]} == {"day": "BYTES", "stamp": "BYTES", "seen": "BYTES"}
    assert wrong.status_code == 400 and "day" in wrong.json()["error"] and "%d/%m/%Y" in wrong.json()["error"]
