"""A category first seen at scoring time: its prediction comes from data, not from the seed.

One small table where a five-value grade moves the target a lot, one grade in most rows; a model trained with
three seeds scores every row again with each known grade and with a grade the vocabulary never saw. Before the
trainer showed the model unseen ids (tf_train.data.unseen_ids_in_training) the unseen grade's prediction moved
0.58 across these seeds (6 in 100 of the known grades' range went to 0.42), 0.92 away from the grades' mean.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import yaml

from tests.helpers import committed, serving_inputs, tf_inputs
from tf_train.launcher import launch
from tfbridge.cli import main
from tfbridge.contracts import ModelManifest, PipelineConfig

ROWS = 3000
GRADES = {"a": -3.0, "b": -1.0, "c": 0.0, "d": 1.5, "e": 4.0}  # the grade's effect on the target
SHARES = [0.6, 0.1, 0.1, 0.1, 0.1]  # of the rows: the mean grade is far from the middle one
SEEDS = (1, 2, 3)


def grade_table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    grade = rng.choice(list(GRADES), size=rows, p=SHARES)
    size = rng.normal(0.0, 1.0, rows)
    target = np.vectorize(GRADES.get)(grade) + size + rng.normal(0.0, 0.3, rows)
    return pa.table({"size": size, "grade": grade, "target": target})


@pytest.fixture(autouse=True)
def importable_repo(monkeypatch):
    """Workers are `python -m tf_train` subprocesses: they must import this checkout."""
    repo = str(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))


def write_config(out: Path, data: Path, seed: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    config = {"data": {"path": str(data)}, "label": "target", "task": "regression", "output": str(out),
              "features": {"size": ["z_score"], "grade": ["vocabulary"]},
              "train": {"batch_size": 64, "epochs": 20, "hidden_units": [16], "seed": seed}}
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    return out / "config.yaml"


def grade_means(saved_model: Path, manifest: ModelManifest, rows: pa.Table) -> dict[str, float]:
    """The mean prediction over `rows` with every row's grade set to each known grade and to an unseen one."""
    serve = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    means = {}
    for grade in [*GRADES, "unseen"]:
        graded = rows.set_column(rows.schema.get_field_index("grade"), "grade", pa.array([grade] * len(rows)))
        means[grade] = float(serve(**tf_inputs(serving_inputs(graded, manifest)))["prediction"].numpy().mean())
    return means


def test_an_unseen_category_is_predicted_alike_by_every_seed_and_within_the_known_ones(tmp_path):
    pq.write_table(grade_table(ROWS, seed=0), tmp_path / "raw.parquet")
    assert main(["features", "--config", str(write_config(tmp_path / "features", tmp_path / "raw.parquet", 0))]) == 0
    rows = grade_table(200, seed=1)
    means = []
    for seed in SEEDS:
        out = tmp_path / f"seed{seed}"
        shutil.copytree(tmp_path / "features" / "features", out / "features")
        config = PipelineConfig.from_yaml(write_config(out, tmp_path / "raw.parquet", seed))
        launch(config, workers=1)
        manifest = ModelManifest.read(config.layout.model_manifest_path)
        means.append(grade_means(committed(config.layout).saved_model_dir, manifest, rows))
    known = np.array([[m[g] for g in GRADES] for m in means])
    unseen = np.array([m["unseen"] for m in means])
    # the known grades are learned: their order is the effects' order, for every seed
    assert (np.diff(known, axis=1) > 0).all(), known
    spread = (known.max(axis=1) - known.min(axis=1)).mean()
    assert unseen.max() - unseen.min() < 0.06 * spread, (unseen, known)
    assert ((known.min(axis=1) < unseen) & (unseen < known.max(axis=1))).all(), (unseen, known)
    # learned from data: what a row of unknown grade is on average, the known grades weighed by their shares
    np.testing.assert_allclose(unseen, known @ SHARES, atol=0.1 * spread)
