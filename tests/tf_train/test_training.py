"""Training on real worker processes on loopback: parity of 1 vs 2 workers, restarts, export, bad input.

One feature-stage run is shared by the module; each training run copies its
features into a fresh output directory. Every test that starts workers has a
hard timeout.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import yaml

from tests.helpers import committed, decode_split, onnx_session, serving_inputs, tf_inputs
from tf_train.data import (default_batch_size, label_reader, labelled_batches, load_training_data, shard_reader,
                           steps_per_epoch, target, validation_dataset)
from tf_train.launcher import launch
from onnx_export.convert import export_onnx
from tfbridge.cli import main
from tfbridge.contracts import DataError, FeaturesManifest, ModelManifest, PipelineConfig, RawColumn
from tfbridge.datasets import synthetic_table

ROWS = 3000
FEATURES = {
    "amount": ["box_cox", "z_score"],
    "duration": ["log1p", "z_score"],
    "score": [{"impute": "mean"}, "z_score"],  # nullable: NaN is missing in the serving signature
    "ratio": [{"bucketize": {"num_buckets": 4}}],
    "region": [{"vocabulary": {"top_k": 20}}, "one_hot"],
    "category": [{"vocabulary": {"top_k": 50}}],
    "comment": ["normalize_text", "vocabulary"],
}


def with_missing_scores(table: pa.Table, seed: int) -> pa.Table:
    score = table.column("score").to_numpy().copy()
    score[np.random.default_rng(seed).random(len(score)) < 0.05] = np.nan
    return table.set_column(table.schema.get_field_index("score"), "score", pa.array(score))


@pytest.fixture(scope="module")
def features_root(tmp_path_factory):
    """Raw Parquet and one feature-stage run: regression on `target`, plus binary and multiclass labels."""
    root = tmp_path_factory.mktemp("training")
    table = with_missing_scores(synthetic_table(ROWS, seed=3, categories=200), seed=3)
    target = table.column("target").to_numpy()
    table = table.append_column("above", pa.array((target > np.median(target)).astype(np.int64)))
    table = table.append_column("level", pa.array(np.array(["low", "mid", "high"])[
        np.digitize(target, np.quantile(target, [1 / 3, 2 / 3]))]))
    table = table.append_column("rare", pa.array((target > np.quantile(target, 0.9)).astype(np.int64)))
    pq.write_table(table, root / "raw.parquet")
    for label, task in (("target", "regression"), ("above", "binary"), ("level", "multiclass"), ("rare", "binary")):
        assert main(["features", "--config", str(write_config(root / label, root / "raw.parquet", label, task))]) == 0
    return root


def write_config(out: Path, data: Path, label: str = "target", task: str = "regression", **train) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    config = {"data": {"path": str(data)}, "label": label, "task": task, "features": FEATURES,
              "output": str(out), "train": {"batch_size": 256, "epochs": 2, "hidden_units": [16], "learning_rate": 0.01, **train}}
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    return out / "config.yaml"


def training_run(features_root: Path, tmp_path: Path, name: str, label: str = "target", task: str = "regression",
                 **train) -> PipelineConfig:
    """A config whose output already holds the shared features."""
    out = tmp_path / name
    shutil.copytree(features_root / label / "features", out / "features")
    return PipelineConfig.from_yaml(write_config(out, features_root / "raw.parquet", label, task, **train))


@pytest.fixture(autouse=True)
def importable_repo(monkeypatch):
    """Workers are `python -m tf_train` subprocesses: they must import this checkout."""
    repo = str(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))


def fresh_raw_rows(seed: int) -> pa.Table:
    """New rows: unseen categories (Zipf tail), missing scores, words outside the vocabulary."""
    return with_missing_scores(synthetic_table(400, seed=seed, categories=5000), seed=seed)


def checkpoint_values(saved_model: Path) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(str(saved_model / "variables" / "variables"))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def test_two_workers_compute_the_same_update_as_one(features_root, tmp_path):
    runs = {}
    for workers in (1, 2):
        config = training_run(features_root, tmp_path, f"w{workers}", seed=5)
        launch(config, workers=workers)
        runs[workers] = config.layout
    one, two = (checkpoint_values(committed(runs[w]).saved_model_dir) for w in (1, 2))
    assert one.keys() == two.keys()
    kernels = [k for k in one if "kernel" in k and "OPTIMIZER_SLOT" not in k]
    assert kernels, sorted(one)
    for key in one:
        if one[key].dtype.kind == "f":
            np.testing.assert_allclose(one[key], two[key], atol=1e-4, err_msg=key)
    # the same model: the same predictions on fresh raw rows, through the exported signature
    manifest = ModelManifest.read(runs[1].model_manifest_path)
    inputs = tf_inputs(serving_inputs(fresh_raw_rows(seed=41), manifest))
    predictions = [tf.saved_model.load(str(committed(runs[w]).saved_model_dir)).signatures["serving_default"](**inputs)
                   ["prediction"].numpy() for w in (1, 2)]
    np.testing.assert_allclose(predictions[0], predictions[1], rtol=1e-4, atol=1e-4)
    assert np.isfinite(predictions[0]).all()
    history = json.loads(committed(runs[2]).metrics_path.read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["loss"] < history[0]["loss"]
    assert history[1]["eval_loss"] < history[0]["eval_loss"]
    # the logged training loss is over every worker's rows (all-reduced at the epoch's end), not worker 0's
    one_worker = json.loads(committed(runs[1]).metrics_path.read_text())["history"]
    np.testing.assert_allclose([h["loss"] for h in history], [h["loss"] for h in one_worker], rtol=1e-5)


def test_local_sgd_on_one_worker_is_synchronous_training(features_root, tmp_path):
    """train.sync_every k on one worker: k optimizer steps per round, each on its own batch, and nothing to
    average: the weights of synchronous training (the epoch's steps a multiple of k here)."""
    weights = {}
    for every in (1, 4):
        config = training_run(features_root, tmp_path, f"every{every}", seed=5, sync_every=every)
        data = load_training_data(config)
        assert steps_per_epoch(data, data.batch_size) % 4 == 0
        launch(config, workers=1)
        weights[every] = checkpoint_values(committed(config.layout).saved_model_dir)
    assert weights[1].keys() == weights[4].keys()
    for key, value in weights[1].items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(weights[4][key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_local_sgd_on_two_pinned_workers_trains_one_model(features_root, tmp_path):
    """2 workers, each pinned to a core of its own, sync_every 4: each takes 4 steps on its own batches between
    averages, so the weights are not synchronous training's, yet the workers end with one model (the run
    checks every worker's weights against their mean) that is about as good for as many optimizer steps (each
    worker's steps take a whole batch, so an epoch has half the steps: twice the epochs)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("pinning 2 workers needs 2 cores")
    runs, logs = {}, {}
    for every in (1, 4):
        config = training_run(features_root, tmp_path, f"pinned-every{every}", seed=5, epochs=4 * (1 + (every > 1)),
                              sync_every=every)
        out = io.StringIO()
        launch(config, workers=2, out=out, pin=True)
        runs[every], logs[every] = config.layout, out.getvalue()
    cores = sorted(os.sched_getaffinity(0))
    for index in (0, 1):
        assert re.search(rf"\[worker {index}\] .*on core\(s\) {cores[index]}$", logs[4], re.M), logs[4]
    assert "weights averaged every 4 steps" in logs[4] and "weights averaged" not in logs[1]
    synchronous, local = (checkpoint_values(committed(runs[every]).saved_model_dir) for every in (1, 4))
    kernels = [k for k in synchronous if "kernel" in k and "OPTIMIZER_SLOT" not in k]
    assert max(float(np.max(np.abs(synchronous[k] - local[k]))) for k in kernels) > 1e-3
    metrics = {every: json.loads(committed(runs[every]).metrics_path.read_text()) for every in (1, 4)}
    assert metrics[4]["fitting"]["sync_every"] == 4 and metrics[4]["fitting"]["workers"] == 2
    r2 = {every: metrics[every]["eval"]["r2"] for every in (1, 4)}
    assert r2[4] > 0.5 and abs(r2[4] - r2[1]) < 0.05, r2


def test_validation_rows_are_every_kth_row_of_each_shard_and_never_trained_on(features_root, tmp_path):
    data = load_training_data(training_run(features_root, tmp_path, "holdout", validation_fraction=0.25))
    assert data.validation_every == 4
    reader, label = shard_reader(data), data.manifest.label_key
    held = []
    for index, file in enumerate(data.train_files):
        rows = pq.read_table(file).column(label).to_numpy()
        validation = np.concatenate([b[label].numpy() for b in reader.batches([file], 64, validation=True)])
        np.testing.assert_array_equal(validation, rows[::4])
        # one epoch of the training stream (sub-batches of 1 row): every other row once, shuffled
        fitted = [i for i in range(len(rows)) if i % 4]
        stream = [b[label].numpy()[0] for b in reader.train_batches([file], [index], [1]).take(len(fitted))]
        np.testing.assert_array_equal(np.sort(stream), np.sort(rows[fitted]))
        assert stream != rows[fitted].tolist()
        again = [b[label].numpy()[0] for b in reader.train_batches([file], [index], [1]).take(len(fitted))]
        assert again == stream  # seeded: the same stream whichever worker reads the shard
        held.append(rows[::4])
    # Two input pipelines (workers) each read the validation rows of their own shards: together, each row once.
    want = target(tf.constant(np.concatenate(held)), data.label).numpy()
    got = [y.numpy() for pipeline in (0, 1) for _, y in validation_dataset(data, pipeline, 2)]
    np.testing.assert_array_equal(np.sort(np.concatenate(got)), np.sort(want))
    assert data.train_rows == data.manifest.rows["train"] - data.manifest.rows["train"] // 4


def test_tfrecord_shards_give_the_model_the_same_inputs_and_train(features_root, tmp_path):
    """output_format: tfrecord: the same transformed rows reach the model as from Parquet (eval rows joined by
    their unique target), and a run trains on them."""
    parquet = load_training_data(training_run(features_root, tmp_path, "from-parquet"))
    config_path = write_config(tmp_path / "tfrecord", features_root / "raw.parquet")
    config_path.write_text(yaml.safe_dump({**yaml.safe_load(config_path.read_text()), "output_format": "tfrecord"}))
    assert main(["features", "--config", str(config_path)]) == 0
    config = PipelineConfig.from_yaml(config_path)
    tfrecord = load_training_data(config)
    assert tfrecord.manifest.format == "tfrecord" and tfrecord.train_files[0].endswith(".tfrecord.gz")

    def inputs_by_label(data):
        rows = {}
        for inputs, labels in labelled_batches(data, data.eval_files, 128):
            for i, y in enumerate(labels.numpy()):
                rows[float(y)] = {k: v.numpy()[i] for k, v in inputs.items()}
        return rows

    from_parquet, from_tfrecord = inputs_by_label(parquet), inputs_by_label(tfrecord)
    assert from_parquet.keys() == from_tfrecord.keys() and len(from_parquet) == parquet.manifest.rows["eval"]
    for y, row in from_parquet.items():
        for name, value in row.items():
            other = from_tfrecord[y][name]
            if name == "comment":  # token ids: padded to the longest row of each batch
                value, other = value[value != -1], other[other != -1]
            np.testing.assert_array_equal(value, other, err_msg=name)
    launch(config, workers=1)
    assert json.loads(committed(config.layout).metrics_path.read_text())["fitting"]["epochs"] == 2


def test_the_default_batch_gives_a_small_table_enough_steps(features_root, tmp_path):
    assert [default_batch_size(n) for n in (100, 192, 1_857, 2_140, 43_000, 10**7)] == [16, 16, 32, 64, 256, 256]
    data = load_training_data(training_run(features_root, tmp_path, "batch", batch_size=None))
    assert data.batch_size == default_batch_size(data.train_rows) == 64


def test_two_workers_stop_early_together_and_keep_the_best_epoch(features_root, tmp_path):
    """A high learning rate on 3,000 rows overfits within a few epochs: both workers stop at the same epoch
    (one stopping alone would fail the run: its peer would wait in a collective for a worker that has left),
    and the exported model is the best epoch's, not the last one's."""
    config = training_run(features_root, tmp_path, "stop", epochs=40, patience=2, learning_rate=0.05, seed=3)
    launch(config, workers=2)
    metrics = json.loads(committed(config.layout).metrics_path.read_text())
    fitting, history = metrics["fitting"], metrics["history"]
    assert fitting["epochs"] == len(history) < 40, fitting
    validation = [h["validation_loss"] for h in history]
    assert fitting["kept_epoch"] == int(np.argmin(validation)) + 1 < fitting["epochs"]
    # the kept weights are the best epoch's: their eval loss is that epoch's, not the last epoch's
    assert fitting["eval_loss"] == pytest.approx(history[fitting["kept_epoch"] - 1]["eval_loss"], rel=1e-5)
    assert fitting["eval_loss"] != pytest.approx(history[-1]["eval_loss"], rel=1e-5)


def test_balanced_class_weights_raise_the_recall_of_a_rare_class(features_root, tmp_path):
    runs = {}
    for weight in ("none", "balanced"):
        runs[weight] = training_run(features_root, tmp_path, f"rare-{weight}", label="rare", task="binary", epochs=4,
                                    class_weight=weight)
        launch(runs[weight], workers=1)
    data = load_training_data(runs["balanced"])
    counts = np.bincount(label_reader(data.manifest).labels(data.train_files).astype(np.int64))
    assert counts[1] < counts[0] / 5
    assert data.label.class_weights == pytest.approx(tuple(counts.sum() / (2 * counts)))
    recall = {}
    for weight, config in runs.items():
        kept = pq.read_table(committed(config.layout).eval_predictions_path).to_pandas()
        rare = kept["label_index"].to_numpy() == 1
        recall[weight] = float((np.stack(kept["probabilities"][rare])[:, 1] > 0.5).mean())
    assert recall["balanced"] > recall["none"] + 0.1, recall


def test_export_takes_raw_columns_and_matches_the_trained_model(features_root, tmp_path):
    """The serving signature (transform inside) agrees with the model fed the feature stage's own eval records."""
    config = training_run(features_root, tmp_path, "export", epochs=10, seed=2)
    launch(config, workers=1)
    layout = config.layout
    manifest = ModelManifest.read(layout.model_manifest_path)
    assert manifest.outputs == ("prediction",) and manifest.label == "target" and manifest.classes is None
    assert manifest.inputs["score"] == RawColumn("score", "float", nullable=True)
    assert manifest.inputs["comment"] == RawColumn("comment", "string", nullable=False)
    assert set(manifest.inputs) == set(FEATURES) and "tensorflow_transform" in manifest.versions
    assert any(path.startswith("saved_model/variables/") for path in manifest.checksums)
    metrics = json.loads(committed(layout).metrics_path.read_text())
    assert metrics["task"] == "regression" and set(metrics["eval"]) == {"r2", "rmse", "mae", "rows"}
    assert metrics["eval"]["r2"] > 0.7, metrics
    assert not layout.backup_dir.exists()

    # Raw eval rows through the signature give the metrics the trainer computed on transformed records.
    raw = pq.read_table(features_root / "raw.parquet")
    eval_targets = decode_split(layout.features_dir, "eval")["target"]
    index = {v: i for i, v in enumerate(raw.column("target").to_numpy().astype(np.float32))}  # as in the records
    rows = raw.take([index[v] for v in eval_targets])
    serve = tf.saved_model.load(str(committed(layout).saved_model_dir)).signatures["serving_default"]
    prediction = serve(**tf_inputs(serving_inputs(rows, manifest)))["prediction"].numpy()
    y = rows.column("target").to_numpy()
    r2 = 1 - ((y - prediction) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert r2 == pytest.approx(metrics["eval"]["r2"], abs=1e-4)

    # The eval rows kept for the report: the same labels and predictions, and the linear baseline's next to them.
    kept = pq.read_table(committed(layout).eval_predictions_path).to_pandas()
    np.testing.assert_allclose(kept["label"], eval_targets, rtol=1e-6)
    np.testing.assert_allclose(kept["prediction"], prediction, rtol=1e-4, atol=1e-4)
    # The baseline fitted again here, from the shards by another path (decode_split, numpy, Ridge on the label as
    # it is): the predictions it wrote, joined by the eval row's unique target, and the R^2 it reported. Sparse,
    # as the baseline fits it: the same solver (sparse_cg, tol 1e-4); the two agree to ~1e-6 of the spread, and
    # leaving any one feature out of the design moves them by more than 0.2 of it.
    import scipy.sparse as sp
    from sklearn.linear_model import Ridge

    x_train, y_train, _ = baseline_design(layout, "train")
    x_eval, _, eval_label = baseline_design(layout, "eval")
    ridge = Ridge(alpha=1.0).fit(sp.csr_matrix(x_train), y_train)
    reference = dict(zip(eval_label.tolist(), ridge.predict(sp.csr_matrix(x_eval))))
    want = np.array([reference[v] for v in kept["label"].to_numpy(np.float32).tolist()])
    spread = float(np.std(y))
    np.testing.assert_allclose(kept["baseline_prediction"], want, rtol=1e-4, atol=1e-4 * spread)
    assert metrics["baseline"]["model"] == "Ridge"
    assert metrics["baseline"]["r2"] == pytest.approx(r2_score(kept["label"], want), abs=1e-4)
    assert 0.3 < metrics["baseline"]["r2"] < 1.0, metrics


def r2_score(y, prediction) -> float:
    y, prediction = np.asarray(y, np.float64), np.asarray(prediction, np.float64)
    return float(1 - ((y - prediction) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def baseline_design(layout, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, label in float64, label as stored) of a split's shards: numbers and vectors as they are, ids one-hot,
    token ids counted; the baseline's design, built without its code."""
    from tfbridge.contracts import FeatureKind, FeaturesManifest

    outputs = FeaturesManifest.read(layout.features_manifest_path).outputs
    decoded = decode_split(layout.features_dir, split)
    n = len(decoded["target"])
    parts = []
    for name, output in outputs.items():
        if output.kind in (FeatureKind.NUMBER, FeatureKind.VECTOR):
            parts.append(np.asarray(decoded[name], np.float64).reshape(n, -1))
            continue
        counts = np.zeros((n, output.width))
        rows = decoded[name] if output.kind == FeatureKind.TOKEN_IDS else np.asarray(decoded[name]).reshape(n, 1)
        for i, ids in enumerate(rows):
            assert ((ids >= 0) & (ids < output.width)).all(), (name, ids)
            np.add.at(counts[i], ids, 1)
        parts.append(counts)
    return np.hstack(parts), decoded["target"].astype(np.float64), decoded["target"]


@pytest.mark.parametrize("label,task,classes", [("above", "binary", (0, 1)),
                                                ("level", "multiclass", ("high", "low", "mid"))])
def test_classification_exports_labels_and_probabilities(features_root, tmp_path, label, task, classes):
    config = training_run(features_root, tmp_path, task, label=label, task=task, epochs=6)
    launch(config, workers=1)
    manifest = ModelManifest.read(config.layout.model_manifest_path)
    assert manifest.classes == classes and manifest.outputs == ("label", "probabilities")
    everything = json.loads(committed(config.layout).metrics_path.read_text())
    metrics, base = everything["eval"], everything["baseline"]
    assert set(metrics) == {"accuracy", "auc", "log_loss", "rows"}
    assert metrics["accuracy"] > 0.6 and metrics["auc"] > 0.75, metrics
    assert base["model"] == "LogisticRegression" and base["rows"] == metrics["rows"] and base["auc"] > 0.6, base
    kept = pq.read_table(committed(config.layout).eval_predictions_path).to_pandas()
    p_base = np.stack(kept["baseline_probabilities"].to_numpy())
    assert p_base.shape == (metrics["rows"], len(classes)) and np.allclose(p_base.sum(axis=1), 1, atol=1e-6)
    accuracy = (np.stack(kept["probabilities"].to_numpy()).argmax(axis=1) == kept["label_index"]).mean()
    assert accuracy == pytest.approx(metrics["accuracy"], abs=1e-9)

    # The report of this run (no export, no scores yet): ROC and calibration, or confusion matrices, both models.
    from tfbridge.report import build_report

    report = build_report(config)
    assert config.layout.report_dir / "predictions.png" in report.images and report.html.exists()
    assert report.results["hand_offs"] == [] and report.results["metrics"]["baseline"] == base
    serve = tf.saved_model.load(str(committed(config.layout).saved_model_dir)).signatures["serving_default"]
    feeds = serving_inputs(fresh_raw_rows(seed=8), manifest)
    out = serve(**tf_inputs(feeds))
    p = out["probabilities"].numpy()
    assert p.shape == (400, len(classes)) and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    got = out["label"].numpy()
    expected = np.array(classes)[p.argmax(axis=1)]
    assert [v.decode() if isinstance(v, bytes) else v for v in got] == expected.tolist()

    # the ONNX export returns the same labels and probabilities
    export_onnx(config)
    onnx_label, onnx_p = onnx_session(committed(config.layout).onnx_path).run(["label", "probabilities"], feeds)
    np.testing.assert_allclose(onnx_p, p, atol=1e-5)
    assert [v.decode() if isinstance(v, bytes) else v for v in onnx_label] == expected.tolist()


class LauncherProcess:
    """`tfbridge train --verbose` as a user runs it (the workers' lines on the terminal), its merged output read
    line by line."""

    def __init__(self, config: Path, workers: int, retries: int):
        script = os.path.join(os.path.dirname(sys.executable), "tfbridge")
        command = [script, "train", "--config", str(config), "--workers", str(workers), "--retries", str(retries),
                   "--verbose"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=os.environ.copy())
        self.lines: list[str] = []
        self.pids: dict[int, int] = {}
        self._timer = threading.Timer(600, self.process.kill)  # hard limit
        self._timer.start()

    def wait_for(self, pattern: str) -> re.Match:
        for line in self.process.stdout:
            self.lines.append(line)
            started = re.search(r"worker (\d+) started, pid (\d+)", line)
            if started:
                self.pids[int(started.group(1))] = int(started.group(2))
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"never saw {pattern!r}; output:\n{''.join(self.lines[-60:])}")

    def finish(self) -> tuple[int, str]:
        rest = self.process.stdout.read()
        code = self.process.wait()
        self._timer.cancel()
        return code, "".join(self.lines) + rest


def epoch_lines(output: str, worker: int) -> list[int]:
    return [int(m) for m in re.findall(rf"\[worker {worker}\].*: epoch (\d+)/", output)]


def test_killed_worker_is_restarted_and_training_resumes_from_the_backup(features_root, tmp_path):
    epochs = 6  # of about 1 s each at this batch size: the kill lands inside epoch 3
    config = training_run(features_root, tmp_path, "fault", epochs=epochs, seed=9, batch_size=32)
    run = LauncherProcess(Path(config.source), workers=2, retries=1)
    run.wait_for(r"\[worker 1\].*: epoch 2/")
    os.kill(run.pids[1], signal.SIGKILL)
    code, output = run.finish()
    assert code == 0, output[-5000:]
    assert "worker 1 exited with -9; restarting all 2 workers from the last backup (retry 1 of 1)" in output
    before, after = output.split("restarting all 2 workers")
    assert epoch_lines(after, 0)[0] == 3, after  # resumed after epoch 2, not from scratch
    assert epoch_lines(after, 0)[-1] == epochs
    interrupted = json.loads(committed(config.layout).metrics_path.read_text())
    assert [h["epoch"] for h in interrupted["history"]] == list(range(1, epochs + 1))

    reference = training_run(features_root, tmp_path, "uninterrupted", epochs=epochs, seed=9, batch_size=32)
    launch(reference, workers=2)
    uninterrupted = json.loads(committed(reference.layout).metrics_path.read_text())
    # The data iterator restarts with the workers, so the runs differ slightly; quality must not.
    assert interrupted["eval"]["r2"] == pytest.approx(uninterrupted["eval"]["r2"], abs=0.03)
    assert uninterrupted["eval"]["r2"] > 0.7


def test_a_dead_worker_without_retries_stops_the_others_and_names_itself(features_root, tmp_path):
    config = training_run(features_root, tmp_path, "fail", epochs=50)
    run = LauncherProcess(Path(config.source), workers=2, retries=0)
    run.wait_for(r"\[worker 1\].*: epoch 1/")
    os.kill(run.pids[1], signal.SIGKILL)
    code, output = run.finish()
    assert code == 1
    assert "tfbridge: error: worker 1 exited with -9 and no retry is left; its last lines:" in output
    assert re.search(r"epoch 1/50", output.split("its last lines:")[1])
    with pytest.raises(ProcessLookupError):
        os.kill(run.pids[0], 0)  # worker 0 was stopped too
    assert not config.layout.model_manifest_path.exists()
    assert not [p for p in config.layout.model_dir.local.iterdir() if p.name.startswith("attempt-")]


def test_bad_inputs_stop_before_any_worker_starts(features_root, tmp_path, capsys):
    # no feature-stage output
    config = write_config(tmp_path / "none", features_root / "raw.parquet")
    assert main(["train", "--config", str(config)]) == 2
    assert "no feature-stage manifest" in capsys.readouterr().err
    # a label the feature stage did not read
    run = training_run(features_root, tmp_path, "label")
    raw = yaml.safe_load(Path(run.source).read_text())
    raw["label"] = "price"
    Path(run.source).write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", run.source]) == 2
    assert "made for label 'target'" in capsys.readouterr().err
    # multiclass on a continuous label
    run = training_run(features_root, tmp_path, "continuous")
    with pytest.raises(DataError, match=r"label 'target'.* is continuous .*multiclass needs class ids"):
        load_training_data(PipelineConfig.from_dict({**yaml.safe_load(Path(run.source).read_text()),
                                                     "task": "multiclass"}))
    # more workers than shard files
    with pytest.raises(DataError, match="9 workers but 8 training shards"):
        launch(run, workers=9)
    assert not run.layout.model_dir.exists()
    # a shard file changed since the feature stage wrote it, then one with no row to train on
    run = training_run(features_root, tmp_path, "changed")
    first = committed(run.layout).transformed_dir / FeaturesManifest.read(run.layout.features_manifest_path).files["train"][0].name
    first.write_bytes(first.read_bytes() + b"\0")
    with pytest.raises(DataError, match=rf"{first.name} is missing or is not the file the features stage wrote"):
        load_training_data(run)
    run = training_run(features_root, tmp_path, "tiny-shard")
    manifest = json.loads(run.layout.features_manifest_path.read_text())
    manifest["files"]["train"][3]["rows"] = 1  # as a train split of a few dozen rows leaves it
    run.layout.features_manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=rf"{manifest['files']['train'][3]['name']} has no rows to train on \(1 rows, every "
                                        r"10th held out for validation\): each of the 8 train shard files needs"):
        load_training_data(run)
