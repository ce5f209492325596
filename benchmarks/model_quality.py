"""Model quality on real tables: our default model next to gradient-boosted trees, same split, one run.

    .venv/bin/python benchmarks/model_quality.py [--tables diamonds,biopsy] [--train epochs=20 ...]

Tables: diamonds (the demo's config) and the eight R tables of the test zoo
(tests/tfbridge/test_real_tables.py: their feature configs but for QUALITY_FEATURES,
all rows instead of the tests' sample; rows whose label is missing dropped). Each table goes
through `tfbridge features` and `tfbridge train` with the `train:` defaults
(diamonds: the demo's own `train:` section); `--train key=value` overrides a
default for every table. On the same train/eval split (the feature stage's,
read back with tft_features.pipeline.split_rows), scikit-learn's
HistGradientBoosting (defaults, categorical columns as categories, the text
column left out) and XGBoost (if installed; defaults, hist, native
categories) are trained on the raw columns. Regression scores R^2 in label
units (a log label transform is applied to the trees too), binary AUC,
multiclass accuracy. Prints a table with each model's eval metric and train
time, and our model minus the best tree.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRIC = {"regression": "r2", "binary": "auc", "multiclass": "accuracy"}
MAX_TREE_CATEGORIES = 255  # HistGradientBoosting's most categories in a column


def tables() -> dict[str, dict]:
    """Every benchmark table: name -> {label, task, features, train, member (R CSV) or None for diamonds}."""
    from tests.tfbridge.test_real_tables import ZOO

    demo = yaml.safe_load((Path(__file__).resolve().parents[1] / "tfbridge/configs/diamonds.yaml").read_text())
    out = {"diamonds": {"label": demo["label"], "task": demo["task"], "features": demo["features"],
                        "train": {k: v for k, v in demo["train"].items() if k != "workers"}, "member": None}}
    for name, spec in ZOO.items():
        features = {**spec["features"], **QUALITY_FEATURES.get(name, {})}
        out[name] = {"label": spec["label"], "task": spec["task"], "features": features, "train": {},
                     "member": spec["member"]}
    return out


# Where the zoo's config is lossy on purpose (its tests cover quantile buckets), the column as a user after
# quality would give it: chile's statusquo, the strongest predictor, as a number instead of 4 buckets.
QUALITY_FEATURES = {"chile": {"statusquo": [{"impute": "median"}, "z_score"]}}


def write_table(name: str, spec: dict, root: Path) -> Path:
    """The whole table as Parquet (R's NA as null), rows with a missing label dropped."""
    from tfbridge.datasets import diamonds_table

    if spec["member"] is None:
        table = diamonds_table()
    else:
        from tests.tfbridge.test_real_tables import r_csv

        table = pacsv.read_csv(pa.py_buffer(r_csv(spec["member"]).encode()),
                               convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        table = table.rename_columns(["rownames", *table.column_names[1:]])
    table = table.filter(pa.compute.is_valid(table.column(spec["label"])))
    path = root / f"{name}.parquet"
    pq.write_table(table, path)
    return path


def train_ours(name: str, spec: dict, data: Path, root: Path, overrides: dict, workers: int):
    """(config, metrics.json, seconds of `tfbridge train`) for our model on the table."""
    from tfbridge.cli import main
    from tfbridge.contracts import ModelManifest, PipelineConfig
    from tfbridge.contracts.layout import METRICS

    config = {"data": {"path": str(data)}, "label": spec["label"], "task": spec["task"],
              "features": spec["features"], "output": str(root / name),
              "train": {**spec["train"], **overrides, "workers": workers}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["features", "--config", str(path)]) == 0, name
    start = time.perf_counter()
    assert main(["train", "--config", str(path)]) == 0, name
    seconds = time.perf_counter() - start
    layout = PipelineConfig.from_yaml(path).layout
    metrics = ModelManifest.read(layout.model_manifest_path).file(layout.model_dir, METRICS).read_text()
    return PipelineConfig.from_yaml(path), json.loads(metrics), seconds


def raw_frames(config, spec: dict):
    """(X_train, y_train, X_eval, y_eval) of the raw columns the trees take: categories (a vocabulary
    step) as pandas categories, numbers as floats, dates (a date step) as days since 1970, text
    (normalize_text) left out."""
    import pandas as pd

    from tft_features.pipeline import split_rows

    def first_step(steps) -> str:
        names = [s if isinstance(s, str) else next(iter(s)) for s in steps]
        return ("text" if "normalize_text" in names else "category" if "vocabulary" in names
                else "date" if {"calendar", "cyclical", "since"} & set(names) else "number")

    kinds = {column: first_step(steps) for column, steps in spec["features"].items()}
    frames = []
    for split in ("train", "eval"):
        frame = split_rows(config, split, 10**9).to_pandas()
        x = pd.DataFrame(index=frame.index)
        for column, kind in kinds.items():
            if kind == "category":
                x[column] = frame[column].astype(str).astype("category")
            elif kind == "number":
                x[column] = frame[column].astype(np.float64)
            elif kind == "date":
                x[column] = (pd.to_datetime(frame[column], utc=True) - pd.Timestamp(0, tz="UTC")).dt.days
        frames += [x, frame[spec["label"]]]
    categories = {c: pd.api.types.union_categoricals([frames[0][c], frames[2][c]]).categories
                  for c, k in kinds.items() if k == "category"}
    for x in (frames[0], frames[2]):
        for column, values in categories.items():
            x[column] = pd.Categorical(x[column].astype(str), categories=values)
            if len(values) > MAX_TREE_CATEGORIES:  # HistGradientBoosting refuses more: their codes, as numbers
                x[column] = x[column].cat.codes.astype(np.float64)
    return frames


def score_trees(model, task: str, log_label: bool, frames) -> tuple[float, float]:
    """(eval metric, train seconds) of a scikit-learn-style model on the raw frames."""
    from tf_train.metrics import classification_metrics, regression_metrics

    x_train, y_train, x_eval, y_eval = frames
    start = time.perf_counter()
    if task == "regression":
        model.fit(x_train, np.log(y_train) if log_label else y_train)
        seconds = time.perf_counter() - start
        pred = model.predict(x_eval)
        return regression_metrics(y_eval, np.exp(pred) if log_label else pred)["r2"], seconds
    classes = sorted(set(y_train))
    index = {c: i for i, c in enumerate(classes)}
    model.fit(x_train, y_train.map(index).to_numpy())
    seconds = time.perf_counter() - start
    known = y_eval.isin(index).to_numpy()
    metrics = classification_metrics(y_eval[known].map(index).to_numpy(), model.predict_proba(x_eval[known]))
    return metrics[METRIC[task]], seconds


def tree_models(task: str) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    models = {"HistGradientBoosting": (HistGradientBoostingRegressor if task == "regression" else
                                       HistGradientBoostingClassifier)(categorical_features="from_dtype",
                                                                       random_state=0)}
    try:
        import xgboost
    except ImportError:
        return models
    kind = xgboost.XGBRegressor if task == "regression" else xgboost.XGBClassifier
    models["XGBoost"] = kind(tree_method="hist", enable_categorical=True, random_state=0)
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", help="comma-separated subset of the tables (default: all)")
    parser.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override a train: default for every table (value parsed as YAML)")
    parser.add_argument("--workers", type=int, default=1, help="training workers (default 1: train.workers auto)")
    parser.add_argument("--work", help="directory for the tables and runs (default: a new temporary one)")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.train)}
    from tfbridge.jobs import setup_logging

    setup_logging()
    root = Path(args.work or tempfile.mkdtemp(prefix="model-quality-"))
    root.mkdir(parents=True, exist_ok=True)
    everything = tables()
    chosen = args.tables.split(",") if args.tables else list(everything)
    rows = []
    for name in chosen:
        spec = everything[name]
        data = write_table(name, spec, root)
        config, metrics, seconds = train_ours(name, spec, data, root, overrides, args.workers)
        task = spec["task"]
        results = {"ours": (metrics["eval"][METRIC[task]], seconds)}
        frames = raw_frames(config, spec)
        log_label = config.train.label_transform == "log"
        for tree, model in tree_models(task).items():
            results[tree] = score_trees(model, task, log_label, frames)
        rows.append((name, task, len(frames[1]), len(frames[3]), results))
        print(f"{name}: {json.dumps(results)}", flush=True)

    trees = sorted({t for *_, results in rows for t in results} - {"ours"})
    print(f"\nour model: train defaults{' with ' + ' '.join(args.train) if args.train else ''}, "
          f"{args.workers} worker(s); eval split of each table\n")
    print("| table | task (metric) | train / eval rows | ours | " + " | ".join(trees)
          + " | ours - best tree | train s (ours / " + " / ".join(trees) + ") |")
    print("|---|---|---:|---:|" + "---:|" * len(trees) + "---:|---:|")
    gaps = []
    for name, task, n_train, n_eval, results in rows:
        best = max(results[t][0] for t in trees)
        gaps.append(results["ours"][0] - best)
        print(f"| {name} | {task} ({METRIC[task]}) | {n_train:,} / {n_eval:,} | {results['ours'][0]:.4f} | "
              + " | ".join(f"{results[t][0]:.4f}" for t in trees)
              + f" | {gaps[-1]:+.4f} | " + " / ".join(f"{results[k][0 + 1]:.1f}" for k in ["ours", *trees]) + " |")
    print(f"\naverage of ours - best tree: {np.mean(gaps):+.4f}; worst {min(gaps):+.4f}")


if __name__ == "__main__":
    main()
