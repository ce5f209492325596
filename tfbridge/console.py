"""What a person sees while `tfbridge` runs: one line per stage, a progress bar for long work, a summary.

Quiet by default. While a stage runs, this process's standard output and error (file descriptors 1 and 2,
so TensorFlow's C++ logging, the training workers, tf2onnx and Spark's JVM too) go to
`<output>/logs/<stage>.log`, and only our own lines reach the terminal. When a stage fails, its last log
lines are shown. `--verbose` leaves everything on the terminal, as the stage jobs (`python -m <stage>`)
always do.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import rich.console
import rich.progress

from tfbridge.storage import Location

TAIL_LINES = 15
POLL_S = 0.5

Poll = Callable[[], "tuple[int, int | None]"]  # -> (done, total or None while unknown)


class Stage:
    """A running stage as the console shows it: `track` adds a progress bar, `result` is its closing line."""

    def __init__(self, progress: rich.progress.Progress | None):
        self.result = ""
        self._progress = progress
        self._bars: list[tuple[rich.progress.TaskID, Poll]] = []

    def track(self, what: str, poll: Poll) -> None:
        """A bar fed by `poll()`, called a few times a second until the stage ends; a failing poll is skipped."""
        if self._progress is not None:
            self._bars.append((self._progress.add_task(what, total=None), poll))

    def _update(self) -> None:
        for task, poll in self._bars:
            try:
                done, total = poll()
            except Exception:  # progress is best effort: a file mid-rename, a Spark context shutting down
                continue
            self._progress.update(task, completed=done, total=total)


class Console:
    """The terminal, kept apart from the file descriptors that stages (and the libraries in them) write to."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        sys.stdout.flush()
        try:
            terminal = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
        except (AttributeError, OSError, ValueError):  # stdout is no file (e.g. captured in-process by a test)
            terminal = sys.stdout
        self.out = rich.console.Console(file=terminal, highlight=False, soft_wrap=True)

    def line(self, text: str) -> None:
        self.out.print(text)

    @contextlib.contextmanager
    def stage(self, name: str, logs_dir: Path, log_file: str | None = None,
              copy_to: Location | None = None) -> Iterator[Stage]:
        """Runs a stage's block with its output in `<logs_dir>/<log_file>` (default `<name>.log`), copied to
        `copy_to` (a run's logs on a store) when it ends; prints ✓ or ✗, the time and its result."""
        log_path = Path(logs_dir) / (log_file or f"{name}.log")
        start = time.monotonic()
        progress = None if self.verbose or not self.out.is_terminal else rich.progress.Progress(
            rich.progress.SpinnerColumn(), rich.progress.TextColumn(f"{name:<9}" + "{task.description}"),
            rich.progress.BarColumn(), rich.progress.MofNCompleteColumn(), rich.progress.TimeElapsedColumn(),
            console=self.out, transient=True)
        stage = Stage(progress)
        try:
            with self._captured(log_path, copy_to), self._showing(stage, progress):
                yield stage
        except BaseException as error:
            what = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            self.out.print(f"[red]✗[/] {name:<9}{time.monotonic() - start:6.1f} s  {what}")
            if not self.verbose:
                self.out.print(f"  last lines of {log_path}:")
                for text in last_lines(log_path, TAIL_LINES):
                    self.out.print(f"  │ {text}", markup=False)
            raise
        self.out.print(f"[green]✓[/] {name:<9}{time.monotonic() - start:6.1f} s  {stage.result}")

    def skipped(self, name: str, why: str) -> None:
        self.out.print(f"· {name:<9}    skip  {why}")

    @contextlib.contextmanager
    def _captured(self, log_path: Path, copy_to: Location | None) -> Iterator[None]:
        if self.verbose:
            yield
            return
        if copy_to is not None:
            try:
                with self._captured(log_path, None):
                    yield
            finally:
                with contextlib.suppress(OSError):  # the store is gone: the local log is still there
                    copy_to.write_bytes(log_path.read_bytes())
            return
        log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(log_path, "w", encoding="utf-8") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)

    @contextlib.contextmanager
    def _showing(self, stage: Stage, progress: rich.progress.Progress | None) -> Iterator[None]:
        if progress is None:
            yield
            return
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(POLL_S):
                stage._update()

        thread = threading.Thread(target=poll, name="console-progress", daemon=True)
        with progress:
            thread.start()
            try:
                yield
            finally:
                stop.set()
                thread.join()


def last_lines(path: Path, count: int) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in collections.deque(f, maxlen=count)]
    except OSError:
        return []
