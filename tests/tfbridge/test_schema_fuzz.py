"""A schema fuzzer: random tables (names, dtypes, nulls, empty strings, unicode) through `tfbridge run`.

Each example is a Parquet or CSV table of a few hundred rows whose column names mix case, dots,
spaces, unicode, leading digits and Python keywords, with float, decimal, int, bool and string
columns holding nulls, NaN, "" and non-ASCII text. A config is built from the dtypes; names that collide once
sanitised must stop at config time naming both; otherwise features -> 1-epoch training -> export ->
Spark scoring runs and every hand-off agrees (tests.helpers.check_hand_offs).

CI runs the explicit CI_EXAMPLES: together they draw every column kind (and each encoding of a boolean), both
formats, every kind of awkward name, and one collision (test_the_ci_examples_cover_every_column_kind checks it).
TFBRIDGE_FUZZ_EXAMPLES=N adds N generated ones (e.g. 100 for a long run).
"""

from __future__ import annotations

import decimal
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.helpers import check_hand_offs
from tests.tfbridge.test_real_tables import read_raw
from tfbridge.cli import main
from tfbridge.contracts import ConfigError, PipelineConfig, graph_input_name, graph_input_names

ROWS = 240
GENERATED = int(os.environ.get("TFBRIDGE_FUZZ_EXAMPLES", "0"))
KINDS = ("float", "float_nulls", "decimal", "int_number", "int_category", "bool", "category", "category_nulls", "text")
WORDS = ["Good", "price!", "don't", "naïve", "café", "Größe", "été", "x.y", "a,b", "\ttab", "ÆØÅ", "the", ""]

name_part = st.one_of(st.sampled_from(["class", "lambda", "Price", "sample.yr", "Home Team", "2nd_visit", "Größe",
                                       "price ($)", "a.b", "a_b", "ID", "x"]),
                      st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=8))
columns = st.lists(st.tuples(name_part, st.sampled_from(KINDS)), min_size=1, max_size=4,
                   unique_by=lambda c: c[0])


CI_EXAMPLES = [  # seeds chosen so that the Parquet booleans draw both of their encodings
    {"columns": [("class", "float"), ("sample.yr", "float_nulls"), ("Größe", "decimal"), ("Home Team", "bool")],
     "fmt": "parquet", "seed": 1},
    {"columns": [("2nd_visit", "int_number"), ("price ($)", "text"), ("lambda", "category_nulls"), ("ID", "bool")],
     "fmt": "csv", "seed": 3},
    {"columns": [("Price", "int_category"), ("価格", "category"), ("x", "bool"), ("ÆØÅ q", "float_nulls")],
     "fmt": "parquet", "seed": 2},
    {"columns": [("a.b", "float"), ("a_b", "text")], "fmt": "csv", "seed": 4},  # stops at config time: cheap
]


def ci_examples(test):
    for case in reversed(CI_EXAMPLES):
        test = example(**case)(test)
    return test


def make_column(kind: str, rng: np.random.Generator, fmt: str) -> tuple[pa.Array, list]:
    """The column's values and its config steps (a CSV has no booleans: there they are the text true/false)."""
    nulls = rng.random(ROWS) < 0.1
    if kind in ("float", "float_nulls"):
        values = rng.normal(0, 1, ROWS) * rng.choice([1.0, 1e6, 1e-6])
        if kind == "float":
            return pa.array(values), ["z_score"]
        values[rng.random(ROWS) < 0.05] = np.nan
        return pa.array(values, mask=nulls), [{"impute": "median"}, "z_score"]
    if kind in ("int_number", "int_category"):
        values = pa.array(rng.integers(-3, 9, ROWS), type=rng.choice([pa.int8(), pa.int32(), pa.int64()]))
        return values, ["min_max"] if kind == "int_number" else ["vocabulary"]
    if kind == "decimal":
        values = [decimal.Decimal(f"{v:.3f}") for v in rng.normal(0, 50, ROWS)]
        return pa.array(values, pa.decimal128(12, 3), mask=nulls), [{"impute": "mean"}, "z_score"]
    if kind == "bool":
        return pa.array(rng.random(ROWS) < 0.3), [rng.choice(["z_score", "vocabulary"]).item() if fmt == "parquet"
                                                  else "vocabulary"]
    if kind == "text":
        text = [" ".join(rng.choice(WORDS, rng.integers(0, 5))) for _ in range(ROWS)]
        return pa.array(text, mask=nulls), [{"normalize_text": {"stopwords": "english"}}, "vocabulary"]
    values = pa.array(rng.choice(["a", "B", "", "ü", "x y"], ROWS).tolist())
    if kind == "category":
        return values, [{"vocabulary": {"top_k": 3}}]
    return pa.array(values.to_pylist(), mask=nulls), [{"impute": "most_frequent"}, "vocabulary"]


@settings(max_examples=max(GENERATED, 1), phases=[Phase.explicit, Phase.generate] if GENERATED else [Phase.explicit],
          deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@ci_examples
@given(columns=columns, fmt=st.sampled_from(["parquet", "csv"]), seed=st.integers(0, 2**16))
def test_random_schemas_hold_parity(columns, fmt, seed, tmp_path_factory, spark, capsys):
    rng = np.random.default_rng(seed)
    root = tmp_path_factory.mktemp("fuzz")
    arrays, features = {"row id": pa.array(np.arange(ROWS))}, {}
    for name, kind in columns:
        arrays[name], features[name] = make_column(kind, rng, fmt)
    label = "Target.Value"
    arrays[label] = pa.array(rng.normal(10, 3, ROWS))
    data = root / f"raw.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.table(arrays), data)
    else:
        pacsv.write_csv(pa.table(arrays), data)
    config = {"data": {"path": str(data)}, "label": label, "task": "regression",
              "features": features, "output": str(root / "out"), "split": {"eval_fraction": 0.2},
              "train": {"epochs": 1, "batch_size": 32, "hidden_units": [4], "workers": 1}}
    (root / "c.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    try:
        graph_input_names([label, *features], "fuzz")
    except ConfigError as collision:
        assert main(["run", "--config", str(root / "c.yaml")]) == 2
        err = capsys.readouterr().err
        graph_names = [graph_input_name(c) for c in [label, *features]]
        colliding = [c for c, g in zip([label, *features], graph_names) if graph_names.count(g) > 1]
        assert "both become" in err and sum(f"'{c}'" in err for c in colliding) >= 2, (str(collision), err)
        return
    assert main(["run", "--config", str(root / "c.yaml")]) == 0
    layout = PipelineConfig.from_yaml(root / "c.yaml").layout
    raw = read_raw(data, fmt)
    check_hand_offs(layout, raw, "row id", "row id", "regression", float(raw[label].std()))


def test_the_ci_examples_cover_every_column_kind():
    """What the CI examples draw, replayed as the fuzz test draws it: every kind the strategy samples, each
    encoding of a boolean, both formats; names the strategy could draw; one collision, the rest run."""
    drawn, formats, collisions = set(), set(), 0
    for case in CI_EXAMPLES:
        names = [name for name, _ in case["columns"]]
        assert 1 <= len(names) <= 4 and len(set(names)) == len(names) and case["fmt"] in ("parquet", "csv")
        try:
            graph_input_names(["Target.Value", *names], "ci example")
        except ConfigError:
            collisions += 1
            continue
        formats.add(case["fmt"])
        rng = np.random.default_rng(case["seed"])
        for _, kind in case["columns"]:
            drawn.add((kind, case["fmt"] if kind == "bool" else "", json.dumps(make_column(kind, rng, case["fmt"])[1])))
    assert {kind for kind, _, _ in drawn} == set(KINDS) and formats == {"parquet", "csv"} and collisions == 1
    assert {(fmt, steps) for kind, fmt, steps in drawn if kind == "bool"} == {
        ("parquet", '["z_score"]'), ("parquet", '["vocabulary"]'), ("csv", '["vocabulary"]')}
    names = [name for case in CI_EXAMPLES for name, _ in case["columns"]]
    assert {"class", "lambda", "sample.yr", "Home Team", "2nd_visit", "Größe", "price ($)"} <= set(names)
    assert any(not name.isascii() and name not in ("Größe",) for name in names)  # drawn text beyond the list


@pytest.mark.parametrize("names", [("a.b", "a_b"), ("Action", "action"), ("class", "c_class")])
def test_names_that_collide_once_sanitised_stop_at_config_time(names):
    config = {"data": "x.parquet", "label": "y", "task": "regression", "output": "out",
              "features": {names[0]: ["z_score"], names[1]: ["z_score"]}}
    with pytest.raises(ConfigError, match=rf"columns '{names[0]}' and '{names[1]}' both become"):
        PipelineConfig.from_dict(config)
