"""Hashing by a config alone: a category hashed into buckets, text tokens hashed, a vocabulary with three OOV
buckets and a cross of three text columns. TF's StringToHashBucketFast is FarmHash's Fingerprint64, which no ONNX op
computes (tests/onnx_export/test_hash_lowering.py): `tfbridge run` refuses such a config before its first stage,
naming the step and why (exit 2, nothing written), and `tfbridge features` and `tfbridge train` run it. The SavedModel
is the model then; its predictions on the raw rows are finite and do not depend on which rows share a batch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import tensorflow as tf
import yaml

from tests.helpers import committed
from tfbridge.cli import main
from tfbridge.contracts import ModelManifest, PipelineConfig

N = 400
SHOPS = ["Bäckerei", "東京店", "", "shop_X_1", "😀 corner", "Ωmega"]
WORDS = ["fresh", "bread", "Café", "naïve", "東京", "cheap", "🙂"]


def frame(rng) -> pd.DataFrame:
    shop = rng.choice(SHOPS, N)
    city = rng.choice(["Berlin", "Zürich", "", "Kyōto"], N)
    brand = np.array([f"brand {i % 40} é" for i in rng.permutation(N)], object)  # 40 brands: a tail outside top_k
    text = [" ".join(rng.choice(WORDS, rng.integers(0, 5))) for _ in range(N)]
    effect = {s: i for i, s in enumerate(SHOPS)}
    # the label depends on each column, so the model has something to learn from them
    y = (np.array([effect[s] for s in shop]) + (city == "Zürich") * 2.0 + np.array(["cheap" in t for t in text])
         + np.array([int(b.split()[1]) % 3 for b in brand]) + rng.normal(0, 0.3, N))
    return pd.DataFrame({"id": np.arange(N), "y": y, "shop": shop, "city": city, "brand": brand, "review": text})


def test_hash_cross_and_oov_buckets_train_and_run_refuses_them_before_it_starts(tmp_path, capsys):
    raw = frame(np.random.default_rng(4))
    raw.to_parquet(tmp_path / "sales.parquet", index=False)
    config = {"data": {"path": str(tmp_path / "sales.parquet")}, "label": "y", "task": "regression",
              "features": {"shop": [{"cross": {"with": ["city", "brand"], "hash_buckets": 64}}],
                           "city": [{"hash": 16}],
                           "brand": [{"vocabulary": {"top_k": 10, "num_oov_buckets": 3}}],
                           "review": [{"normalize_text": {"stopwords": "none"}}, {"hash": 32}]},
              "output": str(tmp_path / "out"), "split": {"eval_fraction": 0.2},
              "train": {"epochs": 2, "batch_size": 32, "hidden_units": [8], "workers": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) == 2
    said = capsys.readouterr()
    assert "the step 'brand: vocabulary' does not export to ONNX yet" in said.err, said.err  # keys sorted by YAML
    assert not (tmp_path / "out").exists()  # refused before the first stage
    assert main(["features", "--config", str(tmp_path / "c.yaml")]) == 0
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 0
    layout = PipelineConfig.from_yaml(tmp_path / "c.yaml").layout

    manifest = ModelManifest.read(layout.model_manifest_path)
    assert {name: c.dtype for name, c in manifest.inputs.items()} == dict.fromkeys(
        ["shop", "city", "brand", "review"], "string")
    assert manifest.onnx is None

    signature = tf.saved_model.load(str(committed(layout).saved_model_dir)).signatures["serving_default"]
    names = manifest.input_names

    def predict(rows: pd.DataFrame) -> np.ndarray:
        return signature(**{names[c]: tf.constant(rows[c].to_numpy().astype(str)) for c in names})["prediction"].numpy()

    whole = predict(raw)
    assert np.isfinite(whole).all() and whole.std() > 0
    order = np.random.default_rng(0).permutation(N)
    np.testing.assert_allclose(predict(raw.iloc[order])[np.argsort(order)], whole, rtol=1e-6, atol=1e-6)
