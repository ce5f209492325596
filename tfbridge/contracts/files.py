"""Local files replaced so that a reader never sees half of one, one run per output, and checking files.

Two processes never write one output at once (`output_lock`). What a write leaves beside its final path while it
runs is named for the host and process that made it (`.<name>-staging-<host>-<pid>-<random>`), so that only that
process's leftovers are ever deleted: by `staged` once that process is gone. `staged` is for local files that
are not artifacts of a run (a cache, a dataset, Spark's local output); artifacts are committed by their
manifests (`tfbridge.storage.attempts`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import glob
import hashlib
import json
import os
import shutil
import socket
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

from tfbridge.contracts.errors import ConfigError
from tfbridge.storage import Location
from tfbridge.storage.attempts import cache_root

LOCK_FILE = ".tfbridge.lock"  # under an output: held by the one run writing it, and holding that run's pid


def file_sha256(path: "Path | Location") -> str:
    return Location.of(path).sha256()


@contextlib.contextmanager
def staged(final: Path, directory: bool = False) -> Iterator[Path]:
    """A path beside `final` to write a file or a directory into, renamed into place when the block ends.

    Every artifact is written this way: a failed or interrupted write removes the staging path and leaves
    the previous `final` intact, and a reader sees the old artifact or the complete new one, never part of
    one, and at every instant one of them. `directory=True` creates the staging directory; otherwise the
    writer creates what it writes (a file, or a directory as Spark's writer does). A file replaces the old
    one in one rename; a directory is exchanged with the old one in one step (Linux's renameat2
    RENAME_EXCHANGE), which is then deleted. Where the file system cannot exchange, it takes two renames
    (the old one aside, the new one in); a process killed between them leaves no `final`, and the next
    `staged` of that path puts the old one back first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _recover(final)
    staging = _owned_path(final, "staging")
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
    if _exchange(staging, final):
        _remove(staging)  # the previous artifact, now at the staging path
        return
    previous = None
    if final.exists():
        previous = _owned_path(final, "previous")
        final.rename(previous)
    try:
        staging.rename(final)
    except BaseException:
        if previous is not None:
            previous.rename(final)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@functools.cache
def _renameat2():
    """libc's renameat2 (glibc 2.28+), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two existing paths atomically; False where this system or file system cannot, or `b` is not there."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOENT, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _owned_path(final: Path, kind: str) -> Path:
    """`.<name>-<kind>-<host>-<pid>-<random>` beside `final`: whose it is, for `_leftovers`."""
    return final.with_name(f".{final.name}-{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _leftovers(final: Path, kind: str) -> list[Path]:
    """The `kind` paths ("staging", "previous") beside `final` made by processes of this host that are gone."""
    prefix = f".{final.name}-{kind}-"
    gone = []
    for path in final.parent.glob(glob.escape(prefix) + "*"):
        host, _, pid = path.name[len(prefix):].rpartition("-")[0].rpartition("-")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            gone.append(path)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _recover(final: Path) -> None:
    """Undoes what a process that died inside `staged` left beside `final`: an old directory set aside with no new
    one in its place goes back (two-rename replacement, killed between the renames); its other leftovers (a
    write never finished, an old directory never deleted) are deleted. A live process's are left alone."""
    previous = _leftovers(final, "previous")
    if previous and not final.exists():
        newest = max(previous, key=lambda path: path.stat().st_ctime_ns)  # the last one renamed aside
        with contextlib.suppress(OSError):  # another process recovered it first
            newest.rename(final)
        previous.remove(newest)
    for path in [*previous, *_leftovers(final, "staging")]:
        _remove(path)


def _lock_file(output: Location) -> Path:
    """`<output>/.tfbridge.lock` on local disk; for a store, a file in this host's cache named for the URI (a store
    has no lock that ends with the process that took it: runs of one output on two hosts are not excluded)."""
    if output.is_local:
        output.local.mkdir(parents=True, exist_ok=True)
        return output.local / LOCK_FILE
    locks = cache_root() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return locks / (hashlib.sha256(output.uri.encode()).hexdigest()[:16] + ".lock")


@contextlib.contextmanager
def output_lock(output: "Path | Location") -> Iterator[None]:
    """Holds the output's lock for the block: one run at a time writes an output, since two would replace
    each other's artifacts and resume each other's training. The lock is the kernel's (flock): it ends with the
    process, however that ends. Raises ConfigError naming the process that holds it, at once, without waiting."""
    output = Location.of(output)
    fd = os.open(_lock_file(output), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(f"another tfbridge run (pid {holder}) is writing to {output}; wait for it to end, "
                              f"or give this run another output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def write_json_atomic(value: Any, path: "Path | Location") -> None:
    """Writes `value` as indented, key-sorted JSON in one step: a reader sees the old file or the new one."""
    Location.of(path).write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
