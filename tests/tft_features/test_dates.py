"""Dates and times through the feature stage: Parquet date32 and timestamp[unit, tz] columns and CSV text (a
datetime format, ISO 8601), each date step (calendar, cyclical, since) and impute of a date checked against
pandas' `.dt` accessors on the raw rows, joined back by the unique label.

The rows hold what calendars get wrong: leap days (2000-02-29; 1900 and 2100 are not leap years), the ends of
years, 1970-01-01 and the second before it (negative epochs), fractions of a second before 1970, dates before
1900 and after 2100 down to year 1 and up to 9999, zones east and west of UTC, naive times (read as UTC), nulls.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import committed, decode_split, run_features_on
from tfbridge.contracts import ConfigError, DataError, PipelineConfig
from tfbridge.contracts.columns import model_timestamps
from tft_features.analyzers import QUANTILE_EPSILON
from tft_features.pipeline import run_features
from tft_features.preprocessing import plan_features

N = 600
EDGE_TIMES = ["0001-01-01 00:00:00", "1600-02-29 12:00:00", "1899-12-31 23:59:59", "1900-02-28 23:00:00",
              "1900-03-01 00:00:00", "1969-12-31 23:59:59.5", "1970-01-01 00:00:00", "2000-02-29 06:30:00",
              "2000-03-01 00:00:00", "2000-12-31 23:59:59", "2100-02-28 13:00:00", "2100-03-01 00:00:00",
              "2400-02-29 01:00:00", "9999-12-31 23:59:59"]
CALENDAR = ["year", "month", "day", "weekday", "hour", "day_of_year"]
CYCLES = {"month": (1, 12), "day_of_year": (1, None), "weekday": (0, 7), "hour": (0, 24)}

PARQUET_FEATURES = {
    "day": [{"calendar": CALENDAR}],
    "naive": [{"cyclical": list(CYCLES)}],
    "zoned": [{"impute": {"strategy": "constant", "value": "2000-01-01T00:00:00+05:00"}}, {"calendar": ["hour"]}],
    "since_days": [{"since": {"reference": "2000-01-01", "unit": "days"}}, "z_score"],
    "since_seconds": [{"since": {"unit": "seconds"}}, {"bucketize": {"num_buckets": 4}}],
    "since_mean": [{"impute": "mean"}, {"since": {"reference": "1900-01-01T12:00:00", "unit": "hours"}},
                   {"piecewise_linear": 4}],
    "day_median": [{"impute": "median"}, {"calendar": ["year", "day_of_year"]}],
}


def random_times(rng, n: int, low: str = "0001-01-01", high: str = "9999-12-31") -> np.ndarray:
    """Seconds (datetime64[us], with microseconds) spread over [low, high], the edge times first."""
    lo, hi = (np.datetime64(t, "s").astype(np.int64) for t in (low, high))
    spread = rng.integers(lo, hi, n).astype("datetime64[s]").astype("datetime64[us]")
    spread += rng.integers(0, 1_000_000, n).astype("timedelta64[us]")
    edges = np.array(EDGE_TIMES, "datetime64[us]")
    return np.concatenate([edges, spread[len(edges):]])


def with_nulls(rng, values: pa.Array, fraction: float = 0.1) -> pa.Array:
    mask = rng.random(len(values)) < fraction
    mask[:len(EDGE_TIMES)] = False
    return pa.array(values.to_pylist(), values.type, mask=mask)


def parquet_table(seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    days = random_times(rng, N).astype("datetime64[D]")
    naive = random_times(rng, N)
    # nanoseconds hold 1677..2262 only; the zone moves the instant, not the rule
    zoned = pa.array(random_times(rng, N, "1700-01-01", "2200-12-31").astype("datetime64[ns]"), pa.timestamp("ns"))
    zoned = pc_assume_timezone(zoned, "America/New_York")
    return pa.table({
        "target": np.arange(N, dtype=np.float64),
        "day": pa.array(days, pa.date32()),
        "naive": pa.array(naive, pa.timestamp("us")),
        "zoned": with_nulls(rng, zoned),
        "since_days": pa.array(random_times(rng, N), pa.timestamp("us", "Asia/Kolkata")),
        "since_seconds": pa.array(random_times(rng, N).astype("datetime64[ms]"), pa.timestamp("ms")),
        "since_mean": with_nulls(rng, pa.array(random_times(rng, N), pa.timestamp("us"))),
        "day_median": with_nulls(rng, pa.array(random_times(rng, N).astype("datetime64[D]"), pa.date32())),
    })


def pc_assume_timezone(values: pa.Array, zone: str) -> pa.Array:
    """Wall times in `zone` (ambiguous and missing local times resolved to the earlier instant)."""
    import pyarrow.compute as pc

    return pc.assume_timezone(values, zone, ambiguous="earliest", nonexistent="earliest")


def utc(values: pa.ChunkedArray) -> pd.Series:
    """The reference's reading: naive as UTC, zone-aware converted to UTC, dates at midnight; whole seconds
    (floored, as pandas floors before 1970 too). datetime64[us] holds years 1 to 9999 in pandas."""
    values = values.combine_chunks()
    if pa.types.is_date(values.type):
        values = values.cast(pa.timestamp("s"))
    if values.type.tz is not None:
        values = values.cast(pa.timestamp(values.type.unit, "UTC"))
    series = pd.Series(values.to_pandas(coerce_temporal_nanoseconds=False))
    series = series.dt.tz_convert("UTC").dt.tz_localize(None) if series.dt.tz is not None else series
    return series.astype("datetime64[us]").dt.floor("s")


def seconds_since(series: pd.Series, reference: str = "1970-01-01") -> np.ndarray:
    """Seconds from `reference` to each time (NaN where missing), in microsecond units: a nanosecond
    pd.Timestamp would overflow beyond 2262."""
    values = series.to_numpy("datetime64[us]")
    return np.where(np.isnat(values), np.nan, (values - np.datetime64(reference, "us")) / np.timedelta64(1, "s"))


def at(seconds: float) -> pd.Timestamp:
    return pd.Timestamp(np.datetime64(int(seconds), "s")).as_unit("us")


def calendar_reference(series: pd.Series, part: str) -> np.ndarray:
    dt = series.dt
    return {"year": dt.year, "month": dt.month, "day": dt.day, "weekday": dt.weekday, "hour": dt.hour,
            "day_of_year": dt.dayofyear}[part].to_numpy(np.float64)


def cyclical_reference(series: pd.Series, parts) -> np.ndarray:
    columns = []
    for part in parts:
        first, cycle = CYCLES[part]
        cycle = 365 + series.dt.is_leap_year.to_numpy(np.float64) if cycle is None else cycle
        angle = 2 * np.pi * (calendar_reference(series, part) - first) / cycle
        columns += [np.sin(angle), np.cos(angle)]
    return np.stack(columns, axis=1)


@pytest.fixture(scope="module")
def parquet_run(tmp_path_factory):
    table = parquet_table(seed=3)
    config, _ = run_features_on(tmp_path_factory.mktemp("dates"), table, PARQUET_FEATURES, row_group_size=250)
    return _decoded(config, table)


def _decoded(config: PipelineConfig, table: pa.Table) -> dict:
    features_dir = config.layout.features_dir
    splits = {split: decode_split(features_dir, split) for split in ("train", "eval")}
    ids = {split: splits[split]["target"].astype(np.int64) for split in splits}
    return {"config": config, "table": table, "splits": splits, "ids": ids,
            "stats": json.loads(committed(config.layout).stats_path.read_text())["features"]}


def rows(run: dict, column: str, split: str) -> pd.Series:
    """The raw column's UTC reading, in the order of the split's decoded rows (joined by the unique target)."""
    return utc(run["table"].column(column)).iloc[run["ids"][split]].reset_index(drop=True)


def output(run: dict, column: str, split: str) -> np.ndarray:
    return np.asarray(run["splits"][split][column]).reshape(len(run["ids"][split]), -1)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_calendar_parts_of_a_date32_column_match_pandas(parquet_run, split):
    series = rows(parquet_run, "day", split)
    want = np.stack([calendar_reference(series, part) for part in CALENDAR], axis=1)
    np.testing.assert_array_equal(output(parquet_run, "day", split), want)
    assert parquet_run["stats"]["day"]["terms"] == CALENDAR


def test_the_edge_dates_are_in_the_data_and_come_out_right(parquet_run):
    """2000-02-29 is day 60 of a leap year, 1900-03-01 day 60 of a common one; 1969-12-31 23:59:59.5 is a
    Wednesday at 23:00 (the floor of -0.5 s is -1 s); year 1 and 9999 are read."""
    by_id = {}
    for split in ("train", "eval"):
        for i, values in zip(parquet_run["ids"][split], output(parquet_run, "day", split)):
            by_id[int(i)] = values
    day = {EDGE_TIMES[i][:10]: by_id[i] for i in range(len(EDGE_TIMES))}
    assert day["2000-02-29"].tolist() == [2000, 2, 29, 1, 0, 60]
    assert day["1900-03-01"].tolist() == [1900, 3, 1, 3, 0, 60]
    assert day["2100-03-01"].tolist() == [2100, 3, 1, 0, 0, 60]
    assert day["2400-02-29"].tolist() == [2400, 2, 29, 1, 0, 60]
    assert day["0001-01-01"].tolist() == [1, 1, 1, 0, 0, 1]
    assert day["9999-12-31"].tolist() == [9999, 12, 31, 4, 0, 365]
    assert day["2000-12-31"][-1] == 366


@pytest.mark.parametrize("split", ["train", "eval"])
def test_cyclical_encoding_of_naive_microsecond_times_matches_pandas(parquet_run, split):
    got = output(parquet_run, "naive", split)
    np.testing.assert_allclose(got, cyclical_reference(rows(parquet_run, "naive", split), CYCLES), atol=2e-7)
    assert parquet_run["stats"]["naive"]["terms"][:2] == ["sin month", "cos month"]


def test_impute_a_constant_date_with_a_zone_then_calendar_hour(parquet_run):
    """America/New_York wall times are read as their UTC instants; a null takes 2000-01-01T00:00+05:00, which is
    1999-12-31 19:00 UTC."""
    for split in ("train", "eval"):
        series = rows(parquet_run, "zoned", split)
        want = np.where(series.isna(), 19.0, calendar_reference(series.fillna(at(0)), "hour"))
        assert series.isna().any()
        np.testing.assert_array_equal(output(parquet_run, "zoned", split)[:, 0], want)
    assert parquet_run["stats"]["zoned"]["impute_value"] == pd.Timestamp("1999-12-31 19:00").timestamp()


def test_since_in_days_then_z_score_matches_pandas(parquet_run):
    train = rows(parquet_run, "since_days", "train")
    days = (seconds_since(train, "2000-01-01") / 86_400).astype(np.float32).astype(np.float64)
    stats = parquet_run["stats"]["since_days"]
    assert stats["mean"] == pytest.approx(days.mean(), rel=1e-5)
    assert stats["std"] == pytest.approx(days.std(), rel=1e-5)
    assert stats["reference_seconds"] == pd.Timestamp("2000-01-01").timestamp()
    np.testing.assert_allclose(output(parquet_run, "since_days", "train")[:, 0], (days - days.mean()) / days.std(),
                               atol=1e-5)


def test_since_in_seconds_then_bucketize_matches_pandas(parquet_run):
    boundaries = np.asarray(parquet_run["stats"]["since_seconds"]["boundaries"], np.float32)
    for split in ("train", "eval"):
        series = rows(parquet_run, "since_seconds", split)
        seconds = seconds_since(series).astype(np.float32)
        np.testing.assert_array_equal(output(parquet_run, "since_seconds", split)[:, 0],
                                      np.searchsorted(boundaries, seconds, side="right"))


def test_impute_mean_then_since_in_hours_then_piecewise_linear(parquet_run):
    train = rows(parquet_run, "since_mean", "train")
    mean = parquet_run["stats"]["since_mean"]["impute_value"]
    assert mean == pytest.approx(np.floor(np.nanmean(seconds_since(train))), abs=1)
    hours = (seconds_since(train.fillna(at(mean)), "1900-01-01T12:00") / 3_600).astype(np.float32)
    edges = np.asarray(parquet_run["stats"]["since_mean"]["edges"], np.float32)
    assert edges[0] == hours.min() and edges[-1] == hours.max()
    x, left, right = hours[:, None], edges[:-1], edges[1:]
    want = np.clip((x - left) / np.where(right > left, right - left, 1), 0, 1)
    np.testing.assert_allclose(output(parquet_run, "since_mean", "train"), want, atol=1e-6)


def test_impute_median_of_dates_is_the_median_day(parquet_run):
    train = rows(parquet_run, "day_median", "train")
    fill = parquet_run["stats"]["day_median"]["impute_value"]
    assert fill % 86_400 == 0
    days = seconds_since(train.dropna()) / 86_400
    assert np.mean(days <= fill / 86_400) == pytest.approx(0.5, abs=QUANTILE_EPSILON + 2 / len(days))
    filled = train.fillna(at(fill))
    want = np.stack([calendar_reference(filled, "year"), calendar_reference(filled, "day_of_year")], axis=1)
    np.testing.assert_array_equal(output(parquet_run, "day_median", "train"), want)


def test_the_plan_and_the_manifest_record_timestamp_columns(parquet_run):
    from tfbridge.contracts import FeaturesManifest

    plan = {c.column: c for c in plan_features(parquet_run["config"]).columns}
    assert {c: plan[c].read_as for c in plan} == dict.fromkeys(PARQUET_FEATURES, "timestamp")
    assert plan["day"].output_kind == "vector" and plan["zoned"].output_kind == "number"
    manifest = FeaturesManifest.read(parquet_run["config"].layout.features_manifest_path)
    assert {c.dtype for n, c in manifest.raw_columns.items() if n != "target"} == {"timestamp"}
    assert {n for n, c in manifest.raw_columns.items() if c.nullable} == {"zoned", "since_mean", "day_median"}


def csv_text(seed: int) -> tuple[str, pd.DataFrame]:
    """A CSV of day/month/year times (a format), ISO 8601 times with and without zones, and missing fields."""
    rng = np.random.default_rng(seed)
    n = 300
    times = pd.Series(random_times(rng, n, "1800-01-01", "2300-12-31")).dt.floor("s")
    formatted = np.array([f"{t.day:02d}/{t.month:02d}/{t.year:04d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}"
                          for t in times], object)  # the platform's strftime writes year 1 as "1"
    formatted[rng.random(n) < 0.1] = ""
    formatted[5:7] = ["NA", ""]
    offsets = rng.choice(["", "Z", "+05:30", "-08:00"], n)
    iso = [f"{t.isoformat()}{o}" if o else str(t) for t, o in zip(times[::-1].reset_index(drop=True), offsets)]
    frame = pd.DataFrame({"target": np.arange(n), "when": formatted, "iso": iso})
    return frame.to_csv(index=False), frame


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dates-csv")
    text, frame = csv_text(seed=4)
    (root / "raw.csv").write_text(text)
    config = PipelineConfig.from_dict({
        "data": {"path": str(root / "raw.csv")}, "label": "target", "task": "regression",
        "features": {"when": {"datetime": {"format": "%d/%m/%Y %H:%M:%S"},
                              "steps": [{"impute": "most_frequent"}, {"calendar": ["year", "month", "day", "hour"]}]},
                     "iso": [{"cyclical": ["day_of_year", "hour"]}]},
        "split": {"eval_fraction": 0.25}, "output": str(root / "out")})
    run_features(config)
    run = _decoded(config, pa.Table.from_pandas(frame))
    run["frame"] = frame
    return run


def test_csv_text_with_a_datetime_format_then_calendar(csv_run):
    frame = csv_run["frame"]
    parsed = pd.Series([pd.NaT if text in ("", "NA") else pd.Timestamp(dt.datetime.strptime(text, "%d/%m/%Y %H:%M:%S"))
                        for text in frame["when"].fillna("")], dtype="datetime64[us]")
    train = parsed.iloc[csv_run["ids"]["train"]]
    counts = pd.Series(seconds_since(train.dropna())).value_counts()
    most = min(counts[counts == counts.max()].index)  # ties: the smallest value
    assert csv_run["stats"]["when"]["impute_value"] == most
    for split in ("train", "eval"):
        series = parsed.iloc[csv_run["ids"][split]].reset_index(drop=True)
        filled = series.fillna(at(most))
        want = np.stack([calendar_reference(filled, p) for p in ("year", "month", "day", "hour")], axis=1)
        np.testing.assert_array_equal(output(csv_run, "when", split), want)


def test_csv_iso_text_with_and_without_zones_then_cyclical(csv_run):
    def utc_of(text: str) -> dt.datetime:
        time = dt.datetime.fromisoformat(text)
        return time.astimezone(dt.timezone.utc).replace(tzinfo=None) if time.tzinfo else time

    parsed = pd.Series([utc_of(text) for text in csv_run["frame"]["iso"]], dtype="datetime64[us]")
    assert csv_run["frame"]["iso"].str.endswith("+05:30").any() and csv_run["frame"]["iso"].str.endswith("Z").any()
    for split in ("train", "eval"):
        series = parsed.iloc[csv_run["ids"][split]].reset_index(drop=True)
        np.testing.assert_allclose(output(csv_run, "iso", split), cyclical_reference(series, ["day_of_year", "hour"]),
                                   atol=2e-7)


@pytest.mark.parametrize("features, needle", [
    ({"t": [{"calendar": ["year", "minute"]}]}, "parts must be a non-empty list of year, month, day, weekday, hour"),
    ({"t": [{"calendar": "year"}]}, "parts must be a non-empty list"),
    ({"t": [{"cyclical": ["year"]}]}, "parts must be a non-empty list of month, day_of_year, weekday, hour"),
    ({"t": [{"since": {"reference": "yesterday"}}]}, "reference must be an ISO 8601 date or time"),
    ({"t": [{"since": {"unit": "fortnights"}}]}, "unit must be one of seconds, minutes, hours, days, weeks"),
    ({"t": ["calendar", "z_score"]}, "parts must be a non-empty list"),
    ({"t": [{"since": {"unit": "days"}}, "vocabulary"]}, "'vocabulary' needs text or tokens input, but the step "
                                                         "before it gives number"),
    ({"t": [{"impute": {"strategy": "constant", "value": 3}}, "since"]}, "value must be a date or time as text"),
    ({"t": [{"impute": "mean"}, "normalize_text"]}, "mean needs numbers or dates"),
    ({"t": ["z_score", "since"]}, "'since' needs timestamp input, but the step before it gives number"),
    ({"t": {"datetime": {"format": "%Y"}, "steps": ["z_score"]}}, "'datetime' says how text reads as dates"),
])
def test_bad_date_steps_name_the_column_and_what_was_expected(features, needle):
    with pytest.raises(ConfigError, match="c.yaml: features.t") as err:
        plan_features(PipelineConfig.from_dict({"data": "d.parquet", "label": "y", "task": "regression",
                                                "features": features, "output": "o"}, source="c.yaml"))
    assert needle in str(err.value)


@pytest.mark.parametrize("column, needle", [
    ({"datetime": {"format": "Y-m-d"}, "steps": ["since"]}, "datetime.format: expected a strptime format"),
    ({"datetime": {"fmt": "%Y"}, "steps": ["since"]}, "datetime: takes only 'format'"),
    ({"datetime": {"format": "%Y"}}, "a column with options is {datetime"),
])
def test_bad_datetime_option_names_the_column(column, needle):
    with pytest.raises(ConfigError, match="c.yaml: features.t") as err:
        PipelineConfig.from_dict({"data": "d.parquet", "label": "y", "task": "regression", "features": {"t": column},
                                  "output": "o"}, source="c.yaml")
    assert needle in str(err.value)


def test_the_datetime_option_round_trips_through_the_config():
    raw = {"data": {"path": "d.csv", "format": "csv"}, "label": "y", "task": "regression", "output": "o",
           "features": {"t": {"datetime": {"format": "%d/%m/%Y"}, "steps": [{"calendar": ["year"]}]},
                        "u": {"datetime": None, "steps": ["since"]}}}
    config = PipelineConfig.from_dict(raw)
    assert config.datetime_formats == {"t": "%d/%m/%Y", "u": None}
    again = PipelineConfig.from_dict(config.to_dict())
    assert again.datetime_formats == config.datetime_formats and again.features == config.features


def test_text_that_does_not_read_names_the_column_and_the_value():
    with pytest.raises(DataError, match=r"column 'when' in x.csv has the value '31/02/2020 10:00:00', which does not "
                                        r"read as its datetime format '%d/%m/%Y %H:%M:%S'"):
        model_timestamps(pa.array(["01/02/2020 10:00:00", "31/02/2020 10:00:00"]), "when", "in x.csv",
                         "%d/%m/%Y %H:%M:%S")
    with pytest.raises(DataError, match="column 'when' in x.csv has the value '2020-02-30', which is not an ISO 8601"):
        model_timestamps(pa.array(["2020-02-28", "2020-02-30"]), "when", "in x.csv")
    with pytest.raises(DataError, match="outside the years 1 to 9999"):
        model_timestamps(pa.array([10**13], pa.timestamp("s")), "when", "in x.parquet")


def test_a_date_column_under_a_number_step_says_what_reads_dates(tmp_path):
    pq.write_table(pa.table({"y": [1.0, 2.0], "t": pa.array([0, 1], pa.date32())}), tmp_path / "d.parquet")
    config = PipelineConfig.from_dict({"data": str(tmp_path / "d.parquet"), "label": "y", "task": "regression",
                                       "features": {"t": ["z_score"]}, "output": str(tmp_path / "o")})
    with pytest.raises(DataError, match="column 't' in .* has type date32.*expected numbers.*calendar, cyclical or "
                                        "since"):
        run_features(config)
