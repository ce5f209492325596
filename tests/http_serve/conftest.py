"""The model every test of `tfbridge serve` starts from: the shared `tfbridge run`'s export."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from tfbridge.contracts import ModelManifest
from tfbridge.scoring.parity import typical_spread


@pytest.fixture(scope="module")
def model(exported):
    """The model's directory, its raw columns, the raw rows and the Spark scores of the run, by `target`."""
    manifest = ModelManifest.read(exported.layout.model_manifest_path)
    raw = pq.read_table(exported.data.path).to_pandas()
    scores = pq.read_table(str(exported.layout.scores_dir)).to_pandas().set_index("target")
    return {"dir": exported.layout.model_dir, "columns": manifest.inputs, "raw": raw, "scores": scores,
            "outputs": [c for c in scores.columns if c not in raw.columns],
            "spread": typical_spread(scores["prediction"].to_numpy())}
