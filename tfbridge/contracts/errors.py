"""The errors a stage raises, by what the user must do about them (and the exit code `tfbridge.jobs` gives).

ConfigError and DataError: fix the input (exit 2). StageError, TrainingError, BrokenRuntimeError: the stage
failed on valid input (exit 1).
"""


class ConfigError(ValueError):
    """The pipeline config is malformed: the message names the file and the key."""


class DataError(ValueError):
    """The input data breaks the contract: the message names the file, column and value."""


class TrainingError(RuntimeError):
    """A training worker died with no retry left: the message names it and quotes its last log lines."""


class StageError(RuntimeError):
    """A stage cannot do its work on valid input (e.g. an op with no ONNX lowering): the message says what to change."""


class BrokenRuntimeError(RuntimeError):
    """A library misbehaves in this process, so a stage would give wrong results: the message says which and why."""
