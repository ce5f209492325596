"""The private copy of onnxruntime-extensions' library loads where the temp directory is mounted noexec (as on
hardened hosts): from the user's cache directory instead. Run in a mount namespace of the test's own
(`unshare`), with a tmpfs mounted noexec as TMPDIR."""

from __future__ import annotations

import shutil
import subprocess

import pytest

SCRIPT = """
import importlib.util, pathlib, tempfile
from tfbridge.scoring import session
package = pathlib.Path(importlib.util.find_spec("onnxruntime_extensions").submodule_search_locations[0])
try:
    session._load_private_copy(session._installed_library_files(package), pathlib.Path(tempfile.gettempdir()) / "p")
    print("TEMP-LOADS")
except OSError as e:
    print("TEMP-REFUSES", e)
path = session.text_ops_library()
session.check_text_ops()
print("LOADED", path)
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_a_noexec_temp_directory_falls_back_to_the_cache_directory(python_env, tmp_path):
    env, python = python_env
    temp, cache = tmp_path / "tmp", tmp_path / "cache"
    temp.mkdir()
    command = (f"mount -t tmpfs -o noexec,size=256m tmpfs {temp} && "
               f"TMPDIR={temp} XDG_CACHE_HOME={cache} {python} -c '{SCRIPT}'")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", command], env=env, capture_output=True, text=True,
                          timeout=120)
    if "mount" in done.stderr and done.returncode and "TEMP-" not in done.stdout:
        pytest.skip(f"this host allows no mount namespace: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TEMP-REFUSES" in done.stdout, done.stdout  # the temp directory really is noexec
    assert f"LOADED {cache / 'tfbridge'}/ortextensions-" in done.stdout, done.stdout
