"""A real S3-compatible server for the tests: s3proxy (Maven Central's `org.gaul:s3proxy:2.6.0`, its
jar-with-dependencies) on 127.0.0.1, storing its buckets as directories. The jar is downloaded once into the cache
and checked against Maven Central's published SHA-1.

    with s3_server(tmp_path) as s3:
        s3.create_bucket("runs")
        subprocess.run([...], env={**os.environ, **s3.env})
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

MAVEN = "https://repo1.maven.org/maven2"
S3PROXY = "org/gaul/s3proxy/2.6.0/s3proxy-2.6.0-jar-with-dependencies.jar"
IDENTITY, CREDENTIAL = "tfbridge-test", "tfbridge-test-secret"
START_TIMEOUT_S = 60


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tfbridge-tests"


def maven_jar(path: str) -> Path:
    """A jar of Maven Central, downloaded once (its SHA-1 checked against the one Maven Central publishes)."""
    target = cache_dir() / Path(path).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(f"{MAVEN}/{path}.sha1", timeout=60) as response:
        expected = response.read().decode().split()[0]
    staging = target.with_name(f".{target.name}-{os.getpid()}")
    with urllib.request.urlopen(f"{MAVEN}/{path}", timeout=600) as response, open(staging, "wb") as f:
        shutil.copyfileobj(response, f)
    found = hashlib.sha1(staging.read_bytes()).hexdigest()
    if found != expected:
        staging.unlink()
        raise RuntimeError(f"{MAVEN}/{path}: SHA-1 {found}, Maven Central says {expected}")
    os.replace(staging, target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """One s3proxy process; `stop` and `start` again on the same port and directory (the objects stay). `bind`:
    the address it listens on (0.0.0.0 for clients on the test's own hosts, tests/netns.py)."""

    def __init__(self, directory: Path, bind: str = "127.0.0.1"):
        self.directory = directory
        self.data = directory / "buckets"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.properties = directory / "s3proxy.properties"
        self.properties.write_text("\n".join([
            f"s3proxy.endpoint=http://{bind}:{self.port}", "s3proxy.authorization=aws-v2-or-v4",
            f"s3proxy.identity={IDENTITY}", f"s3proxy.credential={CREDENTIAL}",
            "jclouds.provider=filesystem", f"jclouds.filesystem.basedir={self.data}", ""]))
        self.process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a user of an S3-compatible server sets: the standard AWS variables, nothing of ours."""
        return self.env_at("127.0.0.1")

    def env_at(self, address: str) -> dict[str, str]:
        """`env` for a client that reaches the server at `address` (a host of the test's own: the bridge's)."""
        return {"AWS_ACCESS_KEY_ID": IDENTITY, "AWS_SECRET_ACCESS_KEY": CREDENTIAL, "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": f"http://{address}:{self.port}"}

    def start(self) -> None:
        log = open(self.directory / "s3proxy.log", "ab")
        self.process = subprocess.Popen(["java", "-jar", str(maven_jar(S3PROXY)), "--properties", str(self.properties)],
                                        stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"s3proxy did not start; see {self.directory / 's3proxy.log'}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Kills the server at once, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def create_bucket(self, name: str) -> None:
        (self.data / name).mkdir(exist_ok=True)

    def objects(self, bucket: str) -> list[str]:
        """The keys of a bucket, as the server stores them."""
        root = self.data / bucket
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@contextlib.contextmanager
def s3_server(directory: Path, bind: str = "127.0.0.1") -> Iterator[S3Server]:
    server = S3Server(Path(directory), bind)
    server.start()
    try:
        yield server
    finally:
        server.stop()
