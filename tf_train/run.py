"""One training process (`python -m tf_train --config C`): by `train.model`, a worker of the network's cluster
(tf_train.worker) or the gradient-boosted trees (tf_train.gbdt, one process)."""

from __future__ import annotations

from tfbridge.contracts import PipelineConfig


def run_training(config: PipelineConfig) -> None:
    if config.train.model == "gbdt":
        from tf_train.gbdt import run_gbdt

        run_gbdt(config)
    else:
        from tf_train.worker import run_worker

        run_worker(config)
