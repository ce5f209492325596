"""Helpers the test modules import: decoding the feature stage's outputs, the all-transforms config."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class committed:
    """The committed artifacts of a run on local disk, by the paths its manifests name (for tests to open)."""

    def __init__(self, layout):
        self.layout = layout

    def _features(self):
        from tfbridge.contracts import FeaturesManifest

        return FeaturesManifest.read(self.layout.features_manifest_path)

    def _model(self):
        from tfbridge.contracts import ModelManifest

        return ModelManifest.read(self.layout.model_manifest_path)

    @property
    def features_dir(self) -> Path:
        """The feature stage's attempt: transform_fn/ (`tft.TFTransformOutput` reads it), transformed/, stats.json."""
        return self._features().directory(self.layout.features_dir).local

    @property
    def transformed_dir(self) -> Path:
        return self.features_dir / "transformed"

    @property
    def stats_path(self) -> Path:
        return self.features_dir / "stats.json"

    @property
    def model_attempt(self) -> Path:
        return self.layout.model_dir.local / self._model().attempt

    @property
    def saved_model_dir(self) -> Path:
        return self.model_attempt / "saved_model"

    @property
    def metrics_path(self) -> Path:
        return self.model_attempt / "metrics.json"

    @property
    def eval_predictions_path(self) -> Path:
        return self.model_attempt / "eval_predictions.parquet"

    @property
    def onnx_path(self) -> Path:
        return self.layout.model_dir.local / self._model().onnx.path


def decode_split(features_dir, split: str) -> dict[str, np.ndarray]:
    """Every row of one split's shard files (`features_dir`: a run's features/), as arrays (list features as lists
    of arrays)."""
    import tensorflow_transform as tft

    from tf_train.shards import decode_rows
    from tfbridge.contracts import FeaturesManifest, materialized_feature_spec
    from tfbridge.storage import Location

    features_dir = Location.of(features_dir)
    manifest = FeaturesManifest.read(features_dir / "manifest.json")
    transform = tft.TFTransformOutput(str(manifest.transform_dir(features_dir)))
    spec = materialized_feature_spec(transform.transformed_feature_spec())
    return decode_rows(manifest.shard_paths(features_dir, split), manifest.format, spec)


def run_features_on(root: Path, table, features: dict | None, row_group_size: int,
                    preprocessing_fn: str | None = None):
    """The feature stage on `table` written to `root`/raw.parquet (label `target`, a quarter of the rows for eval,
    output under `root`/out), by the config's `features:` or else a user's `preprocessing_fn` (`module:function`):
    (its config, its result)."""
    import pyarrow.parquet as pq

    from tfbridge.contracts import PipelineConfig
    from tft_features.pipeline import run_features

    pq.write_table(table, root / "raw.parquet", row_group_size=row_group_size)
    config = PipelineConfig.from_dict({
        "data": {"path": str(root / "raw.parquet")}, "label": "target", "task": "regression",
        **({"preprocessing_fn": preprocessing_fn} if preprocessing_fn else {"features": features}),
        "split": {"eval_fraction": 0.25}, "output": str(root / "out")})
    return config, run_features(config)


def decoded_features_run(root: Path, table, features: dict, row_group_size: int) -> dict:
    """`run_features_on`, both splits decoded: its config, the raw table, the splits' features, each split's row ids
    (the label `target` holds 0..n-1, so it joins a row back to the raw table) and stats.json's features."""
    import json

    config, _ = run_features_on(root, table, features, row_group_size)
    splits = {split: decode_split(config.layout.features_dir, split) for split in ("train", "eval")}
    return {"config": config, "raw": table, "splits": splits,
            "ids": {split: splits[split]["target"].astype(np.int64) for split in splits},
            "stats": json.loads(committed(config.layout).stats_path.read_text())["features"]}


def all_features() -> dict:
    """Every transform of the feature library (the feature-stage parity config), plus a vocabulary with
    no OOV bucket (unseen -> -1); the model exported from it is shared by the export and scoring tests."""
    from tests.tft_features.test_pipeline_parity import FEATURES

    return {**FEATURES, "cat_exact": [{"vocabulary": {"num_oov_buckets": 0}}]}


def with_exact_copy(table):
    return table.append_column("cat_exact", table.column("cat"))


def serving_inputs(table, manifest) -> dict[str, np.ndarray]:
    """A pyarrow table as the graph's raw inputs, keyed by graph input name (ModelManifest.input_names): NaN for a
    missing number, "" for a missing string, strings as `str` (onnxruntime mangles bytes)."""
    out = {}
    for name, column in manifest.inputs.items():
        values = table.column(name).to_pylist()
        if column.dtype == "string":
            values = np.array(["" if v is None else v for v in values], object)
        else:
            values = np.array([np.nan if v is None else v for v in values], np.float32)
        out[manifest.input_names[name]] = values
    return out


def tf_inputs(feeds: dict[str, np.ndarray]) -> dict:
    """The same inputs as tensors, for the SavedModel's signature."""
    import tensorflow as tf

    return {k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in feeds.items()}


def onnx_session(model):
    """onnxruntime on the CPU with the text-op library loaded as the scorer loads it; `model` is a path or bytes."""
    from tfbridge.scoring.session import make_session

    return make_session(model, text_ops=True)


def check_hand_offs(layout, raw, id_column: str, scores_id_column: str, task: str, spread: float,
                    spark=None, parquet=None) -> None:
    """After `tfbridge run`: SavedModel vs ONNX on every raw row (regression within 1e-5 of the label's spread
    or 1e-4 relative; labels equal, probabilities within 1e-5), then the Spark scores the run wrote vs ONNX,
    joined by id: the same graph on the same float32 inputs, so within 1e-6 relative (no absolute slack) and
    probabilities within 1e-6; with `spark` and a `parquet` input, also `spark_infer.score()` on it.
    `raw` is a pandas frame of the raw rows with the user's column names."""
    import pyarrow.parquet as pq
    import tensorflow as tf

    from spark_infer import load_model, score

    model = load_model(layout.model_dir)
    onnx_out = _decoded(model.predict(raw))
    signature = tf.saved_model.load(str(committed(layout).saved_model_dir)).signatures["serving_default"]
    saved_out = _decoded({k: v.numpy() for k, v in signature(**tf_inputs(model.feeds(raw))).items()})
    _assert_outputs_agree(onnx_out, saved_out, task, rtol=1e-4, atol=1e-5 * spread, p_atol=1e-5)

    position = {str(v): i for i, v in enumerate(raw[id_column])}
    assert len(position) == len(raw), "ids must be unique"
    frames = [pq.read_table(str(layout.scores_dir)).to_pandas()]
    if spark is not None and parquet is not None:
        frames.append(score(spark.read.parquet(str(parquet)), model).toPandas())
    for scores in frames:
        assert len(scores) == len(raw)
        order = [position[str(v)] for v in scores[scores_id_column]]
        spark_out = {"prediction": scores["prediction"].to_numpy()} if task == "regression" else {
            "label": scores["prediction"].to_numpy(), "probabilities": list(scores["prediction_probabilities"])}
        _assert_outputs_agree(spark_out, {k: np.asarray(v)[order] for k, v in onnx_out.items()}, task, rtol=1e-6,
                              atol=0.0, p_atol=1e-6)


def _assert_outputs_agree(got: dict, want: dict, task: str, rtol: float, atol: float, p_atol: float) -> None:
    if task == "regression":
        np.testing.assert_allclose(got["prediction"], want["prediction"], rtol=rtol, atol=atol)
        return
    assert list(got["label"]) == list(want["label"])
    np.testing.assert_allclose(np.stack(got["probabilities"]), np.stack(want["probabilities"]), rtol=0, atol=p_atol)


def _decoded(outputs: dict) -> dict:
    return {k: np.array([v.decode() if isinstance(v, bytes) else v for v in np.asarray(x).tolist()], object)
            if k == "label" else np.asarray(x) for k, x in outputs.items()}


CHROMIUM = "/usr/bin/chromium"  # Debian's, installed by .ci/run; playwright never downloads a browser here
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def assert_report_renders(output: Path) -> None:
    """report.html in a real headless chromium: no console error, every plot decoded, a screenshot that is not blank."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: `apt-get install -y chromium` (as .ci/run does)"
    plots = sorted((output / "report").glob("*.png"))
    assert len(plots) >= 3, plots
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((output / "report.html").resolve().as_uri(), wait_until="load")
        sizes = page.eval_on_selector_all("img", "images => images.map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        page.screenshot(path=str(output / "report-screenshot.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert len(sizes) == len(plots) and all(done and w > 0 and h > 0 for done, w, h in sizes), sizes
    with Image.open(output / "report-screenshot.png") as shot:
        colours = shot.convert("RGB").resize((200, 200)).getcolors(maxcolors=200 * 200)
    assert shot.size[1] > 2000 and len(colours) > 100, (shot.size, len(colours))
