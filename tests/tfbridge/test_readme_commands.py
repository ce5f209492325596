"""README's two commands are what a fresh machine needs: CI runs the README's test command as written, and that
command installs what the tests need beyond Python packages (chromium) before it runs pytest."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())[:2]


def test_ci_runs_the_readme_test_command_unchanged():
    setup, tests = readme_commands()
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == tests == "bash tests/run.sh"
    assert ".venv/bin/pip install -q -c constraints.txt -e '.[test]'" in setup
    assert ".venv/bin/pip install -q -c constraints.txt -e '.[test]'" in ci


def run_script(tmp_path: Path, with_chromium: bool) -> tuple[subprocess.CompletedProcess, str]:
    """tests/run.sh with a PATH of its own: an apt-get that records its calls (and installs a chromium), and a
    chromium only when asked; pytest gets `--version`, so the suite itself does not run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-calls"
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    if with_chromium:
        (bin_dir / "chromium").write_text("#!/bin/sh\n")
    for tool in ("env", "id", "dirname", "bash", "sudo"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, bin_dir / tool)
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    done = subprocess.run(["bash", str(REPO / "tests" / "run.sh"), "--version"], capture_output=True, text=True,
                          env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, timeout=120)
    return done, calls.read_text() if calls.exists() else ""


def test_the_test_command_installs_chromium_where_it_is_missing(tmp_path):
    done, apt = run_script(tmp_path, with_chromium=False)
    assert done.returncode == 0, done.stderr
    assert "install -y -qq chromium" in apt and "pytest" in done.stdout + done.stderr


def test_the_test_command_leaves_apt_alone_where_chromium_is_there(tmp_path):
    done, apt = run_script(tmp_path, with_chromium=True)
    assert done.returncode == 0 and apt == "", (done.stderr, apt)
