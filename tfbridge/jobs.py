"""How a stage runs as a job: the same logging and exit codes under `python -m <stage>` and `tfbridge`.

Exit codes: 0 done; 2 bad config or input (ConfigError, DataError: the message names the file, the
key or the column), or an output another run is writing ("another tfbridge run (pid N) is writing to
<output>": `tfbridge.contracts.output_lock`, held by every `tfbridge` command and stage job that writes
under a config's output, the training worker excepted, whose launcher holds it); 1 a stage failed (a
training worker died, an op has no ONNX lowering, a library misbehaves in this process, a file system failed:
StorageError names the URI); 130
interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from typing import Callable

from tfbridge.contracts import (BrokenRuntimeError, ConfigError, DataError, PipelineConfig, StageError, TrainingError,
                                output_lock)
from tfbridge.storage import StorageError, UnknownScheme

EXIT_BAD_INPUT = 2
EXIT_STAGE_FAILED = 1
EXIT_INTERRUPTED = 130  # as a shell reports a command stopped by Ctrl-C (128 + SIGINT)


def setup_logging() -> None:
    """Our progress at INFO; TensorFlow's and absl's chatter only when it is a warning we can act on."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    for noisy in ("absl", "tensorflow", "apache_beam", "py4j"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def run_job(run: Callable[[], None]) -> int:
    """Runs a stage with our logging; returns its exit code, the error's message on stderr."""
    setup_logging()
    try:
        run()
    except (ConfigError, DataError, UnknownScheme) as e:
        print(f"tfbridge: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (TrainingError, StageError, BrokenRuntimeError, StorageError) as e:
        print(f"tfbridge: error: {e}", file=sys.stderr)
        return EXIT_STAGE_FAILED
    except KeyboardInterrupt:
        print("tfbridge: interrupted; no stage output was left half-written, and running the command again "
              "resumes (training from its last epoch backup)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def run_config_job(prog: str, description: str, job: str, argv: list[str] | None = None,
                   beam_args: bool = False, lock_output: bool = True) -> int:
    """`python -m <stage> --config C`: parses the config and runs `job(config)` (job: "module:function",
    imported after the arguments parse, so `--help` starts no TensorFlow), or `job(config, beam_args)`
    with the options it does not know passed on (Beam's pipeline options), holding the config's output
    (`output_lock`) unless `lock_output` is False: a training worker is one of a cluster's processes that
    write one output together, under the lock of whoever launched them."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="pipeline config (YAML)")
    args, extra = parser.parse_known_args(argv) if beam_args else (parser.parse_args(argv), None)

    def run() -> None:
        config = PipelineConfig.from_yaml(args.config)
        with output_lock(config.layout.root) if lock_output else contextlib.nullcontext():
            module, _, function = job.partition(":")
            getattr(importlib.import_module(module), function)(config, *([extra] if beam_args else []))

    return run_job(run)
