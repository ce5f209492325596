"""One training worker: what `python -m tf_train --config C` runs on each host.

The cluster comes from TF_CONFIG (set by the embedded launcher, Kubernetes,
Slurm or by hand); without it this is a one-worker cluster. Every worker
builds the same model from the same seed, reads its share of the shard files,
trains synchronously under MultiWorkerMirroredStrategy (RING collectives on
CPU, NCCL when GPUs are visible), backs up at every epoch end and, after the
last epoch, saves the raw-features model: every worker must take part in the
save (it runs collectives), non-chief workers into a temporary directory they
delete. The chief then renames its export into place and writes
metrics.json and the model manifest.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras

from tf_train import data as training_data
from tf_train import metrics as quality
from tf_train import model as training_model
from tfbridge.contracts import ModelManifest, PipelineConfig, file_sha256, staged, write_json_atomic

log = logging.getLogger(__name__)

HISTORY_FILE = ".history.json"  # under model/: per-epoch loss, kept across restarts
PACK_BYTES = 32 << 20  # gradients all-reduced in packs up to this size, not one collective per variable


def make_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """Must run before any other TF op: the strategy reads TF_CONFIG when it is created."""
    gpus = tf.config.list_physical_devices("GPU")
    implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL if gpus
                      else tf.distribute.experimental.CommunicationImplementation.RING)
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=implementation, bytes_per_pack=PACK_BYTES))


def is_chief(strategy) -> bool:
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def worker_name(strategy) -> str:
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type or 'worker'} {resolver.task_id or 0}"


def run_worker(config: PipelineConfig) -> None:
    strategy = make_strategy()
    chief, name = is_chief(strategy), worker_name(strategy)
    train = config.train
    data = training_data.load_training_data(config)
    log.info("train: %s: %s; %d replica(s) in sync", name, training_data.describe(data), strategy.num_replicas_in_sync)
    tf_keras.utils.set_random_seed(train.seed)
    steps = training_data.steps_per_epoch(data, train.batch_size)

    def dataset_fn(context: tf.distribute.InputContext):
        return training_data.train_dataset(data, context.input_pipeline_id, context.num_input_pipelines,
                                           context.get_per_replica_batch_size(train.batch_size), train.seed)

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    with strategy.scope():
        model = training_model.build_model(data.features, data.label, train)
    layout = config.layout
    layout.model_dir.mkdir(parents=True, exist_ok=True)
    history = EpochLog(name, train.epochs, steps * train.batch_size, layout.model_dir / HISTORY_FILE, chief)
    model.fit(dataset, epochs=train.epochs, steps_per_epoch=steps, verbose=0,
              callbacks=[tf_keras.callbacks.BackupAndRestore(str(layout.backup_dir)), history])

    module = training_model.RawFeaturesModel(str(layout.features_dir), data.manifest, data.features, model,
                                             data.label)
    if not chief:
        with tempfile.TemporaryDirectory(prefix="tfbridge-nonchief-export-") as target:
            training_model.save_raw_features_model(module, target)
        log.info("train: %s done", name)
        return
    with staged(layout.saved_model_dir) as target:
        training_model.save_raw_features_model(module, str(target))
        metrics = {"task": data.label.task, "eval": evaluate(model, data), "history": history.losses()}
    write_json_atomic(metrics, layout.metrics_path)
    ModelManifest(
        inputs=data.manifest.model_inputs,
        input_names=training_model.graph_inputs(data.manifest),
        outputs=training_model.output_names(data.label),
        label=data.manifest.label,
        task=data.label.task,
        classes=data.label.classes,
        label_transform=data.label.transform,
        versions={**data.manifest.versions, "tf_keras": tf_keras.__version__},
        checksums=checksums(layout.model_dir, layout.saved_model_dir),
    ).write(layout.model_manifest_path)
    (layout.model_dir / HISTORY_FILE).unlink(missing_ok=True)
    shutil.rmtree(layout.backup_dir, ignore_errors=True)
    log.info("train: %s exported %s; eval %s", name, layout.saved_model_dir, json.dumps(metrics["eval"]))


class EpochLog(tf_keras.callbacks.Callback):
    """Logs each epoch on every worker; the chief keeps the per-epoch loss in a file that survives restarts."""

    def __init__(self, worker: str, epochs: int, examples_per_epoch: int, path: Path, chief: bool):
        super().__init__()
        self._worker, self._epochs, self._examples = worker, epochs, examples_per_epoch
        self._path, self._chief = path, chief
        self._loss: dict[int, float] = {}
        self._start = self._last_step = 0.0

    def on_train_begin(self, logs=None):
        if self._chief and self._path.exists():
            self._loss = {int(k): v for k, v in json.loads(self._path.read_text()).items()}

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last_step = time.perf_counter()  # the epoch's time excludes its backup

    def on_epoch_end(self, epoch, logs=None):
        loss = float((logs or {}).get("loss", float("nan")))
        seconds = self._last_step - self._start
        log.info("train: %s: epoch %d/%d loss %.5f (%.1f s, %s examples/s)", self._worker, epoch + 1,
                 self._epochs, loss, seconds, f"{self._examples / max(seconds, 1e-9):,.0f}")
        if self._chief:
            self._loss[epoch + 1] = loss
            write_json_atomic(self._loss, self._path)

    def losses(self) -> list[dict]:
        return [{"epoch": epoch, "loss": loss} for epoch, loss in sorted(self._loss.items())]


def evaluate(model, data: training_data.TrainingData) -> dict:
    """Quality on every row of the eval split, in label units (empty when the split is)."""
    if not data.eval_files or not int(data.manifest.rows.get("eval", 0)):
        return {}
    label = data.label
    outputs, labels = [], []
    for inputs, raw_label in training_data.eval_dataset(data):
        out = training_model.predictions(model(inputs, training=False), label)
        outputs.append({k: v.numpy() for k, v in out.items()})
        labels.append(raw_label.numpy())
    y = np.concatenate(labels)
    if label.task == "regression":
        return quality.regression_metrics(y, np.concatenate([o["prediction"] for o in outputs]))
    probabilities = np.concatenate([o["probabilities"] for o in outputs])
    index = {c: i for i, c in enumerate(label.classes)}
    keys = [v.decode() for v in y] if label.dtype == "string" else [int(v) for v in y]
    y_index = np.array([index.get(k, -1) for k in keys])
    known = y_index >= 0
    if not known.all():
        log.warning("train: %d eval rows have a label unseen in training; left out of the metrics",
                    int((~known).sum()))
    return quality.classification_metrics(y_index[known], probabilities[known])


def checksums(root: Path, directory: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): file_sha256(path)
            for path in sorted(p for p in directory.rglob("*") if p.is_file())}
