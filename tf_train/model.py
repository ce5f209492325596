"""The tf_keras model built from the transformed features, and its raw-features export.

One input per transformed feature: numbers and vectors go in as they are
(numbers, if asked, through a learned periodic embedding), ids through an
embedding, token ids through a mean-pooled embedding. The
concatenation feeds `train.hidden_units` ReLU layers (none: a linear model on
the same inputs, since an embedding followed by a linear layer is linear in the
one-hot ids) and a head per task. No batch normalisation or dropout: the update
must not depend on how a global batch is split over workers.

The export wraps TFT's transform layer and the model in one tf.Module whose
serving signature takes the RAW columns, one tensor [batch] each, and returns
predictions in label units.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras

from tfbridge.contracts import FeatureKind, FeatureOutput, FeaturesManifest, TrainConfig, graph_input_name
from tf_train.data import LabelSpec, model_inputs
from tf_train.shards import PAD_ID, tf_dtype


DENSE_GRADIENT_MAX_ROWS = 65536
PERIODIC_FREQUENCIES, PERIODIC_DIM, PERIODIC_SIGMA = 16, 16, 0.1  # on z-scored numbers (the paper's ranges)
# A periodic embedding reads numbers within this bound (beyond it, as at it). Far out, one float32 ulp of the
# number is a sizeable fraction of a turn: a raw 3e20 through box_cox gave ONNX and TF predictions 1.8% apart
# when the two engines' float64 log rounded to neighbouring float32 values. At 1e4 an ulp is 1e-3.
PERIODIC_BOUND = 1e4


def embedding_dim(width: int, config: TrainConfig) -> int:
    return config.embedding_dim or min(16, max(2, math.ceil(1.6 * width ** 0.56)))


class IdEmbedding(tf_keras.layers.Layer):
    """Embeds ids in [0, width); any other id (e.g. -1 for a vocabulary with no OOV bucket) gets its own row.

    The rows of a vocabulary's unseen values (its OOV buckets, or that row) are trained on rows that the input
    pipeline gives their ids (tf_train.data.unseen_ids_in_training), not left at their random initial values."""

    def __init__(self, width: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.width, self.dim = width, dim
        self.embedding = tf_keras.layers.Embedding(width + 1, dim)

    def build(self, input_shape):
        self.embedding.build(input_shape)
        super().build(input_shape)

    def call(self, ids):
        valid = tf.logical_and(ids >= 0, ids < self.width)
        table = self.embedding.embeddings
        if self.width <= DENSE_GRADIENT_MAX_ROWS:
            # Through a multiply the table's gradient is dense: it joins the one packed all-reduce
            # of the other gradients, where sparse slices need all-gathers per table (2 workers
            # here: 41K -> 75K examples/s).
            table = table * 1.0
        return tf.gather(table, tf.where(valid, ids, self.width))

    def get_config(self):
        return {**super().get_config(), "width": self.width, "dim": self.dim}


class PooledEmbedding(IdEmbedding):
    """Mean of the embeddings of a row's token ids ([batch, tokens], padded with PAD_ID); zeros for no tokens."""

    def call(self, ids):
        present = tf.expand_dims(tf.cast(tf.not_equal(ids, PAD_ID), tf.float32), -1)
        total = tf.reduce_sum(super().call(ids) * present, axis=1)
        return total / tf.maximum(tf.reduce_sum(present, axis=1), 1.0)


class PeriodicEmbedding(tf_keras.layers.Layer):
    """A number as ReLU(W [sin(2 pi c x), cos(2 pi c x)] + b) with k frequencies c learned from N(0, sigma):
    the "PLR" embedding of Gorishniy, Rubachev and Babenko (NeurIPS 2022). An MLP on such embeddings fits
    the sharp, non-monotone effects of a number that it misses on the z-scored value alone."""

    def __init__(self, frequencies: int, dim: int, sigma: float, **kwargs):
        super().__init__(**kwargs)
        self.frequencies, self.dim, self.sigma = frequencies, dim, sigma
        self.linear = tf_keras.layers.Dense(dim, activation="relu")

    def build(self, input_shape):
        self.coefficients = self.add_weight(
            name="coefficients", shape=(self.frequencies,),
            initializer=tf_keras.initializers.RandomNormal(stddev=self.sigma))
        self.linear.build((None, 2 * self.frequencies))
        super().build(input_shape)

    def call(self, x):
        turns = tf.expand_dims(tf.clip_by_value(x, -PERIODIC_BOUND, PERIODIC_BOUND), -1) * self.coefficients
        # sin(2 pi t) on the fraction of t alone: the same value, but an argument in [0, 2 pi) on which TF and
        # onnxruntime agree to an ulp. Their sin differ wildly far out (t = 1e17 from an extreme raw value).
        angles = 2 * math.pi * (turns - tf.floor(turns))
        return self.linear(tf.concat([tf.sin(angles), tf.cos(angles)], -1))

    def get_config(self):
        return {**super().get_config(), "frequencies": self.frequencies, "dim": self.dim, "sigma": self.sigma}


class ClassWeightedCrossentropy(tf_keras.losses.Loss):
    """The task's cross-entropy on logits, each row's times the weight of its class (`train.class_weight`).

    The weight comes from the target itself, so training, the validation loss that stops it and the
    eval loss curve all weigh rows alike, with no sample weights to carry through the input pipeline."""

    def __init__(self, task: str, class_weights, **kwargs):
        super().__init__(**kwargs)
        self.task, self.class_weights = task, tuple(float(w) for w in class_weights)

    def call(self, y_true, y_pred):
        classes = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        weight = tf.gather(tf.constant(self.class_weights, tf.float32), classes)
        if self.task == "binary":
            per_row = tf.nn.sigmoid_cross_entropy_with_logits(tf.cast(classes, tf.float32), tf.reshape(y_pred, [-1]))
        else:
            per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(classes, y_pred)
        return per_row * weight

    def get_config(self):
        return {**super().get_config(), "task": self.task, "class_weights": list(self.class_weights)}


STEPS_PER_CALL = 16  # training steps per call of the compiled step function (Keras' steps_per_execution)


class TrainingModel(tf_keras.Model):
    """A tf_keras Model whose training step runs one collective.

    Synchronous (sync_every 1): the gradients' all-reduce, then the update. Keras' own step also all-reduces
    the loss metric's total and count for the step's logs, then sums the step's outputs over the workers
    (distribute_reduction_method "auto"): three more collectives of one number each, every step. On 2 workers
    over loopback each costs about what the gradients' does (~1 ms; the step's compute at 512 rows per replica
    is ~2 ms), which made 2 workers slower than 1. Here a step's logs hold this worker's running loss, which no
    other worker needs; the epoch's loss over all workers' rows is all-reduced once, at the epoch's end
    (tf_train.worker.EpochLoss). The update is Keras' own: same loss scaling, gradient all-reduce and step.

    Local SGD (sync_every k > 1): a step gets k per-replica batches of batch_size rows ([k, batch, ...]); the
    worker takes k optimizer steps on them alone (each on its own batch's mean gradient), then the weights and
    the optimizer's moments are averaged over the workers: one collective per k batches. With one worker it is
    synchronous training, step for step."""

    sync_every = 1

    def train_step(self, data):
        if self.sync_every == 1:
            x, y, sample_weight = tf_keras.utils.unpack_x_y_sample_weight(data)
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(x, y, y_pred, sample_weight)
            self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        else:
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            for i in range(self.sync_every):
                x, y, sample_weight = tf_keras.utils.unpack_x_y_sample_weight(
                    tf.nest.map_structure(lambda t: t[i], data))
                with tf.GradientTape() as tape:
                    y_pred = self(x, training=True)
                    loss = self.compute_loss(x, y, y_pred, sample_weight) * replicas  # this worker's mean
                gradients = tape.gradient(loss, self.trainable_variables)
                self.optimizer.apply_gradients(zip(gradients, self.trainable_variables),
                                               skip_gradients_aggregation=True)
            self._average_over_workers()
        return {"loss": tf.math.divide_no_nan(*local_loss_sums(self))}

    def _average_over_workers(self):
        """Each worker's weights and optimizer moments replaced by their mean over the workers (one packed
        all-reduce). The variables' copies are per worker: assigned in a replica, each takes its own value."""
        variables = list(self.trainable_variables) + [
            v for v in self.optimizer.variables if v.dtype.is_floating and v.shape.rank]
        means = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN,
                                                               [v.read_value() for v in variables])
        for variable, mean in zip(variables, means):
            variable.assign(mean)


def local_loss_sums(model: tf_keras.Model) -> tuple[tf.Tensor, tf.Tensor]:
    """(loss summed over this epoch's rows so far, rows) on this worker: its replica's copy of the loss metric's
    variables (sync-on-read, so read in a replica or read per copy, not all-reduced)."""
    metric = model.compiled_loss.metrics[0]
    if tf.distribute.in_cross_replica_context():
        strategy = tf.distribute.get_strategy()
        return (sum(strategy.experimental_local_results(metric.total)),
                sum(strategy.experimental_local_results(metric.count)))
    return metric.total.read_value(), metric.count.read_value()


def build_model(features: dict[str, FeatureOutput], label: LabelSpec, config: TrainConfig) -> tf_keras.Model:
    inputs, parts = {}, []
    for feature, output in sorted(features.items()):
        name = graph_input_name(feature)  # a user's preprocessing_fn may name its outputs anything
        if output.kind == FeatureKind.NUMBER:
            inputs[name] = tf_keras.Input(shape=(), dtype=tf.float32, name=name)
            if config.numeric_embedding == "periodic":
                parts.append(PeriodicEmbedding(PERIODIC_FREQUENCIES, PERIODIC_DIM, PERIODIC_SIGMA,
                                               name=f"{name}_periodic")(inputs[name]))
            else:
                parts.append(tf_keras.layers.Reshape((1,), name=f"{name}_column")(inputs[name]))
        elif output.kind == FeatureKind.VECTOR:
            inputs[name] = tf_keras.Input(shape=(output.width,), dtype=tf.float32, name=name)
            parts.append(inputs[name])
        elif output.kind == FeatureKind.IDS:
            inputs[name] = tf_keras.Input(shape=(), dtype=tf.int64, name=name)
            layer = IdEmbedding(output.width, embedding_dim(output.width, config), name=f"{name}_embedding")
            parts.append(layer(inputs[name]))
        else:  # token_ids
            inputs[name] = tf_keras.Input(shape=(None,), dtype=tf.int64, name=name)
            layer = PooledEmbedding(output.width, embedding_dim(output.width, config), name=f"{name}_embedding")
            parts.append(layer(inputs[name]))
    x = tf_keras.layers.Concatenate(name="features")(parts) if len(parts) > 1 else parts[0]
    for i, units in enumerate(config.hidden_units):
        x = tf_keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")(x)
    if label.task == "multiclass":
        out = tf_keras.layers.Dense(len(label.classes), name="logits")(x)
    else:
        out = tf_keras.layers.Reshape((), name="output")(tf_keras.layers.Dense(1, name="logit")(x))
    model = TrainingModel(inputs, out)
    model.sync_every = config.sync_every
    model.distribute_reduction_method = "first"  # a step's outputs are this worker's: no sum over workers
    if label.class_weights:
        loss = ClassWeightedCrossentropy(label.task, label.class_weights)
    else:
        loss = {"regression": tf_keras.losses.MeanSquaredError(),
                "binary": tf_keras.losses.BinaryCrossentropy(from_logits=True),
                "multiclass": tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)}[label.task]
    model.compile(optimizer=tf_keras.optimizers.Adam(config.learning_rate), loss=loss,
                  steps_per_execution=STEPS_PER_CALL)
    return model


def predictions(raw_output: tf.Tensor, label: LabelSpec) -> dict[str, tf.Tensor]:
    """The model's output in label units: `prediction`, or `label` and `probabilities` per class."""
    if label.task == "regression":
        y = raw_output * label.std + label.mean
        return {"prediction": tf.exp(y) if label.transform == "log" else y}
    if label.task == "binary":
        p = tf.sigmoid(raw_output)
        probabilities = tf.stack([1.0 - p, p], axis=1)
    else:
        probabilities = tf.nn.softmax(raw_output, axis=1)
    classes = tf.constant(list(label.classes), tf.string if label.dtype == "string" else tf.int64)
    return {"label": tf.gather(classes, tf.argmax(probabilities, axis=1)), "probabilities": probabilities}


def output_names(label: LabelSpec) -> tuple[str, ...]:
    return ("prediction",) if label.task == "regression" else ("label", "probabilities")


def graph_inputs(manifest: FeaturesManifest) -> dict[str, str]:
    """Each raw input column's name in the serving signature (and so in the ONNX graph)."""
    return {name: manifest.input_names[name] for name in manifest.model_inputs}


class RawFeaturesModel(tf.Module):
    """TFT's transform layer and the trained model behind one signature on raw columns."""

    def __init__(self, features_dir: str, manifest: FeaturesManifest, features: dict[str, FeatureOutput],
                 model: tf_keras.Model, label: LabelSpec):
        super().__init__()
        self.transform = tft.TFTransformOutput(features_dir).transform_features_layer()
        self.model = model
        self._features, self._label = features, label
        # Keyed by graph input name: the user's column names need not be valid TF names.
        columns = manifest.model_inputs
        self._inputs = {graph_name: columns[name] for name, graph_name in graph_inputs(manifest).items()}
        signature = {name: tf.TensorSpec([None], tf_dtype(col.dtype), name=name)
                     for name, col in self._inputs.items()}
        self.serve = tf.function(self._serve, input_signature=[signature])

    def _serve(self, raw):
        transformed = self.transform({name: self._tft_input(name, x) for name, x in raw.items()})
        out = self.model(model_inputs(transformed, self._features), training=False)
        return predictions(out, self._label)

    def _tft_input(self, name: str, x: tf.Tensor):
        """A [batch] column as TFT reads it: [batch, 1] dense, or sparse without the missing values: "" for
        a string, NaN or ±inf for a number (tfbridge.contracts.model_numbers) or a timestamp, so the graph
        imputes them. A timestamp (float64 epoch seconds, model_timestamps) reaches TFT as int64 whole seconds,
        floored, as the feature stage gave them."""
        column = self._inputs[name]
        values = tf.cast(tf.floor(x), tf.int64) if column.dtype == "timestamp" else x  # a missing one is dropped
        if not column.nullable:
            return tf.expand_dims(values, 1)
        present = tf.not_equal(x, "") if x.dtype == tf.string else tf.math.is_finite(x)
        rows = tf.where(present)
        indices = tf.concat([rows, tf.zeros_like(rows)], axis=1)
        return tf.SparseTensor(indices, tf.boolean_mask(values, present), tf.stack([tf.shape(x, tf.int64)[0], 1]))


def save_raw_features_model(module: RawFeaturesModel, path: str) -> None:
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve.get_concrete_function()})
