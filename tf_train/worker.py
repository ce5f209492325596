"""One training worker: what `python -m tf_train --config C` runs on each host.

The cluster comes from TF_CONFIG (set by the embedded launcher, Kubernetes,
Slurm or by hand); without it this is a one-worker cluster. Every worker
builds the same model from the same seed, reads its share of the shard files,
trains synchronously under MultiWorkerMirroredStrategy (RING collectives on
CPU, NCCL when GPUs are visible), backs up at every epoch end (where every
worker of a restarted cluster finds it, on any host: tf_train.backup) and,
after the last epoch, saves the raw-features model: every worker must take part in the
save (it runs collectives), each into a temporary directory (TensorFlow writes
no object store). The chief then sends its export, metrics.json and the eval
predictions to a new attempt under the output's model/ (local disk or a store)
and writes the model manifest, which commits them (tf_train.saving).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras

from tf_train import data as training_data
from tf_train import model as training_model
from tf_train import saving
from tf_train.backup import SendBackup, StoreBackups
from tfbridge.contracts import PipelineConfig, TrainingError, fingerprints, write_json_atomic
from tfbridge.contracts.layout import SAVED_MODEL

log = logging.getLogger(__name__)

HISTORY_FILE = ".history.json"  # under model/: per-epoch loss, kept across restarts
EVAL_LOSS_BATCHES = 8  # the eval loss per epoch is over at most this many eval batches (65,536 rows)
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


def worker_count(strategy) -> int:
    tasks = strategy.cluster_resolver.cluster_spec().as_dict()
    return sum(len(tasks.get(kind, ())) for kind in ("chief", "worker")) or 1


def worker_name(strategy) -> str:
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type or 'worker'} {resolver.task_id or 0}"


def run_worker(config: PipelineConfig) -> None:
    strategy = make_strategy()
    chief, name, workers = is_chief(strategy), worker_name(strategy), worker_count(strategy)
    train = config.train
    data = training_data.load_training_data(config)
    log.info("train: %s: %s; %d replica(s) in sync%s, on core(s) %s", name, training_data.describe(data),
             strategy.num_replicas_in_sync,
             f", weights averaged every {train.sync_every} steps" if train.sync_every > 1 else "",
             ",".join(str(c) for c in sorted(os.sched_getaffinity(0))))
    tf_keras.utils.set_random_seed(train.seed)
    sync_every, replicas = train.sync_every, strategy.num_replicas_in_sync
    # Local SGD: every replica's steps take batch_size rows, as one worker's do (a step's time here is mostly
    # fixed cost: at half the rows it took nearly as long), so N replicas read N batches per step; an epoch is
    # whole rounds of sync_every steps, enough for the split's rows (the stream repeats).
    step_rows = data.batch_size if sync_every == 1 else data.batch_size * replicas
    steps = -(-training_data.steps_per_epoch(data, step_rows) // sync_every)

    pipeline = {}

    def dataset_fn(context: tf.distribute.InputContext):
        pipeline.update(id=context.input_pipeline_id, count=context.num_input_pipelines)
        batches = training_data.train_dataset(data, context.input_pipeline_id, context.num_input_pipelines,
                                              context.get_per_replica_batch_size(step_rows), train.seed)
        return training_data.stacked(batches, sync_every)

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    with strategy.scope():
        model = training_model.build_model(data.features, data.label, train)
    layout = config.layout
    layout.training_dir.mkdir(parents=True, exist_ok=True)
    history_path = layout.training_dir / HISTORY_FILE
    # On local disk every worker restores the one backup directory under the output; on a store each its own
    # copy of the backup the chief sends there (tf_train.backup).
    store = None if layout.root.is_local else StoreBackups(
        layout, fingerprints.model_fingerprint(config, data.manifest.fingerprint))
    backup_dir = layout.backup_dir if store is None else store.local_dir(name)
    if store is not None:
        resumed = store.restore(backup_dir, history_path if chief else None)
        if resumed is not None:
            log.info("train: %s: resuming from the backup in %s after epoch %d", name, store.root, resumed)
    eval_batches = training_data.eval_dataset(data).take(EVAL_LOSS_BATCHES)  # built once: no retracing per epoch
    history = EpochLog(name, train.epochs, steps * sync_every * step_rows, history_path,
                       (lambda: eval_loss(model, data.label, eval_batches)) if chief else None)
    all_reduced_sum = all_reducer(strategy)
    callbacks = [EpochLoss(all_reduced_sum), tf_keras.callbacks.BackupAndRestore(str(backup_dir))]
    stopping = None
    if data.validation_every:
        stopping = tf_keras.callbacks.EarlyStopping("val_loss", patience=train.patience, restore_best_weights=True)
        callbacks += [
            ValidationLoss(all_reduced_sum, training_data.validation_dataset(data, pipeline["id"], pipeline["count"]),
                           data.label.task),
            stopping,
            tf_keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.5, patience=max(1, train.patience // 3),
                                                 min_lr=train.learning_rate / 64)]
    sending = [SendBackup(store, backup_dir, history_path)] if store is not None and chief else []
    fitted = model.fit(dataset, epochs=train.epochs, steps_per_epoch=steps, verbose=0,
                       callbacks=[*callbacks, history, *sending])
    fitting = {"epochs": fitted.epoch[-1] + 1 if fitted.epoch else train.epochs, "batch_size": data.batch_size,
               "validation_every": data.validation_every,
               "kept_epoch": stopping.best_epoch + 1 if stopping else train.epochs,
               "workers": workers,
               "sync_every": sync_every, "examples_per_s": history.examples_per_s()}
    if stopping and stopping.stopped_epoch:
        log.info("train: %s: stopped after epoch %d of %d (no better validation loss in %d epochs); kept epoch %d",
                 name, fitting["epochs"], train.epochs, train.patience, fitting["kept_epoch"])

    check_workers_agree(model, all_reduced_sum, workers, name)
    committed = saving.commit_trained(config, data, model, chief, fitting, history.losses,
                                      lambda: eval_loss(model, data.label, eval_batches),
                                      {"tf_keras": tf_keras.__version__})
    if committed is None:
        shutil.rmtree(backup_dir, ignore_errors=True)
        log.info("train: %s done", name)
        return
    history_path.unlink(missing_ok=True)
    shutil.rmtree(backup_dir, ignore_errors=True)
    if store is not None:
        store.remove()
    metrics, attempt = committed
    log.info("train: %s exported %s; eval %s", name, attempt / SAVED_MODEL, json.dumps(metrics["eval"]))


AGREEMENT = 1e-6  # the most any weight may differ from the workers' mean, relative to the largest weight


def check_workers_agree(model, all_reduced_sum, workers: int, name: str) -> None:
    """Stops the run unless this worker's weights are every worker's: the export is the chief's copy, and
    a worker that drifted (a local step not averaged, a worker computing apart) would go unseen. One
    all-reduce of the weights; every worker runs it and raises alike."""
    if workers == 1:
        return
    local = np.concatenate([w.numpy().ravel() for w in model.trainable_weights]).astype(np.float64)
    mean = all_reduced_sum(local) / workers
    drift = float(np.max(np.abs(local - mean)))
    if drift > AGREEMENT * max(1.0, float(np.max(np.abs(mean)))):
        raise TrainingError(f"{name}: after training its weights differ from the {workers} workers' mean by up to "
                            f"{drift:.3g} (at most {AGREEMENT:g} allowed): the workers did not train one model")


def summed_loss(model, task: str, batches) -> tuple[float, int]:
    """(the training loss summed over the rows of (inputs, target) batches, rows); rows of classes unseen in
    training (target -1) left out."""
    total, rows = 0.0, 0
    for inputs, y in batches:
        out = model(inputs, training=False)
        if task != "regression":
            known = y >= 0
            y, out = tf.boolean_mask(y, known), tf.boolean_mask(out, known)
        if task != "multiclass":
            y = tf.cast(y, tf.float32)
        count = int(tf.shape(y)[0])
        if count:
            total += float(model.loss(y, out)) * count
            rows += count
    return total, rows


def eval_loss(model, label: training_data.LabelSpec, eval_batches) -> float | None:
    """The training loss on eval batches (inputs, raw label), for the report's loss curve."""
    batches = ((inputs, training_data.target(raw_label, label)) for inputs, raw_label in eval_batches)
    total, rows = summed_loss(model, label.task, batches)
    return total / rows if rows else None


def all_reducer(strategy):
    """A function summing a float64 vector over every worker: one collective, which every worker must call."""

    @tf.function
    def all_reduced_sum(values):
        # With several replicas on a worker each adds the worker's sums: every ratio of two sums is unchanged.
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(values,)), axis=None)

    return lambda values: all_reduced_sum(tf.constant(values, tf.float64)).numpy()


class EpochLoss(tf_keras.callbacks.Callback):
    """Puts the epoch's training loss over every worker's rows into the epoch's logs as `loss` (each worker
    sums its own rows, the sums are all-reduced once: tf_train.model.TrainingModel keeps the steps free of it)."""

    def __init__(self, all_reduced_sum):
        super().__init__()
        self._all_reduced_sum = all_reduced_sum

    def on_epoch_end(self, epoch, logs=None):
        total, rows = self._all_reduced_sum([float(v) for v in training_model.local_loss_sums(self.model)])
        if logs is not None and rows > 0:
            logs["loss"] = total / rows


class ValidationLoss(tf_keras.callbacks.Callback):
    """Puts the loss on the validation rows into each epoch's logs as `val_loss`, for early stopping and the
    learning-rate plateau. Each worker sums the loss over its own shards' validation rows and the sums are
    all-reduced, so every worker reads the same number and they stop, or lower the rate, at the same epoch
    (a worker deciding alone would leave the others waiting in a collective)."""

    def __init__(self, all_reduced_sum, batches: tf.data.Dataset, task: str):
        super().__init__()
        self._batches, self._task = batches, task
        self._all_reduced_sum = all_reduced_sum

    def on_epoch_end(self, epoch, logs=None):
        total, rows = self._all_reduced_sum(summed_loss(self.model, self._task, self._batches))
        if logs is not None and rows > 0:
            logs["val_loss"] = total / rows


class EpochLog(tf_keras.callbacks.Callback):
    """Logs each epoch on every worker; the chief also computes the eval loss and keeps both per epoch in a file
    that survives restarts (and that `tfbridge` reads for its progress bar)."""

    def __init__(self, worker: str, epochs: int, examples_per_epoch: int, path: Path, eval_loss=None):
        super().__init__()
        self._worker, self._epochs, self._examples = worker, epochs, examples_per_epoch
        self._path, self._eval_loss, self._chief = path, eval_loss, eval_loss is not None
        self._loss: dict[int, dict] = {}
        self._rates: list[float] = []
        self._start = self._last_step = 0.0

    def on_train_begin(self, logs=None):
        if self._chief and self._path.exists():
            self._loss = {int(k): v for k, v in json.loads(self._path.read_text()).items()}

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last_step = time.perf_counter()  # the epoch's time excludes its backup

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = float(logs.get("loss", float("nan")))
        validation = logs.get("val_loss")
        seconds = self._last_step - self._start
        self._rates.append(self._examples / max(seconds, 1e-9))
        log.info("train: %s: epoch %d/%d loss %.5f%s (%.1f s, %s examples/s)", self._worker, epoch + 1,
                 self._epochs, loss, "" if validation is None else f" validation {validation:.5f}", seconds,
                 f"{self._rates[-1]:,.0f}")
        if self._chief:
            self._loss[epoch + 1] = {"loss": loss, "validation_loss": None if validation is None else float(validation),
                                     "eval_loss": self._eval_loss()}
            write_json_atomic(self._loss, self._path)

    def examples_per_s(self) -> float:
        """Training examples per second over this run's epochs, the first left out when there are more (it
        traces the step function)."""
        rates = self._rates[1:] or self._rates
        return float(np.median(rates)) if rates else 0.0

    def losses(self) -> list[dict]:
        return [{"epoch": epoch, **losses} for epoch, losses in sorted(self._loss.items())]
