"""Test support inside the scorer: fault injection for the retry test, off unless its variable is set.

With TFBRIDGE_SCORE_FAULT_ONCE=<path>, the first batch of the first Python worker to create <path>
kills that worker (as a crash would), once: Spark must retry the task and score every row once.
"""

import os

FAULT_ONCE_ENV = "TFBRIDGE_SCORE_FAULT_ONCE"


def fail_once_if_asked() -> None:
    marker = os.environ.get(FAULT_ONCE_ENV)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    os._exit(3)
