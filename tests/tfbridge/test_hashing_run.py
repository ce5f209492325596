"""Hashing by a config alone through `tfbridge run`: a category hashed into buckets, text tokens hashed, a
vocabulary with three OOV buckets and a cross of three text columns. The graph hashes with onnxruntime-extensions'
StringToHashBucketFast (FarmHash's Fingerprint64, as TF: tests/onnx_export/test_hash_lowering.py), checked at every
hand-off (SavedModel vs ONNX on every row, Spark vs ONNX by id), on rows of unseen brands, shops and words too.
Its predictions do not depend on which rows share a batch. A NUL character, which the graph's text ops would cut
at, stops the feature stage naming the column and the file, and stops a scorer naming the column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml

from spark_infer import load_model, score
from tests.helpers import check_hand_offs, committed, tf_inputs
from tfbridge.cli import main
from tfbridge.contracts import DataError, ModelManifest, PipelineConfig

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


def config(tmp_path, path) -> str:
    body = {"data": {"path": str(path)}, "label": "y", "task": "regression",
            "features": {"shop": [{"cross": {"with": ["city", "brand"], "hash_buckets": 64}}],
                         "city": [{"hash": 16}],
                         "brand": [{"vocabulary": {"top_k": 10, "num_oov_buckets": 3}}],
                         "review": [{"normalize_text": {"stopwords": "none"}}, {"hash": 32}]},
            "output": str(tmp_path / "out"), "split": {"eval_fraction": 0.2},
            "train": {"epochs": 2, "batch_size": 32, "hidden_units": [8], "workers": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(body, allow_unicode=True))
    return str(tmp_path / "c.yaml")


def test_hash_cross_and_oov_buckets_export_and_agree_at_every_hand_off(tmp_path, spark):
    raw = frame(np.random.default_rng(4))
    raw.to_parquet(tmp_path / "sales.parquet", index=False)
    assert main(["run", "--config", config(tmp_path, tmp_path / "sales.parquet")]) == 0
    layout = PipelineConfig.from_yaml(tmp_path / "c.yaml").layout
    manifest = ModelManifest.read(layout.model_manifest_path)
    assert manifest.onnx.custom_ops_library == "onnxruntime_extensions"
    check_hand_offs(layout, raw, "id", "id", "regression", float(raw["y"].std()), spark, tmp_path / "sales.parquet")

    # Fresh rows: unseen brands (the OOV buckets), shops, cities and words, non-ASCII and long text.
    fresh = frame(np.random.default_rng(5))
    fresh["brand"] = [f"new brand {i} ß" for i in range(N)]
    fresh["city"] = fresh["city"].where(fresh.index % 3 > 0, "Genève")
    fresh["review"] = fresh["review"].where(fresh.index % 4 > 0, "unseen Wörter 😀 " * 40)
    model = load_model(layout.model_dir)
    whole = model.predict(fresh)["prediction"]
    assert np.isfinite(whole).all() and whole.std() > 0
    signature = tf.saved_model.load(str(committed(layout).saved_model_dir)).signatures["serving_default"]
    saved = signature(**tf_inputs(model.feeds(fresh)))["prediction"].numpy()
    np.testing.assert_allclose(whole, saved, rtol=1e-4, atol=1e-5 * float(raw["y"].std()))
    scored = score(spark.createDataFrame(fresh), model).toPandas().set_index("id")["prediction"]
    np.testing.assert_allclose(scored.loc[fresh["id"]].to_numpy(), whole, rtol=1e-6, atol=0)
    order = np.random.default_rng(0).permutation(N)
    np.testing.assert_allclose(model.predict(fresh.iloc[order])["prediction"][np.argsort(order)], whole, rtol=1e-6,
                               atol=1e-6)

    nul = fresh.head(3).assign(review=["fine", "cut\x00here", ""])
    with pytest.raises(DataError, match=r"column 'review' has a NUL character .* 'cut\\x00here'"):
        model.predict(nul)


def test_a_nul_character_stops_the_feature_stage_naming_column_and_file(tmp_path, capsys):
    raw = frame(np.random.default_rng(6))
    raw.loc[7, "city"] = "Zü\x00rich"
    raw.to_parquet(tmp_path / "sales.parquet", index=False)
    assert main(["run", "--config", config(tmp_path, tmp_path / "sales.parquet")]) != 0
    err = capsys.readouterr().err
    assert "column 'city' has a NUL character (U+0000) in " in err and "sales.parquet" in err, err
