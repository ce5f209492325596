"""Only a config the user passes names code: nothing read from an artifact, and no fingerprint, runs any.

A user's `preprocessing_fn` package here records its import: both its package `__init__` and its module
write a file when executed. Each check runs in a fresh interpreter, where nothing was imported before.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from tfbridge.contracts import fingerprints

RECORDS_IMPORT = "import pathlib\npathlib.Path(__file__).parent.parent.joinpath('imported-{name}').touch()\n"
PREPROCESSING_FN = """
import tensorflow as tf
import tensorflow_transform as tft


def scaled(inputs):
    return {"x_scaled": tft.scale_to_0_1(tf.squeeze(inputs["x"], 1))}
"""


def user_package(root: Path) -> None:
    """`userpkg.fns:scaled` under `root`; an import of the package or the module leaves `root/imported-*`."""
    (root / "userpkg").mkdir()
    (root / "userpkg" / "__init__.py").write_text(RECORDS_IMPORT.format(name="package"))
    (root / "userpkg" / "fns.py").write_text(RECORDS_IMPORT.format(name="module") + PREPROCESSING_FN)


def imported(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("imported-*"))


def fresh_python(root: Path, python_env, *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env, python = python_env
    env = dict(env, PYTHONPATH=os.pathsep.join([str(root), env["PYTHONPATH"]]))
    command = [python, "-c", code] if code else [python, *args]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)


def test_the_feature_fingerprint_reads_the_module_file_without_running_its_package(tmp_path, python_env):
    user_package(tmp_path)
    config = {"data": "d.parquet", "label": "y", "task": "regression", "output": "o",
              "preprocessing_fn": "userpkg.fns:scaled"}
    code = ("import sys; from tfbridge.contracts import PipelineConfig, fingerprints; "
            f"print(fingerprints.features_fingerprint(PipelineConfig.from_dict({config!r})))")
    first = fresh_python(tmp_path, python_env, code=code)
    assert first.returncode == 0, first.stderr
    assert imported(tmp_path) == []
    assert fingerprints.module_file("userpkg.fns") is None  # not on this process's path: found only with it

    with open(tmp_path / "userpkg" / "fns.py", "a") as f:
        f.write("# edited\n")
    second = fresh_python(tmp_path, python_env, code=code)
    assert second.stdout != first.stdout  # the edit counts: the file was found
    assert imported(tmp_path) == []


def test_report_of_a_recorded_run_never_imports_its_preprocessing_fn(tmp_path, python_env):
    user_package(tmp_path)
    rng = np.random.default_rng(1)
    pq.write_table(pa.table({"x": rng.normal(size=300), "y": rng.normal(size=300)}), tmp_path / "d.parquet")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"data": str(tmp_path / "d.parquet"), "label": "y", "task": "regression", "output": str(tmp_path / "out"),
         "preprocessing_fn": "userpkg.fns:scaled"}))
    features = fresh_python(tmp_path, python_env, "-m", "tft_features", "--config", "c.yaml")
    assert features.returncode == 0, features.stderr[-3000:]
    assert imported(tmp_path) == ["imported-module", "imported-package"]  # the user's config names it: run
    for path in tmp_path.glob("imported-*"):
        path.unlink()

    report = fresh_python(tmp_path, python_env, str(Path(sys.executable).with_name("tfbridge")), "report",
                          "--output", str(tmp_path / "out"))
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "out" / "report.html").is_file()
    assert imported(tmp_path) == []

    # The recorded run's raw rows, split as the stage split them (what the report and the checks read).
    code = ("from pathlib import Path\n"
            "from tfbridge.contracts import ArtifactLayout, FeaturesManifest, PipelineConfig\n"
            "from tft_features.pipeline import split_rows\n"
            f"layout = ArtifactLayout(Path({str(tmp_path / 'out')!r}))\n"
            "config = PipelineConfig.from_dict(FeaturesManifest.read(layout.features_manifest_path).config)\n"
            "print(split_rows(config, 'eval', 1000).num_rows)\n")
    rows = fresh_python(tmp_path, python_env, code=code)
    assert rows.returncode == 0 and int(rows.stdout.split()[-1]) > 0, rows.stderr[-3000:]
    assert imported(tmp_path) == []
