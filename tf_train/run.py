"""One training process (`python -m tf_train --config C`): by `train.model`, a worker of the network's cluster
(tf_train.worker) or the gradient-boosted trees (tf_train.gbdt, one process). Several models to choose from are
trained in turn by the launcher (`tfbridge train`), which compares them (tf_train.candidates)."""

from __future__ import annotations

from tfbridge.contracts import ConfigError, PipelineConfig


def run_training(config: PipelineConfig) -> None:
    if len(config.train.candidates) > 1:
        names = [train.candidate_name for train in config.train.candidates]
        raise ConfigError(f"{config.source}: 'train' names several models ({', '.join(names)}): a worker trains "
                          f"one; `tfbridge train` trains each in turn and keeps the best, or start this cluster once "
                          f"per model with 'train.model' and 'train.numeric_embedding' naming one")
    if config.train.model == "gbdt":
        from tf_train.gbdt import run_gbdt

        run_gbdt(config)
    else:
        from tf_train.worker import run_worker

        run_worker(config)
