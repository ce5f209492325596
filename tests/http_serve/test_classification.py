"""A text classifier behind `tfbridge serve`: labels and probabilities equal to the Spark scores of the `tfbridge
run` that made it, joined by the raw data's unique `target`.

The label has three classes, one of them non-ASCII, learnt from a category and a free-text column (normalised,
stop words, a vocabulary); rows go in as 500-row requests of both forms and as single rows sent
by concurrent clients, so that the server batches them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.http_serve.serving import instances, metric, running, v2_inputs
from tests.tft_features.test_pipeline_parity import make_table
from tfbridge.cli import main
from tfbridge.contracts import ModelManifest, PipelineConfig

CLASSES = ["bas", "moyen", "élevé 東"]
FEATURES = {"text": [{"normalize_text": {"stopwords": "english"}}, {"vocabulary": {"frequency_threshold": 2}}],
            "cat": ["vocabulary"], "z": ["z_score"], "miss_mean": [{"impute": "mean"}]}
PROBABILITY_TOLERANCE = 1e-6  # the issue's; a batch of another size sums float32 in another order
CHUNK = 500


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """`tfbridge run` of a 3-class text classifier (6 epochs, 1 worker): the model, its raw rows and Spark scores."""
    root = tmp_path_factory.mktemp("classifier")
    table = make_table(seed=9)
    grades = [max({"a": 2, "b": 1}.get(cat, 0), int("great," in text))  # "great," makes a "bas" a "moyen"
              for cat, text in zip(table.column("cat").to_pylist(), table.column("text").to_pylist())]
    table = table.append_column("grade", pa.array([CLASSES[g] for g in grades]))
    pq.write_table(table, root / "raw.parquet")
    config = {"data": {"path": str(root / "raw.parquet")}, "label": "grade", "task": "multiclass",
              "features": FEATURES, "output": str(root / "out"),
              "train": {"epochs": 6, "batch_size": 128, "hidden_units": [8], "workers": 1}}
    (root / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(root / "c.yaml")]) == 0
    layout = PipelineConfig.from_yaml(root / "c.yaml").layout
    manifest = ModelManifest.read(layout.model_manifest_path)
    scores = pq.read_table(str(layout.scores_dir)).to_pandas().set_index("target")
    return {"dir": layout.model_dir, "columns": manifest.inputs, "classes": list(manifest.classes),
            "raw": table.to_pandas(), "scores": scores}


def test_labels_and_probabilities_as_the_bulk_scores(classifier, tmp_path):
    raw, columns, scores = classifier["raw"], classifier["columns"], classifier["scores"]
    assert sorted(classifier["classes"]) == sorted(CLASSES)
    got: dict[float, tuple[str, list[float]]] = {}
    with running(classifier["dir"], tmp_path / "serve.log", "--max-delay-ms", "5") as (_, client):
        for start in range(0, len(raw), CHUNK):
            batch = raw.iloc[start:start + CHUNK]
            response = client.post("/v2/models/out/infer", json=v2_inputs(batch, columns))
            assert response.status_code == 200, response.text
            labels, probabilities = response.json()["outputs"]
            assert (labels["name"], labels["datatype"], labels["shape"]) == ("prediction", "BYTES", [len(batch)])
            assert (probabilities["name"], probabilities["datatype"], probabilities["shape"]) == \
                ("prediction_probabilities", "FP64", [len(batch), len(CLASSES)])
            by_row = np.array(probabilities["data"]).reshape(len(batch), len(CLASSES)).tolist()
            got.update(zip(batch["target"], zip(labels["data"], by_row)))
            as_instances = client.post("/v1/models/out:predict", json={"instances": instances(batch, columns)})
            assert as_instances.status_code == 200, as_instances.text
            for target, answer in zip(batch["target"], as_instances.json()["predictions"]):
                assert answer == {"prediction": got[target][0], "prediction_probabilities": answer[
                    "prediction_probabilities"]}
                np.testing.assert_allclose(answer["prediction_probabilities"], got[target][1], rtol=0,
                                           atol=PROBABILITY_TOLERANCE)

        def single(i: int):
            row = raw.iloc[i:i + 1]
            answer = client.post("/v1/models/out:predict", json={"instances": instances(row, columns)})
            assert answer.status_code == 200, answer.text
            return row["target"].iloc[0], answer.json()["predictions"][0]

        with ThreadPoolExecutor(16) as pool:
            singles = list(pool.map(single, range(0, len(raw), 10)))
        runs = metric(client, "tfbridge_serve_batch_rows_count")
    assert runs < len(raw) // CHUNK * 2 + len(singles)  # some single rows were scored together

    want = scores.loc[list(got)]
    assert [got[t][0] for t in want.index] == want["prediction"].tolist()  # every label equal
    spark = np.stack(want["prediction_probabilities"].to_numpy())
    np.testing.assert_allclose(np.array([got[t][1] for t in want.index]), spark, rtol=0, atol=PROBABILITY_TOLERANCE)
    for target, answer in singles:
        assert answer["prediction"] == scores.loc[target, "prediction"]
        np.testing.assert_allclose(answer["prediction_probabilities"], scores.loc[target, "prediction_probabilities"],
                                   rtol=0, atol=PROBABILITY_TOLERANCE)
    assert len(set(want["prediction"])) == len(CLASSES)  # the model tells the classes apart: labels are a test

