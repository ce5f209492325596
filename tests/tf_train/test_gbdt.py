"""Gradient-boosted trees (`train.model: gbdt`) through `tfbridge run` for regression, binary and multiclass.

Every hand-off as for the network (SavedModel vs ONNX on every raw row, Spark's scores vs ONNX joined by id),
and XGBoost itself: the trees the run kept (`xgboost.json`), loaded by XGBoost and run on the transformed eval
rows the feature stage wrote, against the ONNX graph on the same rows' raw values, joined by id. The features
are what trees meet on a real table: z-scored and skewed numbers, a vocabulary's ids (an unseen category's
OOV id), a cyclical calendar, text as tf-idf weights (a vector) and as token ids (a count per id).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import xgboost
import yaml

from spark_infer import load_model
from tests.helpers import check_hand_offs, committed, decode_split
from tfbridge.cli import main
from tf_train.data import analyze_label
from tfbridge.contracts import (ConfigError, FeatureKind, FeatureOutput, FeaturesManifest, ModelManifest,
                                PipelineConfig, fingerprints)
from tfbridge.contracts.layout import METRICS, XGBOOST_COLUMNS, XGBOOST_MODEL

N = 600
WORDS = ["good", "bad", "fine", "über", "東京", "ok"]
FEATURES = {
    "words": [{"normalize_text": {"stopwords": "none"}}, {"vocabulary": {"top_k": 4}}],  # token ids: counts
    "id": ["z_score"],  # a row id as a number, as real tables have them; the test joins the shards' rows by it
    "x": ["z_score"], "skewed": ["log1p", "z_score"], "colour": [{"vocabulary": {"top_k": 3}}],
    "when": [{"cyclical": ["weekday", "hour"]}],
    "note": [{"normalize_text": {"stopwords": "none"}}, {"vocabulary": {"top_k": 5}}, "tfidf"],
}


def frame(task: str, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x, skewed = rng.normal(0, 1, N), rng.lognormal(1, 1.2, N)
    colour = rng.choice(["red", "grün", "blue", "rare"], N, p=[0.4, 0.3, 0.25, 0.05])
    when = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 365 * 24 * 3600, N), unit="s")
    note = [" ".join(rng.choice(WORDS, rng.integers(0, 4))) for _ in range(N)]
    words = [" ".join(rng.choice(WORDS, rng.integers(0, 6))) for _ in range(N)]
    score = (2 * x + np.log1p(skewed) + (colour == "red") * 1.5 + (when.hour >= 12) * 1.0
             + np.array(["good" in n for n in note]) * 1.2 + np.array([w.count("bad") for w in words]) * 0.8
             + rng.normal(0, 0.3, N))
    y = {"regression": score, "binary": (score > np.median(score)).astype(np.int64),
         "multiclass": np.array(["low", "mid", "high"], object)[np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))]}
    return pd.DataFrame({"id": np.arange(N), "x": x, "skewed": skewed, "colour": colour, "when": when,
                         "note": note, "words": words, "y": y[task]})


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_gbdt_through_every_hand_off_equals_xgboost(task, tmp_path, spark):
    raw = frame(task, seed={"regression": 1, "binary": 2, "multiclass": 3}[task])
    raw.to_parquet(tmp_path / "rows.parquet", index=False, coerce_timestamps="us")  # Spark reads no nanoseconds
    config = {"data": {"path": str(tmp_path / "rows.parquet")}, "label": "y", "task": task, "features": FEATURES,
              "output": str(tmp_path / "out"), "split": {"eval_fraction": 0.25},
              "train": {"model": "gbdt", "gbdt": {"trees": 200, "max_depth": 4, "patience": 20}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) == 0
    layout = PipelineConfig.from_yaml(tmp_path / "c.yaml").layout
    spread = float(raw["y"].std()) if task == "regression" else 1.0
    check_hand_offs(layout, raw, "id", "id", task, spread, spark, tmp_path / "rows.parquet")

    manifest = ModelManifest.read(layout.model_manifest_path)
    metrics = json.loads(manifest.file(layout.model_dir, METRICS).read_text())
    assert metrics["fitting"]["model"] == "gbdt" and 1 <= metrics["fitting"]["kept_epoch"] <= 200
    quality = metrics["eval"]["r2" if task == "regression" else "accuracy"]
    assert quality > {"regression": 0.8, "binary": 0.8, "multiclass": 0.6}[task], metrics["eval"]

    # XGBoost itself on the eval split's transformed rows, against ONNX on their raw values, joined by id.
    booster = xgboost.Booster()
    booster.load_model(bytearray(manifest.file(layout.model_dir, XGBOOST_MODEL).read_bytes()))
    columns = json.loads(manifest.file(layout.model_dir, XGBOOST_COLUMNS).read_text())
    shards = decode_split(layout.features_dir, "eval")
    outputs = FeaturesManifest.read(layout.features_manifest_path).outputs
    matrix = np.column_stack([column_values(shards, outputs, c) for c in columns]).astype(np.float32)
    margins = booster.predict(xgboost.DMatrix(matrix), output_margin=True)
    stats = json.loads(committed(layout).stats_path.read_text())["features"]["id"]
    ids = np.rint(np.asarray(shards["id"], np.float64) * stats["std"] + stats["mean"]).astype(np.int64)
    assert len(set(ids)) == len(ids)
    onnx = load_model(layout.model_dir).predict(raw.set_index("id").loc[ids].reset_index())
    if task == "regression":
        label = analyze_label(FeaturesManifest.read(layout.features_manifest_path).shard_paths(
            layout.features_dir, "train"), FeaturesManifest.read(layout.features_manifest_path), task,
            PipelineConfig.from_yaml(tmp_path / "c.yaml").train)
        np.testing.assert_allclose(onnx["prediction"], margins * label.std + label.mean, rtol=1e-5,
                                   atol=1e-5 * spread)
    elif task == "binary":
        np.testing.assert_allclose(onnx["probabilities"][:, 1], 1 / (1 + np.exp(-margins)), atol=1e-6)
    else:
        e = np.exp(margins - margins.max(axis=1, keepdims=True))
        np.testing.assert_allclose(onnx["probabilities"], e / e.sum(axis=1, keepdims=True), atol=1e-6)


def column_values(shards: dict, outputs: dict, column: str) -> np.ndarray:
    """One column of XGBoost's matrix from the decoded shards, by its name in xgboost-columns.json: a number or
    an id, a vector's element `name[i]`, or the count of token id i in each row, `name[i]` of token ids."""
    name, _, index = column.partition("[")
    if not index:
        return np.asarray(shards[name], np.float32)
    i = int(index[:-1])
    if outputs[name].kind == FeatureKind.TOKEN_IDS:
        return np.array([np.count_nonzero(np.asarray(row) == i) for row in shards[name]], np.float32)
    return np.stack(shards[name])[:, i]


def test_token_ids_wider_than_the_cap_are_refused_with_the_way_out(tmp_path, capsys):
    raw = frame("regression", seed=4)
    raw.to_parquet(tmp_path / "rows.parquet", index=False)
    config = {"data": str(tmp_path / "rows.parquet"), "label": "y", "task": "regression",
              "features": {"x": ["z_score"], "note": ["normalize_text", {"hash": 6000}]},
              "output": str(tmp_path / "out"), "train": {"model": "gbdt"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) != 0
    assert "feature 'note' holds token ids of 6,000 values, a column each for the trees; at most 5,000" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("train, says", [
    ({"model": "forest"}, "'train.model' must be one of"),
    ({"model": "gbdt", "gbdt": {"trees": 0}}, "'train.gbdt.trees' must be a positive integer"),
    ({"model": "gbdt", "gbdt": {"learning_rate": 2}}, "'train.gbdt.learning_rate' must be a number in"),
    ({"model": "gbdt", "gbdt": {"depth": 3}}, r"unknown key\(s\) train.gbdt.\['depth'\]"),
    ({"model": ["network", "network"]}, "or a list of different ones"),
    ({"model": []}, "or a list of different ones"),
    ({"model": ["network", "gbdt"], "validation_fraction": 0}, "'train.validation_fraction' is 0"),
    ({"numeric_embedding": ["none", "fourier"]}, "'train.numeric_embedding' must be one of"),
])
def test_bad_gbdt_settings_are_refused_when_the_config_is_read(train, says):
    with pytest.raises(ConfigError, match=says):
        PipelineConfig.from_dict({"data": "d.parquet", "label": "y", "task": "regression",
                                  "features": {"x": ["z_score"]}, "output": "o", "train": train}, source="c.yaml")


def test_several_models_are_one_train_config_each():
    def names(train):
        config = PipelineConfig.from_dict({"data": "d.parquet", "label": "y", "task": "regression",
                                           "features": {"x": ["z_score"]}, "output": "o", "train": train}, source="c")
        return [(t.candidate_name, t.model, t.numeric_embedding) for t in config.train.candidates]

    assert names({}) == [("network", "network", "none")]
    assert names({"model": ["gbdt"]}) == [("gbdt", "gbdt", "none")]
    assert names({"model": ["network", "gbdt"], "numeric_embedding": ["none", "periodic"]}) == [
        ("network", "network", "none"), ("network (periodic)", "network", "periodic"), ("gbdt", "gbdt", "none")]
    assert names({"numeric_embedding": ["periodic", "none"]}) == [
        ("network (periodic)", "network", "periodic"), ("network", "network", "none")]


def test_a_periodic_network_is_not_trained_without_number_features():
    from tf_train.candidates import distinct_candidates

    train = PipelineConfig.from_dict({"data": "d.parquet", "label": "y", "task": "regression",
                                      "features": {"x": ["z_score"]}, "output": "o",
                                      "train": {"model": ["network", "gbdt"], "numeric_embedding": ["none", "periodic"]}},
                                     source="c").train
    ids, number = FeatureOutput(FeatureKind.IDS, width=4), FeatureOutput(FeatureKind.NUMBER)
    assert [t.candidate_name for t in distinct_candidates(train, {"shop": ids, "x": number})] == [
        "network", "network (periodic)", "gbdt"]
    assert [t.candidate_name for t in distinct_candidates(train, {"shop": ids})] == ["network", "gbdt"]
    periodic_first = dataclasses.replace(train, model="network", numeric_embedding=("periodic", "none"))
    assert [t.candidate_name for t in distinct_candidates(periodic_first, {"shop": ids})] == ["network"]


def test_a_networks_fingerprint_ignores_the_trees_settings():
    def fingerprint(train):
        return fingerprints.model_fingerprint(PipelineConfig.from_dict(
            {"data": "d.parquet", "label": "y", "task": "regression", "features": {"x": ["z_score"]},
             "output": "o", "train": train}, source="c.yaml"), "features")

    assert fingerprint({}) == fingerprint({"model": "network", "gbdt": {"trees": 5}})
    assert fingerprint({"model": "gbdt"}) != fingerprint({"model": "gbdt", "gbdt": {"trees": 5}}) != fingerprint({})


def test_two_workers_fit_one_model_close_to_one_workers(tmp_path):
    """Two workers, each on half the shard files, one model through XGBoost's collective (its quantile sketch
    merges the workers'), against one worker on every file."""
    raw = frame("regression", seed=6)
    raw.to_parquet(tmp_path / "rows.parquet", index=False, coerce_timestamps="us")
    predictions, fittings = {}, {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        config = {"data": str(tmp_path / "rows.parquet"), "label": "y", "task": "regression",
                  "features": FEATURES, "output": str(out), "split": {"eval_fraction": 0.25},
                  "train": {"model": "gbdt", "workers": workers, "gbdt": {"trees": 200, "max_depth": 4}}}
        (tmp_path / f"c{workers}.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
        for stage in ("features", "train", "export"):
            assert main([stage, "--config", str(tmp_path / f"c{workers}.yaml")]) == 0
        layout = PipelineConfig.from_yaml(tmp_path / f"c{workers}.yaml").layout
        fittings[workers] = json.loads(ModelManifest.read(layout.model_manifest_path).file(
            layout.model_dir, METRICS).read_text())
        predictions[workers] = load_model(layout.model_dir).predict(raw)["prediction"]
    assert fittings[2]["fitting"]["workers"] == 2
    # Measured on this table: the same rounds kept and the same predictions (the merged sketch found the same
    # splits); the bound leaves room for a sketch that merges otherwise.
    np.testing.assert_allclose(predictions[2], predictions[1], rtol=0, atol=1e-3 * float(raw["y"].std()))
    assert abs(fittings[2]["eval"]["r2"] - fittings[1]["eval"]["r2"]) < 0.005


def test_network_and_trees_trained_in_turn_and_the_lower_validation_loss_kept(tmp_path, spark, capsys):
    """`model: [network, gbdt]`: both trained on the same rows, each one's record in the manifest, the one with the
    lower validation loss committed (its own files, its own metrics) and carried through every hand-off; the other's
    files removed. A network committed before (a run with `model: network`) is reused, not trained again."""
    raw = frame("binary", seed=7)
    raw.to_parquet(tmp_path / "rows.parquet", index=False, coerce_timestamps="us")
    config = {"data": str(tmp_path / "rows.parquet"), "label": "y", "task": "binary", "features": FEATURES,
              "output": str(tmp_path / "out"), "split": {"eval_fraction": 0.25},
              "train": {"model": "network", "epochs": 8, "hidden_units": [16], "workers": 1,
                        "gbdt": {"trees": 200, "max_depth": 4, "patience": 20}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    for stage in ("features", "train"):
        assert main([stage, "--config", str(tmp_path / "c.yaml")]) == 0
    layout = PipelineConfig.from_yaml(tmp_path / "c.yaml").layout
    network_attempt = ModelManifest.read(layout.model_manifest_path).attempt

    config["train"]["model"] = ["network", "gbdt"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    capsys.readouterr()
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) == 0
    console = capsys.readouterr().out
    check_hand_offs(layout, raw, "id", "id", "binary", 1.0, spark, tmp_path / "rows.parquet")

    manifest = ModelManifest.read(layout.model_manifest_path)
    network, trees = manifest.candidates
    assert (network.model, trees.model) == ("network", "gbdt") and network.seconds is None and trees.seconds > 0
    kept = min((network, trees), key=lambda c: c.validation_loss)
    assert [c.kept for c in manifest.candidates] == [kept is network, kept is trees]
    metrics = json.loads(manifest.file(layout.model_dir, METRICS).read_text())  # the kept model's own files
    assert metrics["fitting"].get("model", "network") == kept.model and metrics["eval"] == kept.eval
    assert (XGBOOST_MODEL in manifest.checksums) == (kept is trees)
    assert (manifest.attempt == network_attempt) == (kept is network)
    assert network.eval != trees.eval and 0.5 < min(network.eval["accuracy"], trees.eval["accuracy"])
    attempts = {p.name for p in (tmp_path / "out" / "model").iterdir() if p.name.startswith("attempt-")}
    assert manifest.attempt in attempts and len(attempts) == 2  # the kept model's and its ONNX graph's
    assert f"{kept.model} kept (validation loss" in console
    assert f"({kept.model}, kept of network, gbdt)" in console
    report = (tmp_path / "out" / "report.html").read_text()
    assert f"{kept.model} (kept)" in report and "validation loss" in report

    capsys.readouterr()  # a rerun finds the comparison up to date
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) == 0
    assert f"{layout.model_dir} is up to date" in capsys.readouterr().out
