"""robust, max_abs and z_score per key through `tfbridge run` by a config alone, checked at every hand-off.

A price scaled within its shop (`z_score: {per: shop}`), the shop's text keys non-ASCII, empty (a missing key)
or seen once (some only in the eval split: unseen in training, left unscaled as TFT leaves them); a heavy-tailed
number through `robust` and `max_abs`. The SavedModel against ONNX on every row, then the Spark scores the run
wrote against ONNX, joined by id; the stats the run wrote against pandas on the train split.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.helpers import check_hand_offs, committed, decode_split
from tfbridge.cli import main
from tfbridge.contracts import PipelineConfig

N = 300
SHOPS = {"north": 10.0, "Süd": 100.0, "東京": 1_000.0, "": 50.0}


def table(rng) -> pd.DataFrame:
    shop = rng.choice(list(SHOPS), N).astype(object)
    shop[:10] = [f"pop-up {i}" for i in range(10)]  # one row each
    price = np.array([SHOPS.get(s, 20.0) for s in shop]) * rng.lognormal(0, 0.3, N)
    size = rng.standard_t(2, N) * 10
    y = np.log(price) - np.log([SHOPS.get(s, 20.0) for s in shop]) + 0.05 * np.clip(size, -30, 30)
    return pd.DataFrame({"id": np.arange(N), "y": y + rng.normal(0, 0.05, N), "shop": shop, "price": price,
                         "size": size, "weight": size})


def test_robust_max_abs_and_z_score_per_key_through_every_hand_off(tmp_path):
    raw = table(np.random.default_rng(11))
    raw.to_csv(tmp_path / "shops.csv", index=False)
    config = {"data": {"path": str(tmp_path / "shops.csv")}, "label": "y", "task": "regression",
              "features": {"price": [{"z_score": {"per": "shop"}}], "size": ["robust"], "weight": ["max_abs"]},
              "output": str(tmp_path / "out"), "split": {"eval_fraction": 0.25},
              "train": {"epochs": 2, "batch_size": 32, "hidden_units": [8], "workers": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) == 0
    layout = PipelineConfig.from_yaml(tmp_path / "c.yaml").layout

    text = pd.read_csv(tmp_path / "shops.csv", dtype={"shop": str}, keep_default_na=False)
    assert (text["shop"] == "").any()
    check_hand_offs(layout, text, "id", "id", "regression", float(raw["y"].std()))

    train = decode_split(layout.features_dir, "train")
    rows = text.iloc[_ids_of(train, text)]
    assert not text["shop"].isin(rows["shop"]).all()  # some pop-up shops are in the eval split alone: unseen
    stats = json.loads(committed(layout).stats_path.read_text())["features"]
    assert stats["price"]["keys"] == rows["shop"].nunique()
    assert stats["weight"]["max_abs"] == pytest.approx(rows["weight"].abs().max(), rel=1e-6)
    groups = rows.groupby("shop")["price"]
    want = (rows["price"] - rows["shop"].map(groups.mean())) / rows["shop"].map(groups.std(ddof=0)).replace(0, 1)
    np.testing.assert_allclose(np.asarray(train["price"]).reshape(-1), want, rtol=1e-4, atol=1e-4)


def _ids_of(split: dict, text: pd.DataFrame) -> np.ndarray:
    """The raw rows of a decoded split, found by their label (unique floats, kept exactly as float32)."""
    position = {np.float32(v): i for i, v in enumerate(text["y"])}
    return np.array([position[np.float32(v)] for v in np.asarray(split["y"]).reshape(-1)])
