"""Writing artifacts so that a reader never sees half of one, and checking what is read back."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def staged(final: Path, directory: bool = False) -> Iterator[Path]:
    """A path beside `final` to write a file or a directory into, renamed into place when the block ends.

    Every artifact is written this way: a failed or interrupted write removes the staging path and leaves
    the previous `final` intact, and a reader sees the old artifact or the complete new one, never part of
    one. `directory=True` creates the staging directory; otherwise the writer creates what it writes (a
    file, or a directory as Spark's writer does). A directory replaces the previous one in two renames
    (the old one aside, the new one in), then the old one is deleted.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}-staging-{uuid.uuid4().hex[:8]}")
    if directory:
        staging.mkdir()
    try:
        yield staging
        if staging.is_dir():
            _replace_dir(staging, final)
        else:
            os.replace(staging, final)
    except BaseException:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)
        raise


def _replace_dir(staging: Path, final: Path) -> None:
    previous = None
    if final.exists():
        previous = final.with_name(f".{final.name}-previous-{uuid.uuid4().hex[:8]}")
        final.rename(previous)
    staging.rename(final)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def write_json_atomic(value: Any, path: Path) -> None:
    """Writes `value` as indented, key-sorted JSON through `staged`."""
    with staged(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
