"""A run's results depend on what the config says, not on how it is written or which Python reads it."""

from __future__ import annotations

import keyword

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tfbridge.cli import main
from tfbridge.contracts import ConfigError, PipelineConfig, fingerprints, graph_input_name
from tfbridge.contracts.columns import PYTHON_KEYWORDS


def test_reordering_features_moves_no_row_between_splits_and_keeps_the_run_up_to_date(tmp_path):
    from tft_features.pipeline import split_rows

    rng = np.random.default_rng(3)
    n = 2_000
    pq.write_table(pa.table({"a": rng.normal(size=n), "b": rng.choice(["p", "q", "r", "s"], n),
                             "c": rng.integers(0, 50, n), "y": rng.normal(size=n)}), tmp_path / "d.parquet")
    base = {"data": str(tmp_path / "d.parquet"), "label": "y", "task": "regression", "output": str(tmp_path / "o")}
    written = PipelineConfig.from_dict({**base, "features": {"a": ["z_score"], "b": ["vocabulary"], "c": ["log1p"]}})
    reordered = PipelineConfig.from_dict({**base, "features": {"c": ["log1p"], "b": ["vocabulary"], "a": ["z_score"]}})

    for split in ("train", "eval"):
        rows = [split_rows(config, split, n).sort_by("y") for config in (written, reordered)]
        assert rows[0].num_rows == rows[1].num_rows > 0
        assert rows[0].column("y").equals(rows[1].column("y"))
    assert fingerprints.features_fingerprint(written) == fingerprints.features_fingerprint(reordered)


def test_graph_input_names_are_the_same_on_every_python():
    """`type` is a soft keyword from 3.12 only; the names must not follow the running interpreter's list."""
    assert set(keyword.kwlist) | set(keyword.softkwlist) <= PYTHON_KEYWORDS
    assert {"type", "match", "case", "_"} <= PYTHON_KEYWORDS
    assert [graph_input_name(c) for c in ("type", "match", "case", "_", "Type", "typed")] == [
        "c_type", "c_match", "c_case", "c", "c_type", "typed"]


def test_yaml_keys_are_column_names_as_written(tmp_path):
    """YAML 1.1 reads an unquoted `010` as 8 and `on` as True; a config key is the text written."""
    path = tmp_path / "c.yaml"
    path.write_text("data: d.parquet\nlabel: '010'\ntask: regression\noutput: o\n"
                    "features:\n  on: [z_score]\n  '7': [z_score]\n  1.10: [log1p]\n  0x1F: [vocabulary]\n")
    config = PipelineConfig.from_yaml(path)
    assert config.label == "010" and list(config.features) == ["on", "7", "1.10", "0x1F"]
    # As the training launcher hands the config to its workers: written with yaml.safe_dump, read back.
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert PipelineConfig.from_yaml(path).features == config.features


@pytest.mark.parametrize("label_line, read_as", [("label: 010", "int 8"), ("label: on", "bool True"),
                                                 ("label: 1.10", "float 1.1")])
def test_a_label_yaml_reads_as_no_text_names_the_key(tmp_path, label_line, read_as):
    path = tmp_path / "c.yaml"
    path.write_text(f"data: d.parquet\n{label_line}\ntask: regression\noutput: o\nfeatures: {{a: [z_score]}}\n")
    with pytest.raises(ConfigError, match=f"{path}: 'label' must be text, but YAML read it as the {read_as}"):
        PipelineConfig.from_yaml(path)


def test_a_non_numeric_min_max_bound_exits_2_naming_the_step(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {tmp_path / 'd.parquet'}\nlabel: y\ntask: regression\noutput: {tmp_path / 'o'}\n"
                    "features:\n  a: [{min_max: {output_min: low}}]\n")
    assert main(["features", "--config", str(path)]) == 2
    assert f"{path}: features.a: step 'min_max': output_min must be a finite number, got 'low'" in \
        capsys.readouterr().err
