"""`tfbridge score` as a job: through spark-submit on a Spark standalone master and worker started on
127.0.0.1 from the pyspark install, in local[2,3] with a Python worker that crashes once (Spark retries
the task), on CSV, and on bad input (nulls the model cannot take, an unreadable file, a CSV value that
does not parse)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyspark
import pytest

from spark_infer.job import run_score
from tests import sparkcluster
from tests.helpers import committed
from tests.onnx_export.test_parity import fresh_rows
from tfbridge.contracts import DataError, ModelManifest


@pytest.fixture
def standalone_cluster(python_env, tmp_path):
    env, python = python_env
    with sparkcluster.standalone_cluster(tmp_path, env, python) as cluster:
        yield cluster


def test_spark_submit_scores_on_a_standalone_master(exported, standalone_cluster, tmp_path):
    """README's spark-submit line, against the master and worker the fixture started."""
    url, env = standalone_cluster
    layout = exported.layout
    import spark_infer.__main__ as entry

    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    done = subprocess.run([str(submit), "--master", url, entry.__file__, "--model", str(layout.model_dir),
                           "--input", exported.data.path, "--output", str(tmp_path / "scores"),
                           "--id-column", "target"],
                          env=dict(env, PYSPARK_DRIVER_PYTHON=sys.executable), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "worker").glob("app-*/*/stderr"))  # the standalone worker ran the tasks
    scores = pq.read_table(tmp_path / "scores").to_pandas().sort_values("target")
    local = pq.read_table(layout.scores_dir).to_pandas().sort_values("target")  # `tfbridge run`'s local[*] scores
    assert list(scores.columns) == ["target", "prediction"] and len(scores) == len(local) == 3000
    np.testing.assert_allclose(scores["prediction"].to_numpy(), local["prediction"].to_numpy(), rtol=1e-6)


def test_a_standalone_cluster_scores_from_s3_into_s3_as_local_spark_does(exported, standalone_cluster, s3, tmp_path):
    """The model, the raw rows and the scores on the S3 server: `tfbridge score --master spark://...` brings s3a to
    the cluster's executors, which read and write only the store; the scores equal `tfbridge run`'s on local disk,
    joined by id."""
    url, env = standalone_cluster
    env = {**env, **s3.env, "SPARK_CONF_DIR": str(tmp_path / "spark-conf")}
    (tmp_path / "spark-conf").mkdir()
    # s3proxy implements no bulk delete: s3a deletes key by key, as a user of such a server sets.
    (tmp_path / "spark-conf" / "spark-defaults.conf").write_text("spark.hadoop.fs.s3a.multiobjectdelete.enable false\n")
    layout = exported.layout
    copy = ("import sys; from pathlib import Path; from tfbridge.storage import Location; "
            "Location.of(sys.argv[2]).upload(Path(sys.argv[1])); "
            "Location.of(sys.argv[4]).write_bytes(Path(sys.argv[3]).read_bytes())")
    subprocess.run([sys.executable, "-c", copy, str(layout.model_dir), "s3://runs/model", exported.data.path,
                    "s3://data/rows.parquet"], env=env, check=True, timeout=120)
    script = os.path.join(os.path.dirname(sys.executable), "tfbridge")
    done = subprocess.run([script, "score", "--model", "s3://runs/model", "--input", "s3://data/rows.parquet",
                           "--output", "s3://runs/scores", "--master", url, "--id-column", "target"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "worker").glob("app-*/*/stderr"))  # the standalone worker's executors ran the tasks
    assert "_tfbridge_score.json" in [Path(k).name for k in s3.objects("runs") if k.startswith("scores/")]
    scores = pq.read_table(s3.data / "runs" / "scores").to_pandas().set_index("target")
    local = pq.read_table(layout.scores_dir).to_pandas().set_index("target")
    assert len(scores) == len(local) == 3000 and set(scores.index) == set(local.index)
    np.testing.assert_allclose(scores.loc[local.index, "prediction"], local["prediction"], rtol=1e-6)


def test_a_crashed_python_worker_is_retried_and_every_row_is_scored_once(exported, python_env, tmp_path):
    env, _ = python_env
    marker = tmp_path / "fault-fired"
    env = dict(env, TFBRIDGE_SCORE_FAULT_ONCE=str(marker))
    script = os.path.join(os.path.dirname(sys.executable), "tfbridge")
    done = subprocess.run([script, "score", "--model", str(exported.layout.model_dir), "--input", exported.data.path,
                           "--output", str(tmp_path / "scores"), "--master", "local[2,3]", "--id-column", "target"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.exists()  # a Python worker did die mid-job
    log = (tmp_path / "scores.log").read_text()  # Spark's output, kept off the quiet console, beside the scores
    assert "Python worker exited unexpectedly" in log or "crashed" in log, log[-3000:]
    scores = pq.read_table(tmp_path / "scores").to_pandas()
    assert len(scores) == 3000 and scores["target"].is_unique
    local = pq.read_table(exported.layout.scores_dir).to_pandas().set_index("target")
    np.testing.assert_allclose(scores.set_index("target").loc[local.index, "prediction"], local["prediction"],
                               rtol=1e-6)


@pytest.fixture(scope="module")
def fresh_raw(exported, tmp_path_factory):
    """3,000 fresh raw rows with the edge cases and a row id, as Parquet and as CSV."""
    stats = json.loads(committed(exported.layout).stats_path.read_text())["features"]
    table = fresh_rows(seed=41, stats=stats)
    table = table.append_column("row_id", pa.array(np.arange(table.num_rows)))
    root = tmp_path_factory.mktemp("fresh")
    pq.write_table(table, root / "rows.parquet")
    table.to_pandas().to_csv(root / "rows.csv", index=False)
    return table, root


def predictions(path: Path) -> np.ndarray:
    scores = pq.read_table(path).to_pandas()
    return scores.iloc[np.argsort(scores["row_id"].astype(int).to_numpy())]["prediction"].to_numpy()


def no_staging_left(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if "-staging-" in p.name]


def test_csv_input_scores_as_its_parquet_does(exported, spark, fresh_raw, tmp_path):
    table, root = fresh_raw
    model = str(exported.layout.model_dir)
    run_score(model, str(root / "rows.parquet"), str(tmp_path / "from_parquet"), id_column="row_id", spark=spark)
    result = run_score(model, str(root / "rows.csv"), str(tmp_path / "from_csv"), id_column="row_id", spark=spark)
    assert result.rows == table.num_rows
    from_csv, from_parquet = predictions(tmp_path / "from_csv"), predictions(tmp_path / "from_parquet")
    assert len(from_csv) == table.num_rows and np.isfinite(from_csv).all()
    np.testing.assert_allclose(from_csv, from_parquet, rtol=1e-6)


def test_nulls_in_a_column_without_impute_stop_the_job_naming_it(exported, spark, fresh_raw, tmp_path):
    table, _ = fresh_raw
    manifest = ModelManifest.read(exported.layout.model_manifest_path)
    column = next(n for n, c in manifest.inputs.items() if c.dtype == "float" and not c.nullable)
    values = table.column(column).to_numpy().copy()
    values[[5, 700, 2999]] = np.nan
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, pa.array(values)), bad)
    with pytest.raises(DataError, match=rf"column '{column}' has missing values the model cannot score: "
                                        rf"3 of 3,000 rows of {bad} are null or NaN.*impute"):
        run_score(str(exported.layout.model_dir), str(bad), str(tmp_path / "scores"), spark=spark)
    assert not (tmp_path / "scores").exists() and no_staging_left(tmp_path)


def test_an_unreadable_file_is_named_and_an_earlier_output_stays(exported, spark, fresh_raw, tmp_path):
    table, root = fresh_raw
    model, out = str(exported.layout.model_dir), tmp_path / "scores"
    run_score(model, str(root / "rows.parquet"), str(out), id_column="row_id", spark=spark)
    before = predictions(out)
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(table.slice(0, 1000), shards / "part-0.parquet")
    pq.write_table(table.slice(1000), shards / "part-1.parquet")
    data = (shards / "part-1.parquet").read_bytes()
    (shards / "part-1.parquet").write_bytes(data[: len(data) // 2] + bytes(500) + data[-8:])  # footer garbled
    with pytest.raises(DataError, match=rf"{shards / 'part-1.parquet'}: cannot be read"):
        run_score(model, str(shards), str(out), mode="overwrite", spark=spark)
    np.testing.assert_array_equal(predictions(out), before)
    assert no_staging_left(tmp_path)
    csv = tmp_path / "bad.csv"
    frame = table.to_pandas()
    frame["z"] = frame["z"].astype(object)
    frame.loc[100, "z"] = "1.5e"  # not a number
    frame.to_csv(csv, index=False)
    with pytest.raises(DataError, match=rf"column 'z' of {csv} has a value that is not a number: '1.5e'"):
        run_score(model, str(csv), str(out), mode="overwrite", spark=spark)
    np.testing.assert_array_equal(predictions(out), before)
