"""The storage layer (`tfbridge.storage`) on local disk and on a real S3-compatible server: names, reads and writes,
globs, and the commit of an artifact by a manifest written last (`attempts`), alike on both."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.s3server import s3_server

# Each case runs in a child process with the server's variables, as a user's process would start: the AWS SDK
# reads them once.
CASES = r'''
import hashlib, json, sys
from pathlib import Path
from tfbridge.storage import Location, StorageError, glob
from tfbridge.storage.attempts import commit, local_copy, new_attempt, remove_uncommitted

root, scratch = Location.of(sys.argv[1]), Path(sys.argv[2])
out = {}
(root / "a" / "one.txt").write_text("1")
(root / "a" / "two.txt").write_text("22")
(root / "a" / "deep" / "three.bin").write_bytes(b"333")
out["glob"] = [l.name for l in glob(str(root / "a" / "*.txt"))]
out["exact"] = [l.name for l in glob(root / "a" / "two.txt")]
out["missing"] = [l.name for l in glob(root / "a" / "none.txt")]
out["is_dir"] = [(root / "a").is_dir(), (root / "a" / "one.txt").is_file(), (root / "nothing").exists()]
out["sha"] = (root / "a" / "two.txt").sha256() == hashlib.sha256(b"22").hexdigest()
try:
    (root / "nothing.txt").read_bytes()
except FileNotFoundError:
    out["not_found"] = True

# A commit: files of an attempt, named by a manifest written last; an older attempt and a crashed one removed.
local = scratch / "files"
(local / "sub").mkdir(parents=True)
(local / "x.txt").write_text("x")
(local / "sub" / "y.txt").write_text("y")
crashed = new_attempt(root / "artifact")
(crashed / "x.txt").write_text("half")
manifests = []
def write_manifest(sums, name):
    (root / "artifact" / "manifest.json").write_text(json.dumps({"attempt": name, "files": sums}))
    manifests.append(name)
def named():
    try:
        return [json.loads((root / "artifact" / "manifest.json").read_text())["attempt"]]
    except FileNotFoundError:
        return []
first = commit(root / "artifact", local, write_manifest, named)
(local / "x.txt").write_text("x2")
second = commit(root / "artifact", local, write_manifest, named)
def children(directory):
    """What is there (s3proxy's file-system backend lists a directory emptied of its files until it is gone)."""
    return sorted(c.name for c in directory.children() if c.exists())
out["children"] = children(root / "artifact")
out["named"] = [first.name != second.name, second.name in out["children"], first.name not in out["children"]]
recorded = json.loads((root / "artifact" / "manifest.json").read_text())
copy = local_copy(root / "artifact" / recorded["attempt"], recorded["files"])
out["copy"] = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file() and p.name != ".complete")
out["copy_x"] = (copy / "x.txt").read_text()
(root / "artifact" / recorded["attempt"] / "x.txt").write_text("tampered")
try:
    local_copy(root / "artifact" / recorded["attempt"], recorded["files"])
    out["tampered"] = "read" if root.is_local else "cached"
except StorageError as e:
    out["tampered"] = str(e)

# A failed commit leaves the previous one as it was.
def failing(sums, name):
    raise RuntimeError("manifest write failed")
try:
    commit(root / "artifact", local, failing, named)
except RuntimeError:
    pass
out["after_failure"] = children(root / "artifact") == out["children"]

# The store took the manifest and the answer was lost: the attempt it names stays.
def lost_answer(sums, name):
    write_manifest(sums, name)
    raise RuntimeError("answer lost")
try:
    commit(root / "artifact", local, lost_answer, named)
except RuntimeError:
    pass
recorded = json.loads((root / "artifact" / "manifest.json").read_text())
out["lost_answer"] = [recorded["attempt"] == manifests[-1], (root / "artifact" / recorded["attempt"] / "x.txt").is_file()]
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        server.create_bucket("store")
        yield server


@pytest.mark.parametrize("where", ["local", "s3"])
def test_names_reads_writes_and_commits_alike_on_disk_and_on_s3(where, s3, python_env, tmp_path):
    env, python = python_env
    root = str(tmp_path / "root") if where == "local" else "s3://store/root"
    env = {**env, **s3.env, "TFBRIDGE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([python, "-c", CASES, root, str(tmp_path / "scratch")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["glob"] == ["one.txt", "two.txt"] and out["exact"] == ["two.txt"] and out["missing"] == []
    assert out["is_dir"] == [True, True, False] and out["sha"] and out["not_found"]
    assert out["named"] == [True, True, True]
    assert len(out["children"]) == 2 and "manifest.json" in out["children"]  # and one attempt, the committed one
    assert out["copy"] == ["sub/y.txt", "x.txt"] and out["copy_x"] == "x2"
    if where == "local":  # the attempt itself is read, and checked at each read
        assert "is missing or is not the file its manifest names" in out["tampered"]
    else:  # a store's files are checked once, as they arrive in the local copy
        assert out["tampered"] == "cached"
    assert out["after_failure"] and out["lost_answer"] == [True, True]


def test_names_of_locations():
    from tfbridge.storage import Location, StorageError

    s3 = Location.of("s3://bucket/runs/demo/")
    assert str(s3) == "s3://bucket/runs/demo" and s3.name == "demo" and str(s3.parent) == "s3://bucket/runs"
    assert str(s3 / "model" / "manifest.json") == "s3://bucket/runs/demo/model/manifest.json"
    assert s3.hadoop_uri() == "s3a://bucket/runs/demo" and not s3.is_local
    assert Location.of("file:///tmp/x y").uri == "/tmp/x y" and Location.of("file:///tmp/x%20y").uri == "/tmp/x y"
    local = Location.of("runs/demo")
    assert local.is_local and local.hadoop_uri().startswith("/") and str(local / "model") == "runs/demo/model"
    assert Location.of("gs://b/k").scheme == "gs" and Location.of("hdfs://nn:8020/p").scheme == "hdfs"
    assert str(Location.of("s3://bucket").parent) == "s3://bucket" and Location.of("gcs://b/k").hadoop_uri() == "gs://b/k"
    with pytest.raises(StorageError, match=r"ftp://host/x: no file system for 'ftp://'"):
        Location.of("ftp://host/x")


def test_a_process_that_cannot_reach_hdfs_is_told_so_naming_the_uri(python_env):
    env, python = python_env
    code = "from tfbridge.storage import Location; Location.of('hdfs://namenode.invalid:8020/raw').exists()"
    done = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "StorageError: hdfs://namenode.invalid:8020/raw: " in done.stderr, done.stderr[-2000:]
    assert "(and " in done.stderr or "libjvm" in done.stderr or "libhdfs" in done.stderr
