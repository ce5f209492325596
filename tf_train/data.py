"""What training reads: the feature stage's shard files, checked, and the label made ready for a loss.

The shards are Parquet (read as columns with pyarrow, a row group at a time,
never the whole split) or gzipped tf.Example TFRecords (`output_format`);
`shard_reader(data)` reads either (tf_train.shards), and both give the model the same tensors.

The input pipeline gives every worker count the same global batches. Each
shard file is its own stream (its training rows: every k-th row is a
validation row instead, see validation_every; seeded shuffle, repeated) cut
into sub-batches; a worker takes the streams of the files it owns (file i goes
to input pipeline i mod P) and concatenates one sub-batch of each into its
per-replica batch. When P divides the shard count and the shard count divides
the global batch, global batch s holds the same rows for 1, 2, 4 or 8 workers,
so the update is the same: the single- vs multi-worker parity test relies on
it. A shard's shuffle is seeded by its index in the split, so it is the same
stream whichever worker reads it.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import tensorflow as tf

from tfbridge.contracts import (DataError, FeatureKind, FeatureOutput, FeaturesManifest, PipelineConfig,
                                TrainConfig, graph_input_name, graph_input_names)
from tf_train.shards import PAD_ID, READERS, ShardReader

log = logging.getLogger(__name__)

MAX_CLASSES = 1000
EVAL_BATCH = 8192
MIN_DEFAULT_BATCH, MAX_DEFAULT_BATCH = 16, 256
UNSEEN_RATE = 0.02  # of a vocabulary feature's training ids, given an unseen value's id (unseen_ids_in_training)


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """How the label becomes the training target, and how predictions go back to label units.

    regression: target = (f(label) - mean) / std with f = log or identity;
    binary / multiclass: target = index of the label in `classes` (sorted).
    """

    task: str
    dtype: str  # "float" | "int" | "string", as in the shard files
    transform: str
    mean: float = 0.0
    std: float = 1.0
    classes: tuple | None = None
    class_weights: tuple[float, ...] | None = None  # per class, in `classes` order (train.class_weight)


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The checked inputs of a training run."""

    manifest: FeaturesManifest
    features: dict[str, FeatureOutput]  # the model's inputs
    label: LabelSpec
    train_files: tuple[str, ...]
    eval_files: tuple[str, ...]
    validation_every: int = 0  # every k-th row of each train shard is a validation row; 0: none
    batch_size: int = 256  # global batch: train.batch_size, or chosen by the split's size (default_batch_size)

    @property
    def train_rows(self) -> int:
        return fitted_rows(int(self.manifest.rows["train"]), self.validation_every)


def load_training_data(config: PipelineConfig) -> TrainingData:
    """Everything a worker needs, checked before any worker starts: errors name the file and column."""
    layout = config.layout
    manifest = FeaturesManifest.read(layout.features_manifest_path)
    if manifest.label != config.label:
        raise DataError(f"{layout.features_manifest_path} was made for label '{manifest.label}', "
                        f"the config {config.source} says '{config.label}': rerun `tfbridge features`")
    if config.label not in manifest.raw_columns:
        raise DataError(f"label '{config.label}' is not among the columns the feature stage read "
                        f"({sorted(manifest.raw_columns)})")
    files = {split: manifest.shard_paths(layout.features_dir, split) for split in ("train", "eval")}
    if not files["train"]:
        raise DataError(f"{layout.features_manifest_path} names no transformed training shards: run "
                        f"`tfbridge features` first")
    features = {}
    for name, output in sorted(manifest.outputs.items()):
        if not output.kind.is_model_input:
            raise DataError(f"feature '{name}' ends as {output.kind} (strings), which a model cannot take: "
                            f"end its steps with a vocabulary, in {config.source}")
        if output.kind == FeatureKind.TOKEN_IDS and output.width is None:
            raise DataError(f"feature '{name}' holds lists of integer ids of unknown range: make them with a TFT "
                            f"vocabulary (or bucketize) so the model knows the range, in {config.source}")
        if output.kind == FeatureKind.IDS and output.width is None:
            log.warning("train: feature '%s' holds integer ids of unknown range: fed as a number", name)
            output = FeatureOutput(FeatureKind.NUMBER)
        features[name] = output
    if not features:
        raise DataError(f"{layout.features_manifest_path} lists no features for the model")
    graph_input_names(features, f"{layout.features_manifest_path}: transformed features")
    every = validation_every(config.train.validation_fraction)
    for file in manifest.files.get("train", ()):
        if file.rows <= (-(-file.rows // every) if every else 0):  # its rows 0, k, 2k, ... are validation rows
            raise DataError(f"{file.name} has no rows to train on ({file.rows} rows"
                            + (f", every {every}th held out for validation" if every else "")
                            + f"): each of the {len(files['train'])} train shard files needs some; the train "
                            f"split is too small for them")
    train_rows = fitted_rows(int(manifest.rows["train"]), every)
    batch_size = config.train.batch_size or default_batch_size(train_rows)
    if train_rows < batch_size:
        raise DataError(f"the train split has {train_rows} rows to fit on, fewer than train.batch_size "
                        f"{batch_size} in {config.source}")
    label = analyze_label(files["train"], manifest, config.task, config.train)
    return TrainingData(manifest, features, label, files["train"], files["eval"], every, batch_size)


def default_batch_size(train_rows: int) -> int:
    """The global batch when the config gives none: a power of two between MIN_DEFAULT_BATCH and
    MAX_DEFAULT_BATCH that makes at least ~32 steps per epoch. A small table then still gets enough updates
    per epoch, and the batch stays a multiple of the 8 shard files (the parity of 1 and 2 workers)."""
    target = max(1, train_rows // 32)
    return int(min(MAX_DEFAULT_BATCH, max(MIN_DEFAULT_BATCH, 2 ** int(math.log2(target)))))


def validation_every(fraction: float) -> int:
    """k such that every k-th row of a train shard (rows 0, k, 2k, ...) is a validation row; 0 for none.

    Chosen by position within each shard file, it is the same rows for any number of workers, and
    the training streams leave exactly those rows out."""
    return max(2, round(1 / fraction)) if fraction > 0 else 0


def fitted_rows(train_rows: int, every: int) -> int:
    """Rows of the train split the model is fitted on: all but about one in `every` (validation_every)."""
    return train_rows - (train_rows // every if every else 0)


def shard_reader(data: TrainingData) -> ShardReader:
    """The reader of this run's shards, in their format, for the model's features and the label."""
    outputs = data.manifest.outputs
    columns = {name: (outputs[name].kind, output.width) for name, output in data.features.items()}
    return READERS[data.manifest.format](columns, data.manifest.label_key, data.label.dtype, data.validation_every)


def label_reader(manifest: FeaturesManifest) -> ShardReader:
    dtype = manifest.raw_columns[manifest.label].dtype
    return READERS[manifest.format]({}, manifest.label_key, dtype, 0)


def analyze_label(train_files, manifest: FeaturesManifest, task: str, train: TrainConfig) -> LabelSpec:
    """One pass over the train split's labels: checks the task against them and fixes the target's scale."""
    name = manifest.label
    dtype = manifest.raw_columns[name].dtype
    values = label_reader(manifest).labels(train_files)
    where = f"label '{name}' (train split, {len(values)} rows)"
    if task == "regression":
        if dtype == "string":
            raise DataError(f"{where} holds strings; regression needs numbers (or set task: multiclass)")
        target = values.astype(np.float64)
        if train.label_transform == "log":
            if (target <= 0).any():
                raise DataError(f"{where} has values <= 0 (min {target.min()}); train.label_transform: log "
                                f"needs positive labels")
            target = np.log(target)
        std = float(target.std())
        return LabelSpec(task, dtype, train.label_transform, float(target.mean()), std if std > 0 else 1.0)
    if dtype != "string":
        if not np.all(np.isfinite(values)) or not np.all(np.equal(np.mod(values, 1), 0)):
            bad = values[~np.equal(np.mod(values, 1), 0)][:3]
            raise DataError(f"{where} is continuous (e.g. {bad.tolist()}); {task} needs class ids or strings "
                            f"(or set task: regression)")
        values = values.astype(np.int64)
    classes, counts = np.unique(values, return_counts=True)
    if task == "binary" and len(classes) != 2:
        raise DataError(f"{where} has {len(classes)} distinct values {classes[:5].tolist()}...; binary needs "
                        f"exactly 2")
    if task == "multiclass" and not 2 <= len(classes) <= MAX_CLASSES:
        raise DataError(f"{where} has {len(classes)} distinct values; multiclass takes 2 to {MAX_CLASSES}")
    if dtype == "string":
        classes = [c.decode() for c in classes]
    else:
        classes = [int(c) for c in classes]
    weights = balanced_weights(counts) if train.class_weight == "balanced" else None
    return LabelSpec(task, dtype, "none", classes=tuple(classes), class_weights=weights)


def balanced_weights(counts: np.ndarray) -> tuple[float, ...]:
    """rows / (classes x rows of the class), scikit-learn's "balanced": every class weighs as much in the loss."""
    return tuple(float(w) for w in counts.sum() / (len(counts) * counts))


def model_inputs(transformed: dict, features: dict[str, FeatureOutput]) -> dict:
    """Transformed tensors (read from the shards, or from the TFT layer) as the model's inputs.

    Token ids may come as a SparseTensor; the model takes them dense, padded with PAD_ID.
    Number features the manifest typed as ids of unknown range are cast to float. Keys are the
    features' graph input names, as the model's inputs are named.
    """
    out = {}
    for name, output in features.items():
        x = transformed[name]
        if output.kind == FeatureKind.TOKEN_IDS and isinstance(x, tf.SparseTensor):
            x = tf.sparse.to_dense(x, default_value=PAD_ID)
        elif output.kind == FeatureKind.NUMBER:
            x = tf.cast(x, tf.float32)
        out[graph_input_name(name)] = x
    return out


def target(labels: tf.Tensor, label: LabelSpec) -> tf.Tensor:
    """The label as the loss sees it (see LabelSpec)."""
    if label.task == "regression":
        y = tf.cast(labels, tf.float32)
        if label.transform == "log":
            y = tf.math.log(y)
        return (y - label.mean) / label.std
    keys = (tf.constant([str(c) for c in label.classes]) if label.dtype == "string"
            else tf.constant(list(label.classes), tf.int64))
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.range(len(label.classes), dtype=tf.int64)), default_value=-1)
    return table.lookup(labels if label.dtype == "string" else tf.cast(labels, tf.int64))


def sub_batches(batch_size: int, parts: int) -> list[int]:
    """batch_size split into `parts` sizes as equal as possible (the first ones larger)."""
    base, extra = divmod(batch_size, parts)
    return [base + (i < extra) for i in range(parts)]


def train_dataset(data: TrainingData, pipeline_id: int, num_pipelines: int, per_replica_batch: int,
                  seed: int) -> tf.data.Dataset:
    """The infinite stream of per-replica (features, target) batches of one input pipeline (see module doc)."""
    files = data.train_files[pipeline_id::num_pipelines]
    if not files:
        raise DataError(f"input pipeline {pipeline_id} of {num_pipelines} has no shard file "
                        f"({len(data.train_files)} shards): use at most {len(data.train_files)} workers")
    sizes = sub_batches(per_replica_batch, len(files))
    used = [(data.train_files.index(file), size) for file, size in zip(files, sizes) if size]
    batches = shard_reader(data).train_batches(files=[data.train_files[i] for i, _ in used],
                                               seeds=[seed + i for i, _ in used], sizes=[size for _, size in used])
    convert, show_unseen = batch_converter(data), unseen_ids_in_training(data.features, used, seed)
    return (batches.enumerate().map(lambda step, columns: show_unseen(step, *convert(columns)),
                                    num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


def stacked(dataset: tf.data.Dataset, count: int) -> tf.data.Dataset:
    """`count` consecutive batches as one ([count, batch, ...]), for local SGD's steps between averages; token
    ids padded to the longest of them with PAD_ID."""
    if count == 1:
        return dataset
    padding = tf.nest.map_structure(lambda spec: tf.constant(PAD_ID if spec.dtype.is_integer else 0, spec.dtype),
                                    dataset.element_spec)
    return dataset.padded_batch(count, padding_values=padding, drop_remainder=True).prefetch(2)


def unseen_ids_in_training(features: dict[str, FeatureOutput], files: list[tuple[int, int]], seed: int):
    """A map over (step, model inputs, target) that gives UNSEEN_RATE of each vocabulary feature's ids (a row's
    id, each of its tokens) the id of a value outside the vocabulary, one of its OOV ids at random.

    Without it a vocabulary that holds every training value (any low-cardinality column) never trains its OOV
    row, and a value first seen at scoring time is predicted from the row's random initial value: by the seed.
    Trained so, the row learns what a value of the column does on average (weighed by how often each occurs).
    Bucket ids have no unseen values (FeatureOutput.unseen_ids is None) and stay as they are; validation, eval
    and the export never pass here.

    The draws are stateless, keyed by (seed, shard file, step, feature): `files` are the batch's files in
    order, (index in the split, rows in the batch), so a row gets the same draw for any number of workers.
    """
    replaced = [(index, graph_input_name(name), output.unseen_ids)
                for index, (name, output) in enumerate(sorted(features.items()))
                if output.unseen_ids and output.kind in (FeatureKind.IDS, FeatureKind.TOKEN_IDS)]

    def draws(step, feature: int, ids):
        """Uniform [0, 1) per id, each file's rows from their own key. Token ids are drawn [tokens, rows] and
        transposed: a token's draw does not depend on how far the batch is padded (its widest row)."""
        parts = []
        for file, rows in files:
            key = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(tf.constant([seed, file], tf.int64), step), feature)
            if ids.shape.rank == 1:
                parts.append(tf.random.stateless_uniform([rows], key))
            else:
                parts.append(tf.transpose(tf.random.stateless_uniform([tf.shape(ids)[1], rows], key)))
        return tf.concat(parts, 0)

    def show_unseen(step, inputs, y):
        inputs = dict(inputs)
        for feature, name, (start, stop) in replaced:
            ids, draw = inputs[name], draws(step, feature, inputs[name])
            # draw / UNSEEN_RATE is uniform on [0, 1) where draw < UNSEEN_RATE: it picks the OOV id
            unseen = tf.minimum(start + tf.cast(draw / UNSEEN_RATE * (stop - start), tf.int64), stop - 1)
            inputs[name] = tf.where((draw < UNSEEN_RATE) & (ids >= 0), unseen, ids)  # PAD_ID stays
        return inputs, y

    return show_unseen


def batch_converter(data: TrainingData, raw_label: bool = False):
    """A batch read from the shards to (model inputs, target), or (model inputs, raw label)."""
    label = data.manifest.label_key

    def convert(columns):
        y = columns[label] if raw_label else target(columns[label], data.label)
        return model_inputs(columns, data.features), y

    return convert


def labelled_batches(data: TrainingData, files, batch_size: int = EVAL_BATCH) -> tf.data.Dataset:
    """Every row of `files` once, in file order: (model inputs, raw label)."""
    return shard_reader(data).batches(files, batch_size).map(batch_converter(data, raw_label=True)).prefetch(2)


def validation_dataset(data: TrainingData, pipeline_id: int, num_pipelines: int) -> tf.data.Dataset:
    """The validation rows of the shards input pipeline `pipeline_id` owns, once: (model inputs, target)."""
    files = list(data.train_files[pipeline_id::num_pipelines])
    return shard_reader(data).batches(files, EVAL_BATCH, validation=True).map(batch_converter(data)).prefetch(2)


def eval_dataset(data: TrainingData) -> tf.data.Dataset:
    """Every eval row once, in file order: (model inputs, raw label)."""
    return labelled_batches(data, data.eval_files)


def steps_per_epoch(data: TrainingData, global_batch: int) -> int:
    return max(1, data.train_rows // global_batch)


def describe(data: TrainingData) -> str:
    kinds = {}
    for output in data.features.values():
        kinds[output.kind] = kinds.get(output.kind, 0) + 1
    return (f"{data.train_rows:,} train rows in {len(data.train_files)} shards, "
            f"{sum(kinds.values())} features ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}), "
            f"{data.label.task} on '{data.manifest.label}'"
            + (f" ({len(data.label.classes)} classes)" if data.label.classes else "")
            + (f" ({data.label.transform})" if data.label.transform != "none" else "")
            + f"; batch {data.batch_size}, ~{math.ceil(data.train_rows / 1000)}K rows per epoch"
            + (f", every {data.validation_every}th train row held out for validation" if data.validation_every else ""))
