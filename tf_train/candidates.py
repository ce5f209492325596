"""`train.model: [network, gbdt]` (and `train.numeric_embedding: [none, periodic]`, a network of each): each model
trained in turn on the same shards, target and validation rows, and the one with the lowest validation loss kept.

Each model commits as it would alone (tf_train.saving), the later ones leaving the earlier ones' attempts in
place; then the manifest is written again, naming the kept model's files, each candidate's record
(ModelManifest.candidates) and the fingerprint of the whole comparison; the other attempts are then removed. A run
stopped between two models reuses, when run again, the last one committed if it is still up to date.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from typing import Callable

from tfbridge.contracts import (DataError, FeatureKind, FeatureOutput, ModelManifest, PipelineConfig, TrainConfig,
                               TrainedCandidate, fingerprints, named_attempts)
from tfbridge.contracts.layout import METRICS
from tfbridge.storage.attempts import remove_uncommitted

log = logging.getLogger(__name__)


def distinct_candidates(train: TrainConfig, features: dict[str, FeatureOutput]) -> tuple[TrainConfig, ...]:
    """`train.candidates` less the networks that would be another one again: a periodic embedding acts on number
    features only, so without any `network (periodic)` is `network` (the same layers, the same seed)."""
    if any(output.kind == FeatureKind.NUMBER for output in features.values()):
        return train.candidates
    distinct = tuple(one for one in train.candidates if one.model != "network" or one.numeric_embedding == "none")
    if len(distinct) < len(train.candidates):
        log.info("train: no number features, so %s would equal network: not trained",
                 ", ".join(one.candidate_name for one in train.candidates if one not in distinct))
    return distinct or train.candidates


def train_candidates(config: PipelineConfig, candidates: tuple[TrainConfig, ...], features_fingerprint: str,
                     train_one: Callable[[PipelineConfig, tuple[str, ...]], object]) -> TrainedCandidate:
    """Trains each model of `candidates` (of `config.train.candidates`, named by their `candidate_name`) with
    `train_one(config naming it, attempts to leave)`, and commits the best as the model; returns its record."""
    layout = config.layout
    trained: list[tuple[TrainedCandidate, ModelManifest]] = []
    for train in candidates:
        single, name = dataclasses.replace(config, train=train), train.candidate_name
        committed = _committed(config)
        if committed is not None and committed.fingerprint == fingerprints.model_fingerprint(single,
                                                                                            features_fingerprint):
            log.info("train: %s was committed by an earlier run and is up to date: reused", name)
            seconds = None
        else:
            start = time.perf_counter()
            train_one(single, tuple(manifest.attempt for _, manifest in trained))
            seconds = time.perf_counter() - start
            committed = ModelManifest.read(layout.model_manifest_path)
        metrics = json.loads(committed.file(layout.model_dir, METRICS).read_text())
        trained.append((candidate_record(name, metrics, seconds), committed))
        log.info("train: %s: validation loss %s", name, trained[-1][0].validation_loss)
    # Without validation rows (a table too small to hold any) nothing tells them apart: the first is kept.
    kept, manifest = min(trained, key=lambda pair: (pair[0].validation_loss is None, pair[0].validation_loss or 0))
    # One model trained (the others would have been it again) is no comparison: the manifest records none.
    records = tuple(dataclasses.replace(record, kept=record is kept) for record, _ in trained) if len(trained) > 1 \
        else ()
    dataclasses.replace(manifest, onnx=None, candidates=records,
                        fingerprint=fingerprints.model_fingerprint(config, features_fingerprint),
                        ).write(layout.model_manifest_path)
    with contextlib.suppress(OSError):  # committed: what is left is the next writer's to remove
        remove_uncommitted(layout.model_dir, named_attempts(layout.model_manifest_path))
    log.info("train: kept %s, the lowest validation loss of %s", kept.model,
             ", ".join(f"{record.model} {record.validation_loss}" for record, _ in trained))
    return kept


def candidate_record(name: str, metrics: dict, seconds: float | None) -> TrainedCandidate:
    """A trained model's record from its metrics.json: the validation loss of the epoch (or round) it kept."""
    kept = metrics["fitting"]["kept_epoch"]
    loss = next(entry["validation_loss"] for entry in metrics["history"] if entry["epoch"] == kept)
    return TrainedCandidate(model=name, validation_loss=None if loss is None else float(loss), kept_epoch=kept,
                            eval=metrics.get("eval", {}), seconds=seconds)


def _committed(config: PipelineConfig) -> ModelManifest | None:
    try:
        return ModelManifest.read(config.layout.model_manifest_path)
    except (OSError, ValueError, KeyError, TypeError, DataError):
        return None
