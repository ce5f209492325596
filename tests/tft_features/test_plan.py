"""Checking feature chains against the step registry, before any data is read."""

import pytest

from tfbridge.contracts import ConfigError, FeatureKind, PipelineConfig
from tft_features.preprocessing import parse_stat_output_name, plan_features, stat_output_name
from tft_features.steps import IDS, NUMBER, TEXT, TOKEN_IDS, VECTOR


def plan(features):
    return plan_features(PipelineConfig.from_dict(
        {"data": "d.parquet", "label": "y", "task": "regression", "features": features, "output": "o"},
        source="c.yaml"))


def test_chains_read_types_and_phases():
    p = plan({
        "a": ["box_cox", "z_score"],
        "t": [{"normalize_text": {"stopwords": ["foo"]}}, {"vocabulary": {"top_k": 10}}],
        "c": [{"impute": {"strategy": "constant", "value": "?"}}, {"vocabulary": {"top_k": 4}}, "one_hot"],
        "m": [{"impute": "median"}, "box_cox", "z_score"],
        "b": [{"bucketize": {"boundaries": [1, 2]}}, "one_hot"],
        "p": [{"polynomial": {"degree": 2, "with": ["q"]}}],
    })
    by = {c.column: c for c in p.columns}
    assert by["a"].read_as == "float" and by["a"].raw_domain.above == 0 and by["a"].output_kind == NUMBER
    assert by["t"].read_as == "string" and by["t"].output_kind == TOKEN_IDS
    assert by["c"].read_as == "string" and by["c"].nullable and by["c"].kinds[1].width == 5
    assert by["c"].output_kind == VECTOR and by["b"].kinds[0].width == 3
    assert by["m"].raw_domain.above == 0 and by["m"].nullable
    assert p.raw_columns()["q"] == ("float", False)
    # impute median, then box_cox and z_score in one pass (the z-score's moments from the lambda's summaries)
    assert p.analysis_phases() == 2
    assert [[s.name for s in steps] for _, steps in by["m"].step_groups()] == [["impute"], ["box_cox", "z_score"]]
    assert [i for i, _ in by["m"].step_groups()] == [0, 1]
    assert plan({"a": ["yeo_johnson", "z_score"]}).analysis_phases() == 1
    assert plan({"a": ["box_cox", "min_max"]}).analysis_phases() == 2
    assert plan({"a": ["box_cox", "z_score", "z_score"]}).analysis_phases() == 2
    assert plan({"a": ["z_score"], "b": [{"bucketize": {"boundaries": [0]}}]}).analysis_phases() == 1
    assert TEXT != IDS and isinstance(by["t"].output_kind, FeatureKind)


@pytest.mark.parametrize("features, needle", [
    ({"a": ["nope"]}, "unknown transform 'nope'"),
    ({"a": [{"z_score": {"ddof": 1}}]}, "unknown parameter(s) ['ddof']"),
    ({"a": ["normalize_text", "z_score"]}, "'z_score' needs number or vector input, but the step before it gives tokens"),
    ({"a": [{"threshold": "high"}]}, "numeric threshold"),
    ({"a": [{"z_score": 3}]}, "step 'z_score' takes no bare value"),
    ({"a": [{"bucketize": {"num_buckets": 1}}]}, "num_buckets must be an integer >= 2"),
    ({"a": [{"bucketize": {"boundaries": [2, 1]}}]}, "strictly increasing"),
    ({"a": [{"impute": "mode"}]}, "strategy must be mean, median, most_frequent or constant"),
    ({"a": [{"impute": {"strategy": "constant"}}]}, "constant needs a 'value'"),
    ({"a": [{"normalize_text": {"stopwords": "klingon"}}]}, "stopwords must be"),
    ({"a": [{"polynomial": {"degree": 0, "with": []}}]}, "degree must be a positive integer"),
    ({"a": [{"impute": "mean"}], "b": [{"polynomial": {"with": ["a"]}}]}, "polynomial uses the raw column 'a'"),
])
def test_bad_chain_names_column_and_step(features, needle):
    with pytest.raises(ConfigError, match="c.yaml: features") as err:
        plan(features)
    assert needle in str(err.value)


def test_stat_output_names_round_trip():
    assert parse_stat_output_name(stat_output_name("my__col", "mean")) == ("my__col", "mean")
    assert parse_stat_output_name("carat") is None
