"""Where data and artifacts live: a local path, or a URI of an object store or HDFS, read and written through one
interface.

    s3://bucket/key   gs://bucket/key   abfs://container@account.dfs.core.windows.net/key   hdfs://host:port/path
    file:///abs/path  /abs/path  relative/path

The file systems are pyarrow's (`pyarrow.fs`): the same C++ clients that read Parquet, so a shard streams from the
store in row groups with no copy on local disk, and no code of ours speaks any store's protocol. Credentials and
endpoints come from where each store's own tools look, never from a config: for S3 the AWS variables
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_S3` for an
S3-compatible server) and `~/.aws`; Spark's s3a connector is given the same (`spark_infer.job`).

Object stores have no rename: an artifact is committed by a manifest written last (`attempts`), never by moving
files into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
import hashlib
import os
import posixpath
import shutil
import urllib.parse
import uuid
from pathlib import Path
from typing import Mapping

import pyarrow.fs as pafs

# Schemes handed to pyarrow's file systems; anything else with "://" is refused by name.
REMOTE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs")
# The names Hadoop's connectors (Spark's) give the same stores: S3 is `s3a`, GCS only `gs`.
HADOOP_SCHEMES = {"s3": "s3a", "gcs": "gs"}
_CHUNK = 1 << 20


class StorageError(OSError):
    """A read or write of a file system failed: the message names the URI and quotes the file system's error."""


class UnknownScheme(StorageError, ValueError):
    """A URI of a scheme no file system here serves (a bad argument, not a failing store)."""


class ChecksumMismatch(StorageError):
    """A file is there but is not the one its manifest names (its sha256 differs)."""


def _s3_defaults() -> None:
    """The AWS SDK (pyarrow's, from 2025) adds CRC checksums to uploads that S3-compatible servers other than AWS
    reject (`XAmzContentSHA256Mismatch` from s3proxy); checksums only where a request requires them works with AWS
    and with them. Read by the SDK once, when the first S3 client starts: a user's own setting wins."""
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "WHEN_REQUIRED")


# The variables a client reads when it is made: a client is made again when they change.
_CLIENT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
               "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")


def _filesystem(scheme: str, authority: str) -> pafs.FileSystem:
    if scheme == "s3":
        _s3_defaults()
    return _client(scheme, authority, tuple(os.environ.get(name) for name in _CLIENT_ENV))


@functools.cache
def _client(scheme: str, authority: str, env: tuple) -> pafs.FileSystem:
    """One client per store (scheme and host or bucket) and settings, made the first time it is used."""
    filesystem, _ = pafs.FileSystem.from_uri(f"{scheme}://{authority}/")
    return filesystem


def _short(error: BaseException) -> str:
    """A file system's error on one line (pyarrow's HDFS error lists every path it tried for libjvm)."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[0] + (f" (and {len(lines) - 1} more lines)" if len(lines) > 1 else "")


@dataclasses.dataclass(frozen=True)
class Location:
    """A file or directory on local disk or in a store: `uri` as the user wrote it (a local path stays a path)."""

    uri: str

    @classmethod
    def of(cls, value: "str | os.PathLike | Location") -> "Location":
        if isinstance(value, Location):
            return value
        text = os.fspath(value)
        if "://" in text:
            scheme = text.split("://", 1)[0].lower()
            if scheme == "file":
                return cls(urllib.parse.unquote(urllib.parse.urlparse(text).path))
            if scheme not in REMOTE_SCHEMES:
                raise UnknownScheme(f"{text}: no file system for '{scheme}://' (expected a local path or one of "
                                    f"{', '.join(s + '://' for s in REMOTE_SCHEMES)}, or file://)")
            return cls(text.rstrip("/") if text.rstrip("/").count("/") >= 2 else text)
        return cls(text)

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:
        """Only a local location is a path to the operating system."""
        return str(self.local)

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri

    @property
    def local(self) -> Path:
        if not self.is_local:
            raise StorageError(f"{self.uri} is not on local disk")
        return Path(self.uri)

    @property
    def scheme(self) -> str:
        return self.uri.split("://", 1)[0].lower() if not self.is_local else ""

    def hadoop_uri(self) -> str:
        """The URI Spark's Hadoop connectors take (`s3://` -> `s3a://`); a local path made absolute."""
        if self.is_local:
            return os.path.abspath(self.uri)
        return HADOOP_SCHEMES.get(self.scheme, self.scheme) + self.uri[len(self.scheme):]

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """pyarrow's file system of this location and the path inside it (for `pyarrow.parquet`, `pyarrow.dataset`)."""
        if self.is_local:
            return pafs.LocalFileSystem(), os.path.abspath(self.uri)
        parsed = urllib.parse.urlparse(self.uri)
        try:
            filesystem = _filesystem(self.scheme, parsed.netloc)
        except (OSError, ValueError) as e:
            raise StorageError(f"{self.uri}: {_short(e)}") from e
        if self.scheme in ("hdfs", "viewfs"):
            return filesystem, parsed.path or "/"
        if self.scheme in ("abfs", "abfss"):  # the client is the account's; paths start at the container
            return filesystem, f"{parsed.netloc.split('@')[0]}{parsed.path}".rstrip("/")
        return filesystem, f"{parsed.netloc}{parsed.path}".rstrip("/")
    # Names.
    def __truediv__(self, name: str) -> "Location":
        if self.is_local:
            return Location(str(Path(self.uri) / name))
        return Location(posixpath.join(self.uri, name))

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri.rstrip("/")) if not self.is_local else Path(self.uri).name

    @property
    def parent(self) -> "Location":
        """The directory holding this one (a bucket's root is its own parent)."""
        if self.is_local:
            return Location(str(Path(self.uri).parent))
        if self.uri.count("/") <= 2:
            return self
        return Location(posixpath.dirname(self.uri))

    def with_name(self, name: str) -> "Location":
        return self.parent / name

    # Reads.
    def _call(self, what, *args):
        filesystem, path = self.filesystem()
        try:
            return what(filesystem, path, *args)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as e:
            raise StorageError(f"{self.uri}: {_short(e)}") from e

    def info(self) -> pafs.FileInfo:
        return self._call(lambda fs, path: fs.get_file_info(path))

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        if self.is_local:
            return self.local.read_bytes()
        return self._call(_read_all)

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def open_input(self):
        """A seekable file (pyarrow's), for readers that jump around in it: Parquet's footer, then row groups."""
        return self._call(lambda fs, path: fs.open_input_file(path))

    def sha256(self) -> str:
        digest = hashlib.sha256()
        if self.is_local:
            with open(self.local, "rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(chunk)
            return digest.hexdigest()

        def read(fs, path):
            with fs.open_input_stream(path) as f:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(chunk)
        self._call(read)
        return digest.hexdigest()

    def files(self, pattern: str = "*") -> list["Location"]:
        """The files directly in this directory whose names match `pattern` (fnmatch; a name starting with "."
        only when the pattern does, as a shell's glob), sorted by name."""
        selector = pafs.FileSelector(self.filesystem()[1], allow_not_found=True)
        infos = self._call(lambda fs, path: fs.get_file_info(selector))
        hidden = pattern.startswith(".")
        return sorted((self / info.base_name for info in infos
                       if info.type == pafs.FileType.File and fnmatch.fnmatchcase(info.base_name, pattern)
                       and (hidden or not info.base_name.startswith("."))),
                      key=lambda location: location.uri)

    def children(self) -> list["Location"]:
        """Everything directly in this directory (files and directories), sorted by name."""
        selector = pafs.FileSelector(self.filesystem()[1], allow_not_found=True)
        infos = self._call(lambda fs, path: fs.get_file_info(selector))
        return sorted((self / info.base_name for info in infos), key=lambda location: location.uri)

    # Writes: a store commits a whole object at once (a reader sees the old one or the new one); a local file is
    # written beside its place and renamed into it, so that local disk behaves the same.
    def write_bytes(self, data: bytes) -> None:
        if self.is_local:
            path = self.local
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f".{path.name}-writing-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            staging.write_bytes(data)
            os.replace(staging, path)
            return
        self._call(_write_all, data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def open_output(self):
        """A stream to write this file (its directory made first); on a store the object appears when it is
        closed, on local disk as it is written: write under an attempt (`attempts`) that a manifest commits."""
        def open_stream(fs, path):
            fs.create_dir(posixpath.dirname(path), recursive=True)
            return fs.open_output_stream(path)
        return self._call(open_stream)

    def mkdir(self) -> None:
        self._call(lambda fs, path: fs.create_dir(path, recursive=True))

    def remove(self) -> None:
        """Deletes this file or directory tree; nothing there is no error."""
        info = self.info()
        if info.type == pafs.FileType.Directory:
            if self.is_local:
                shutil.rmtree(self.local, ignore_errors=True)
            else:
                self._call(_delete_tree)
        elif info.type != pafs.FileType.NotFound:
            self._call(lambda fs, path: fs.delete_file(path))

    # Trees.
    def upload(self, source: "Path | Location") -> dict[str, str]:
        """Copies every file under the directory `source` (local, or on any store: what a worker of a distributed
        runner wrote) here, with the same relative paths; returns relative path -> sha256 of what was sent, for a
        manifest."""
        source = Location.of(source)
        selector = pafs.FileSelector(source.filesystem()[1], recursive=True)
        infos = source._call(lambda fs, path: fs.get_file_info(selector))
        root = selector.base_dir.rstrip("/") + "/"
        sums = {}
        for info in sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path):
            relative = info.path[len(root):]
            data = (source / relative).read_bytes()
            sums[relative] = hashlib.sha256(data).hexdigest()
            (self / relative).write_bytes(data)
        return sums

    def download(self, files: Mapping[str, str], local_dir: Path) -> None:
        """Copies the named files (relative path -> sha256) from here to `local_dir`, checking each one's sha256
        as it arrives: a file that differs raises ChecksumMismatch naming it."""
        for relative, expected in files.items():
            try:
                data = (self / relative).read_bytes()
            except FileNotFoundError:
                raise ChecksumMismatch(f"{self / relative} is missing; its manifest names it") from None
            if hashlib.sha256(data).hexdigest() != expected:
                raise ChecksumMismatch(f"{self / relative} is not the file its manifest names (sha256 differs)")
            target = Path(local_dir) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def _delete_tree(fs: pafs.FileSystem, path: str) -> None:
    """The files first, then the directories (a store's marker keys) deepest first: no directory is deleted before
    what it holds (s3proxy's file system backend retries such a delete for 10 s, and pyarrow's `delete_dir` does it
    in that order)."""
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    directories = {info.path for info in infos if info.type == pafs.FileType.Directory}
    for info in infos:
        if info.type == pafs.FileType.File and info.path not in directories:
            with contextlib.suppress(FileNotFoundError):  # an empty directory s3proxy lists as a file
                fs.delete_file(info.path)
    for directory in sorted(directories | {path}, key=lambda d: d.count("/"), reverse=True):
        with contextlib.suppress(FileNotFoundError):  # gone with its last file
            fs.delete_dir(directory)


def _read_all(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _write_all(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def glob(pattern: "str | Location") -> list[Location]:
    """The files a pattern names (`*`, `?` and `[...]` in its last part only), sorted; a pattern without a wildcard
    names itself if it is a file."""
    location = Location.of(pattern)
    if not any(ch in location.name for ch in "*?["):
        return [location] if location.is_file() else []
    return location.parent.files(location.name)
