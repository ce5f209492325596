"""Writes that never leave a gap, and runs that don't trip over each other (`tfbridge.contracts.files`)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import yaml

from tfbridge.cli import main
from tfbridge.contracts import output_lock, staged

READER = """
import sys
from pathlib import Path

artifact, stop = Path(sys.argv[1]) / "artifact.txt", Path(sys.argv[2])
reads = misses = 0
print("reading", flush=True)
while not stop.exists():
    try:
        artifact.read_text()
        reads += 1
    except FileNotFoundError:
        misses += 1
print(reads, misses)
"""

# `staged` as on a file system without RENAME_EXCHANGE, the process killed between its two renames.
KILLED_BETWEEN_RENAMES = """
import os
import sys
from pathlib import Path

from tfbridge.contracts import files

files._exchange = lambda a, b: False
rename = Path.rename


def rename_then_die(self, target):
    rename(self, target)
    os._exit(0)


Path.rename = rename_then_die
with files.staged(Path(sys.argv[1]), directory=True) as staging:
    (staging / "artifact.txt").write_text("new")
"""

HOLDER = """
import sys

from tfbridge.contracts import output_lock

with output_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def write_artifact(final: Path, text: str) -> None:
    with staged(final, directory=True) as staging:
        (staging / "artifact.txt").write_text(text)


def test_a_replaced_directory_is_there_at_every_instant(tmp_path, python_env):
    """Another process reads the artifact without pause while it is replaced 300 times: it never misses it."""
    env, python = python_env
    final, stop = tmp_path / "out" / "features", tmp_path / "stop"
    write_artifact(final, "0")
    reader = subprocess.Popen([python, "-c", READER, str(final), str(stop)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline() == "reading\n"
        for i in range(1, 301):
            write_artifact(final, str(i))
    finally:
        stop.touch()
    reads, misses = map(int, reader.communicate(timeout=60)[0].split())
    assert misses == 0 and reads > 0
    assert (final / "artifact.txt").read_text() == "300"
    assert [p.name for p in final.parent.iterdir()] == ["features"]


def test_a_replacement_killed_between_its_renames_is_undone_by_the_next_write(tmp_path, python_env):
    env, python = python_env
    final = tmp_path / "out" / "features"
    write_artifact(final, "old")
    killed = subprocess.run([python, "-c", KILLED_BETWEEN_RENAMES, str(final)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert killed.returncode == 0, killed.stderr
    assert not final.exists()  # the gap the crash left: the old artifact aside, the new one beside it
    assert sorted(p.name.split("-")[1] for p in final.parent.iterdir()) == ["previous", "staging"]

    with staged(final, directory=True) as staging:
        assert (final / "artifact.txt").read_text() == "old"  # put back before anything is written
        (staging / "artifact.txt").write_text("newer")
    assert (final / "artifact.txt").read_text() == "newer"
    assert [p.name for p in final.parent.iterdir()] == ["features"]


def test_only_what_a_gone_process_left_is_deleted(tmp_path, python_env):
    _, python = python_env
    final, host = tmp_path / "metrics.json", socket.gethostname()
    live = subprocess.Popen([python, "-c", "import time; time.sleep(120)"])
    gone = subprocess.Popen([python, "-c", "pass"])
    gone.wait()
    of_live, of_gone, of_another_host = (f".metrics.json-staging-{owner}-0000aaaa" for owner in
                                         (f"{host}-{live.pid}", f"{host}-{gone.pid}", f"elsewhere-{gone.pid}"))
    try:
        for name in (of_live, of_gone, of_another_host):
            (tmp_path / name).write_text("half")
        with staged(final) as tmp:
            tmp.write_text("{}")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([of_live, of_another_host, "metrics.json"])
    finally:
        live.kill()
        live.wait()


def test_a_second_run_into_one_output_stops_at_once_naming_the_first(tmp_path, python_env, capsys):
    env, python = python_env
    out = tmp_path / "out"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": str(tmp_path / "d.parquet"), "label": "y", "task": "regression",
                                      "features": {"x": ["z_score"]}, "output": str(out)}))
    holder = subprocess.Popen([python, "-c", HOLDER, str(out)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    message = f"another tfbridge run (pid {holder.pid}) is writing to {out}"
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(["run", "--config", str(config)]) == 2
        assert message in capsys.readouterr().err
        job = subprocess.run([python, "-m", "tft_features", "--config", str(config)], env=env, capture_output=True,
                             text=True, timeout=120)
        assert job.returncode == 2 and message in job.stderr
    finally:
        holder.communicate("", timeout=60)
    with output_lock(out):  # released with the process that held it
        assert (out / ".tfbridge.lock").read_text() == f"{os.getpid()}\n"
