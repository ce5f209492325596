"""Committing a directory of files where nothing can be renamed: each write goes under its own attempt prefix, and a
manifest written last (one object: a reader sees the old one or the new one) names the attempt it commits.

    <artifact>/manifest.json                     the commit: names "attempt-20261203T173000-host-123-ab12cd34"
    <artifact>/attempt-20261203T173000-.../...   the files it names, each with its sha256
    <artifact>/attempt-20261203T180000-.../...   a write that crashed or is running: nobody reads it

A reader follows only what a manifest names and checks each file's sha256 (`LocalCopy`); the next writer removes
the attempts no manifest names (`remove_uncommitted`), after its own commit the one it replaced. Local disk and a
store work alike.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterable, Mapping

from tfbridge.storage import ChecksumMismatch, Location

ATTEMPT_PREFIX = "attempt-"
_COMPLETE = ".complete"  # written last into a local copy: the copy is whole


def new_attempt(directory: Location) -> Location:
    """A fresh attempt prefix under `directory`: when, on which host, by which process (for whoever cleans up)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return Location.of(directory) / f"{ATTEMPT_PREFIX}{stamp}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_uncommitted(directory: Location, committed: Iterable[str] | None) -> list[str]:
    """Deletes every attempt under `directory` but the `committed` ones: crashed writes, and what a new commit
    replaced; nothing when `committed` is None (a manifest that cannot be read: it may name any of them). Only the
    one run that holds the output's lock calls it. Returns the names removed."""
    if committed is None:
        return []
    keep = set(committed)
    removed = []
    for child in Location.of(directory).children():
        if child.name.startswith(ATTEMPT_PREFIX) and child.name not in keep:
            child.remove()
            removed.append(child.name)
    return removed


def commit(directory: Location, local: Path, write_manifest: Callable[[dict[str, str], str], None],
           named: Callable[[], Iterable[str] | None], keep: Iterable[str] = ()) -> Location:
    """Sends every file under `local` to a new attempt under `directory`, then calls `write_manifest(sha256 by
    relative path, attempt name)`, the commit; then removes the attempts it replaced (all but it and `keep`). A
    failure before the manifest is written leaves the previous commit as it was (see `abandon`). `named()`: the
    attempts the manifest names as it is now (None: unreadable)."""
    attempt = new_attempt(directory)
    try:
        write_manifest(attempt.upload(local), attempt.name)
    except BaseException:
        abandon(attempt, named)
        raise
    with contextlib.suppress(OSError):  # committed: what is left is the next writer's to remove
        remove_uncommitted(directory, [attempt.name, *keep])
    return attempt


def abandon(attempt: Location, named: Callable[[], Iterable[str] | None]) -> None:
    """Removes an attempt whose commit failed, unless its manifest names it after all (the store took the manifest
    and the answer was lost) or cannot tell; with the store gone, it is the next writer's to remove."""
    with contextlib.suppress(OSError):
        names = named()
        if names is not None and attempt.name not in names:
            attempt.remove()


def cache_root() -> Path:
    """Local copies of artifacts kept on a store, and the local working state of runs whose output is one."""
    root = os.environ.get("TFBRIDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "tfbridge")
    return Path(root)


def work_dir(output: Location) -> Path:
    """Where a run keeps what is not an artifact (training's epoch backups and progress) on this host: under the
    output itself on local disk, else in the cache, one directory per output URI."""
    output = Location.of(output)
    if output.is_local:
        return output.local
    return cache_root() / "work" / hashlib.sha256(output.uri.encode()).hexdigest()[:16]


def local_copy(directory: Location, files: Mapping[str, str]) -> Path:
    """A local directory holding `files` (path relative to `directory` -> sha256), each checked against its sha256:
    the directory itself on local disk, else a copy in the cache, downloaded once per set of files. For the
    readers that need a local path (TensorFlow reads no object store but gs://)."""
    directory = Location.of(directory)
    if directory.is_local:
        for relative, expected in files.items():
            location = directory / relative
            if not location.is_file() or location.sha256() != expected:
                raise ChecksumMismatch(f"{location} is missing or is not the file its manifest names (sha256 "
                                       f"differs)")
        return directory.local
    key = hashlib.sha256(repr((directory.uri, sorted(files.items()))).encode()).hexdigest()[:24]
    target = cache_root() / "copies" / key
    if (target / _COMPLETE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}-"))
    directory.download(files, staging)
    (staging / _COMPLETE).write_text(directory.uri + "\n")
    try:
        os.rename(staging, target)
    except OSError:  # another process made the same copy first
        shutil.rmtree(staging, ignore_errors=True)
    return target
