"""Test support inside the scorer: fault injection, off unless its variable is set.

With TFBRIDGE_SCORE_FAULT_ONCE=<path>, the first batch of the first Python worker to create <path>
kills that worker (as a crash would), once: Spark must retry the task and score every row once.
With TFBRIDGE_SCORE_SKEW=<factor>, every prediction Spark's workers return is multiplied by it (as a
hand-off that goes wrong inside the workers would): the job's parity gate must commit nothing.
"""

import os

import numpy as np

FAULT_ONCE_ENV = "TFBRIDGE_SCORE_FAULT_ONCE"
SKEW_ENV = "TFBRIDGE_SCORE_SKEW"


def skewed_if_asked(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    factor = os.environ.get(SKEW_ENV)
    if not factor:
        return outputs
    return {k: v * np.float32(factor) if v.dtype.kind == "f" else v for k, v in outputs.items()}


def fail_once_if_asked() -> None:
    marker = os.environ.get(FAULT_ONCE_ENV)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    os._exit(3)
