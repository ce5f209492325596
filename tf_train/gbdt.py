"""Gradient-boosted trees (`train.model: gbdt`): XGBoost on the transformed features, evaluated in TF for the export.

The trees are fitted on exactly what the network would get: the train split's shards through the same
readers (`tf_train.data`), whole files per worker with XGBoost's own collective across the workers of
TF_CONFIG's cluster (its tracker on the first worker's address), the same target (a regression label
standardized, a class as its index), the same validation rows held out, boosting stopped on their loss and
the best round kept (`xgboost.json` beside the SavedModel holds those trees as XGBoost saves them). XGBoost
reads one matrix of numbers: `FeatureMatrix` lays the features side by side (a number or an id as one
column, a vector as its columns, token ids as a count per id) and is the same TF code at training and at
serving, so a row meets the same splits in both.

`TreeEnsemble` evaluates the fitted trees as TF ops (every tree at once, one gather per level), giving what the
network gives (a raw output per row: the standardized regression value, the logit, the class logits), so
the raw-features SavedModel, its ONNX graph, the parity gate, Spark and the service take the trees as they
take the network. Before anything is saved, its outputs are held to XGBoost's own margins on every eval and
validation row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

import numpy as np
import tensorflow as tf

from tf_train import data as training_data
from tf_train.saving import commit_trained
from tf_train.shards import PAD_ID
from tfbridge.contracts import DataError, FeatureKind, FeatureOutput, PipelineConfig, TrainingError, graph_input_name
from tfbridge.contracts.layout import SAVED_MODEL, TREES_INPUT, TREES_OUTPUT, XGBOOST_COLUMNS, XGBOOST_MODEL

log = logging.getLogger(__name__)

OBJECTIVES = {"regression": ("reg:squarederror", "rmse"), "binary": ("binary:logistic", "logloss"),
              "multiclass": ("multi:softprob", "mlogloss")}
# XGBoost's margins against the TF trees: the same float32 splits, leaf sums in another order
AGREEMENT = 1e-5
MAX_BAG_WIDTH = 5_000  # token ids become a count per id: at most this many columns (tfidf's cap)
TRACKER_TIMEOUT_S = 600  # the workers' wait for one another (start, each collective), as the network's cluster


class FeatureMatrix:
    """The model inputs (`tf_train.data.model_inputs`) as one [batch, columns] float32 matrix, features in name
    order: a number or an id one column, a vector its `width` columns, token ids one column per id (its count
    in the row: the bag of words, which `tfidf` would weigh)."""

    def __init__(self, features: dict[str, FeatureOutput]):
        self.features = dict(sorted(features.items()))
        for name, output in self.features.items():
            if output.kind == FeatureKind.TOKEN_IDS and output.width > MAX_BAG_WIDTH:
                raise DataError(f"feature '{name}' holds token ids of {output.width:,} values, a column each for the "
                                f"trees; at most {MAX_BAG_WIDTH:,}: lower the vocabulary's top_k (or hash buckets) "
                                f"for train.model gbdt")

    @staticmethod
    def _width(output: FeatureOutput) -> int:
        return output.width if output.kind in (FeatureKind.VECTOR, FeatureKind.TOKEN_IDS) else 1

    @property
    def columns(self) -> list[str]:
        """Each column's name: the feature's, with [i] for a vector's i-th element or the count of token id i."""
        return [name if output.kind not in (FeatureKind.VECTOR, FeatureKind.TOKEN_IDS) else f"{name}[{i}]"
                for name, output in self.features.items() for i in range(self._width(output))]

    def __call__(self, inputs: dict) -> tf.Tensor:
        parts = []
        for name, output in self.features.items():
            x = inputs[graph_input_name(name)]
            if output.kind == FeatureKind.TOKEN_IDS:
                parts.append(id_counts(x, output.width))
            elif output.kind == FeatureKind.VECTOR:
                parts.append(tf.cast(x, tf.float32))
            else:
                parts.append(tf.expand_dims(tf.cast(x, tf.float32), 1))
        return tf.concat(parts, axis=1)


def id_counts(ids: tf.Tensor, width: int) -> tf.Tensor:
    """[batch, width] float32: how often each id in [0, width) is in each row of padded token ids [batch, tokens]
    (the padding and ids outside the range count nowhere): one segment sum over (row, id) cells."""
    rows = tf.cast(tf.shape(ids)[0], tf.int64)
    flat = tf.reshape(tf.cast(ids, tf.int64), [-1])
    row_of = tf.reshape(tf.repeat(tf.range(rows), tf.shape(ids)[1]), [-1])
    cells = tf.reshape(tf.where((flat >= 0) & (flat < width), row_of * width + flat, -1), [-1])
    counts = tf.math.unsorted_segment_sum(tf.ones_like(flat, tf.float32), cells, rows * width)
    return tf.reshape(counts, tf.stack([rows, width]))


class TreeEnsemble(tf.Module):
    """XGBoost's fitted trees as TF ops: model inputs to the raw output the network gives (module doc).

    Every tree is padded to the most nodes of any tree; a row's position in each tree starts at its root and
    goes down one level per step (left where the value is below the split, as XGBoost goes; a missing value
    the way XGBoost learned), staying put on a leaf. Multiclass trees take turns by class, as XGBoost fits them.
    """

    def __init__(self, booster, matrix: FeatureMatrix, task: str, classes: int, offset: np.ndarray):
        super().__init__()
        trees = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
        nodes = max(len(t["left_children"]) for t in trees)

        def padded(key: str, dtype, fill) -> np.ndarray:
            return np.stack([np.pad(np.asarray(t[key], dtype), (0, nodes - len(t[key])), constant_values=fill)
                             for t in trees])

        left, right = padded("left_children", np.int64, -1), padded("right_children", np.int64, -1)
        leaf = left < 0
        self._feature = np.where(leaf, 0, padded("split_indices", np.int64, 0))
        self._threshold = padded("split_conditions", np.float32, 0.0)  # a leaf's value, on a leaf
        self._left = np.where(leaf, np.arange(nodes), left)
        self._right = np.where(leaf, np.arange(nodes), right)
        self._missing = np.where(padded("default_left", np.int64, 0) == 1, self._left, self._right)
        self._leaf = leaf
        self._depth = max(_depth(t) for t in trees)
        self._nodes, self._trees = nodes, len(trees)
        self._matrix, self._task, self._classes = matrix, task, classes
        self._offset = offset.astype(np.float32)

    def __call__(self, inputs: dict, training: bool = False) -> tf.Tensor:
        # Named identities around the trees: the export replaces what lies between them by one TreeEnsembleRegressor
        # of the same trees (xgboost.json), onnxruntime's own tree kernel, instead of these gathers.
        x = _marked(self._matrix(inputs), TREES_INPUT)
        rows, width = tf.shape(x)[0], tf.shape(x)[1]
        flat_x = tf.reshape(x, [-1])
        base = tf.range(self._trees, dtype=tf.int64) * self._nodes  # each tree's first node in the flat arrays
        feature, threshold = tf.constant(self._feature.reshape(-1)), tf.constant(self._threshold.reshape(-1))
        left, right = tf.constant(self._left.reshape(-1)), tf.constant(self._right.reshape(-1))
        missing = tf.constant(self._missing.reshape(-1))
        node = tf.zeros(tf.stack([rows, self._trees]), tf.int64)  # [rows, trees], within each tree
        row_start = tf.expand_dims(tf.range(tf.cast(rows, tf.int64), dtype=tf.int64) * tf.cast(width, tf.int64), 1)
        for _ in range(self._depth):
            at = node + base
            value = tf.gather(flat_x, row_start + tf.gather(feature, at))
            below = value < tf.gather(threshold, at)
            step = tf.where(below, tf.gather(left, at), tf.gather(right, at))
            node = tf.where(tf.math.is_nan(value), tf.gather(missing, at), step)
        leaves = tf.gather(threshold, node + base)  # [rows, trees]
        if self._task == "multiclass":
            summed = tf.reduce_sum(tf.reshape(leaves, tf.stack([rows, -1, self._classes])), axis=1)
        else:
            summed = tf.reduce_sum(leaves, axis=1)
        return _marked(summed, TREES_OUTPUT) + (self._offset if self._task == "multiclass" else self._offset[0])


def _marked(x: tf.Tensor, name: str) -> tf.Tensor:
    """x through an identity op of that name (PreventGradient: no other op of a model is one), for the export."""
    return tf.raw_ops.PreventGradient(input=x, message="trees: not trained by gradient", name=name)


def between_values(booster, x: np.ndarray, workers: int = 1):
    """The booster with each split moved halfway between the two training values it separates (float32), which
    leaves every training row on its side.

    XGBoost's hist method splits at a training value (`x < v`), so a row holding exactly v, common where a
    feature has few values (a calendar part, a tf-idf weight, an id), sits on the edge: one float32 ulp between
    two engines' transforms (TF's sin against onnxruntime's) sent such a row down the other branch and moved
    its prediction by a whole leaf (measured: 1 of 189 rows of the export's parity gate). Halfway, it takes a
    difference of half the gap between two values to change a branch, as with scikit-learn's and LightGBM's
    trees."""
    import xgboost

    model = json.loads(booster.save_raw("json"))
    trees = model["learner"]["gradient_booster"]["model"]["trees"]
    values = [np.unique(x[:, j]) for j in range(x.shape[1])]
    splits = [(tree, node, np.float32(split)) for tree in trees
              for node, split in enumerate(tree["split_conditions"]) if tree["left_children"][node] >= 0]
    lows, highs = np.full(len(splits), -np.inf), np.full(len(splits), np.inf)
    for i, (tree, node, split) in enumerate(splits):
        seen = values[tree["split_indices"][node]]
        above = int(np.searchsorted(seen, split))  # this worker's first training value >= the split
        lows[i] = seen[above - 1] if above > 0 else -np.inf
        highs[i] = seen[above] if above < len(seen) else np.inf
    if workers > 1:  # the neighbours among every worker's rows: the same moved splits on every worker
        from xgboost import collective

        lows = collective.allreduce(lows, collective.Op.MAX)
        highs = collective.allreduce(highs, collective.Op.MIN)
    for (tree, node, _), low, high in zip(splits, lows, highs):
        if np.isfinite(low) and np.isfinite(high):
            middle = np.float32((low + high) / 2)
            tree["split_conditions"][node] = float(middle if np.float32(low) < middle <= np.float32(high) else high)
    moved = xgboost.Booster()
    moved.load_model(bytearray(json.dumps(model).encode()))
    return moved


def _depth(tree: dict) -> int:
    """Splits on the longest path from the root of one tree of XGBoost's JSON model."""
    left, right = tree["left_children"], tree["right_children"]
    deepest, stack = 0, [(0, 0)]
    while stack:
        node, depth = stack.pop()
        if left[node] < 0:
            deepest = max(deepest, depth)
        else:
            stack += [(left[node], depth + 1), (right[node], depth + 1)]
    return deepest


def read_split(data: training_data.TrainingData, matrix: FeatureMatrix, files, validation_every: int = 0):
    """(X, target, is_validation) of every row of `files`, in file order; a file's rows 0, k, 2k, ... are its
    validation rows (k = `validation_every`; 0: none), as the network's readers hold them out."""
    parts, targets, held = [], [], []
    convert = training_data.batch_converter(data)
    for file in files:
        position = 0
        for columns in training_data.shard_reader(data).batches([file], training_data.EVAL_BATCH):
            inputs, y = convert(columns)
            x = matrix(inputs).numpy()
            parts.append(x)
            targets.append(y.numpy())
            index = np.arange(position, position + len(x))
            held.append(index % validation_every == 0 if validation_every else np.zeros(len(x), bool))
            position += len(x)
    width = len(matrix.columns)
    if not parts:
        return np.zeros((0, width), np.float32), np.zeros(0), np.zeros(0, bool)
    return np.concatenate(parts), np.concatenate(targets), np.concatenate(held)


def cluster() -> tuple[int, int, str | None, int | None]:
    """(this worker's rank, workers, the first worker's host and port) from TF_CONFIG, as the launcher or a
    scheduler sets it for the network's workers; (0, 1, None, None) without it. The first worker runs XGBoost's
    tracker on its own address, which nothing else uses when the trees train."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0, 1, None, None
    spec = json.loads(raw)
    workers = list(spec["cluster"].get("chief", [])) + list(spec["cluster"].get("worker", []))
    rank = spec["task"]["index"] + (len(spec["cluster"].get("chief", [])) if spec["task"]["type"] == "worker" else 0)
    host, _, port = workers[0].rpartition(":")
    return rank, len(workers), host, int(port)


@contextlib.contextmanager
def collective_of(rank: int, workers: int, host: str | None, port: int | None):
    """XGBoost's collective over the workers (its tracker on the first, which waits for every worker), or nothing
    for one worker: inside it, xgboost.train builds one model from every worker's rows."""
    if workers == 1:
        yield
        return
    from xgboost import collective
    from xgboost.tracker import RabitTracker

    tracker = None
    if rank == 0:
        tracker = RabitTracker(workers, host, port=port, sortby="task", timeout=TRACKER_TIMEOUT_S)
        tracker.start()
    with collective.CommunicatorContext(dmlc_tracker_uri=host, dmlc_tracker_port=port, dmlc_task_id=str(rank),
                                        dmlc_retry=30, dmlc_timeout=TRACKER_TIMEOUT_S):
        yield
    if tracker is not None:
        tracker.wait_for()


def run_gbdt(config: PipelineConfig) -> None:
    """Fits the trees on this worker's share of the train shards, with XGBoost's collective across the workers
    (TF_CONFIG's cluster), and the first worker commits them as the raw-features model
    (tf_train.saving.commit_trained)."""
    import xgboost

    train, settings = config.train, config.train.gbdt
    data = training_data.load_training_data(config)
    matrix = FeatureMatrix(data.features)
    rank, workers, host, port = cluster()
    name = f"worker {rank}" if workers > 1 else "gbdt"
    log.info("train: %s: %s; %d columns; %d of %d worker(s)", name, training_data.describe(data),
             len(matrix.columns), rank + 1, workers)
    # Whole shard files per worker, as the network's input pipelines take them.
    x, y, held = read_split(data, matrix, data.train_files[rank::workers], data.validation_every)
    x_eval, y_eval, _ = read_split(data, matrix, data.eval_files[rank::workers])
    label = data.label
    known = y >= 0 if label.task != "regression" else np.ones(len(y), bool)  # a class the train split lacks: -1
    weights = (np.asarray(label.class_weights)[np.where(known, y, 0).astype(np.int64)]
               if label.class_weights else None)

    def dmatrix(features, target, subset, weight=None):
        return xgboost.DMatrix(features[subset], label=target[subset],
                               weight=None if weight is None else weight[subset])

    fit, validation = dmatrix(x, y, ~held & known, weights), dmatrix(x, y, held & known, weights)
    objective, metric = OBJECTIVES[label.task]
    params = {"objective": objective, "eval_metric": metric, "tree_method": "hist", "max_depth": settings.max_depth,
              "eta": settings.learning_rate, "seed": train.seed, "nthread": 0,
              "base_score": 0.5 if label.task != "regression" else 0.0}
    if label.task == "multiclass":
        params["num_class"] = len(label.classes)
    # Every worker names the same evaluation sets (XGBoost sums each metric over the workers), a worker without
    # rows of one giving it empty.
    validating = data.validation_every > 0
    evals = [(fit, "train")] + ([(validation, "validation")] if validating else [])
    eval_known = y_eval >= 0 if label.task != "regression" else np.ones(len(y_eval), bool)
    if data.eval_files and int(data.manifest.rows.get("eval", 0)):
        evals.append((dmatrix(x_eval, y_eval, eval_known), "eval"))
    curves: dict = {}
    start = time.perf_counter()
    with collective_of(rank, workers, host, port):
        booster = xgboost.train(params, fit, num_boost_round=settings.trees, evals=evals, evals_result=curves,
                                early_stopping_rounds=settings.patience if validating else None, verbose_eval=False)
        rounds = booster.num_boosted_rounds()
        kept = booster.best_iteration + 1 if validating else rounds
        booster = between_values(booster[:kept], x[~held & known], workers)
    seconds = time.perf_counter() - start
    log.info("train: %s: %d rounds (kept %d) in %.1f s", name, rounds, kept, seconds)
    if rank != 0:
        log.info("train: %s done", name)
        return

    classes = len(label.classes) if label.task == "multiclass" else 1
    ensemble = TreeEnsemble(booster, matrix, label.task, classes, _offset(booster, x, classes, matrix))
    _check_agreement(booster, ensemble, np.concatenate([x_eval, x[held]]), classes, matrix)

    def loss(split: str, i: int):
        values = curves.get(split, {}).get(metric)
        return None if values is None else float(values[i]) ** (2 if metric == "rmse" else 1)

    history = [{"epoch": i + 1, "loss": loss("train", i), "validation_loss": loss("validation", i),
                "eval_loss": loss("eval", i)} for i in range(rounds)]
    fitted_rows = data.train_rows  # every worker's
    fitting = {"model": "gbdt", "epochs": rounds, "batch_size": fitted_rows,
               "validation_every": data.validation_every, "kept_epoch": kept, "workers": workers, "sync_every": 1,
               "examples_per_s": float(fitted_rows * rounds / max(seconds, 1e-9)), "trees": kept * classes}
    committed = commit_trained(config, data, ensemble, True, fitting, lambda: history,
                               lambda: loss("eval", kept - 1), {"xgboost": xgboost.__version__},
                               {XGBOOST_MODEL: bytes(booster.save_raw("json")),
                                XGBOOST_COLUMNS: json.dumps(matrix.columns).encode()})
    metrics, attempt = committed
    log.info("train: gbdt exported %s; eval %s", attempt / SAVED_MODEL, json.dumps(metrics["eval"]))


def _as_inputs(x: np.ndarray, matrix: FeatureMatrix) -> dict:
    """A matrix back as model inputs (its columns in `FeatureMatrix` order), to run the TF trees on it."""
    inputs, at = {}, 0
    for name, output in matrix.features.items():
        width = FeatureMatrix._width(output)
        part = x[:, at:at + width]
        if output.kind == FeatureKind.TOKEN_IDS:  # counts back as padded ids: id i repeated count times
            counts = part.astype(np.int64)
            longest = max(1, int(counts.sum(axis=1).max())) if len(counts) else 1
            ids = np.full((len(counts), longest), PAD_ID, np.int64)
            for row, row_counts in enumerate(counts):
                tokens = np.repeat(np.arange(width), row_counts)
                ids[row, :len(tokens)] = tokens
            inputs[graph_input_name(name)] = ids
        else:
            inputs[graph_input_name(name)] = part if output.kind == FeatureKind.VECTOR else part[:, 0]
        at += width
    return inputs


def _margins(booster, x: np.ndarray) -> np.ndarray:
    import xgboost

    return booster.predict(xgboost.DMatrix(x), output_margin=True)


def _offset(booster, x: np.ndarray, classes: int, matrix: FeatureMatrix) -> np.ndarray:
    """XGBoost's margin beyond the sum of the leaves (its base score, by class): measured on a few rows, since its
    JSON states it in the objective's units, which differ by objective and version."""
    sample = x[:64]
    zero = TreeEnsemble(booster, matrix, "multiclass" if classes > 1 else "regression", classes,
                        np.zeros(classes, np.float32))
    leaves = zero(_as_inputs(sample, matrix)).numpy()
    return np.asarray(np.median(_margins(booster, sample).reshape(len(sample), -1) - leaves.reshape(len(sample), -1),
                                axis=0)) if len(sample) else np.zeros(classes)


def _check_agreement(booster, ensemble: TreeEnsemble, x: np.ndarray, classes: int, matrix: FeatureMatrix) -> None:
    """The TF trees against XGBoost's own margins on `x` (eval and validation rows): TrainingError beyond
    AGREEMENT (relative to the margins' spread), naming the largest difference."""
    if not len(x):
        return
    want = _margins(booster, x).reshape(len(x), -1)
    got = ensemble(_as_inputs(x, matrix)).numpy().reshape(len(x), -1)
    difference = np.abs(got - want)
    scale = max(1.0, float(np.abs(want).max()))
    if difference.max() > AGREEMENT * scale:
        row = int(np.argmax(difference.max(axis=1)))
        raise TrainingError(f"the trees evaluated in TF differ from XGBoost's by {difference.max():.3g} (row {row} "
                            f"of {len(x)}: {got[row].tolist()} against {want[row].tolist()}): not saved")
    log.info("train: gbdt: TF trees equal XGBoost's margins on %d rows within %.2g", len(x), difference.max())
