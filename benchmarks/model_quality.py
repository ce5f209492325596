"""Model quality on real tables: our models (the network, our gbdt) next to gradient-boosted trees, one run.

    .venv/bin/python benchmarks/model_quality.py [--group tune|held_out|all] [--tables diamonds,biopsy]
                                                 [--models network,gbdt] [--train epochs=20 ...]

Two groups of tables, reported apart. "tune": diamonds (the demo's config) and the eight R tables of
the test zoo (tests/tfbridge/test_real_tables.py: their feature configs but for QUALITY_FEATURES, all
rows instead of the tests' sample), the tables the `train:` defaults were chosen on. "held_out": the
R tables of HELD_OUT, which no default was tuned on, so they tell how the defaults generalise: larger,
with high-cardinality ids, skewed counts and money, and text (the two largest: every k-th row, to keep
each under 30,000). Rows whose label is missing are dropped. Each table goes
through `tfbridge features` and `tfbridge train` with the `train:` defaults
(diamonds: the demo's own `train:` section) and `train.model` the models of `--models`:
with several (`model: [network, gbdt]`), each one's result and train time as the run recorded it
(ModelManifest.candidates) and "ours (kept)", the one the run kept (the lower validation loss), timed
as the whole `tfbridge train`. `--train key=value` overrides a default for every table. On the
same train/eval split (the feature stage's, read back with tft_features.pipeline.split_rows), scikit-learn's
HistGradientBoosting (defaults, categorical columns as categories, the text
column left out) and XGBoost (defaults, hist, native categories) are trained
on the raw columns. Regression scores R^2 in label
units (a log label transform is applied to the trees too), binary AUC,
multiclass accuracy. Prints a table per group with each model's eval metric
and train time, and ours (the kept one) minus the best tree, averaged and at worst.
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

from tests.tfbridge.test_real_tables import ZOO, r_csv, vocab  # noqa: E402

METRIC = {"regression": "r2", "binary": "auc", "multiclass": "accuracy"}
MAX_TREE_CATEGORIES = 255  # HistGradientBoosting's most categories in a column


def tables() -> dict[str, dict[str, dict]]:
    """Every benchmark table by group: group -> name -> {label, task, features, train, member (R CSV) or None for
    diamonds, every (the k of every k-th row kept)}."""
    demo = yaml.safe_load((Path(__file__).resolve().parents[1] / "tfbridge/configs/diamonds.yaml").read_text())
    tune = {"diamonds": {"label": demo["label"], "task": demo["task"], "features": demo["features"],
                         "train": {k: v for k, v in demo["train"].items() if k != "workers"}, "member": None,
                         "every": 1}}
    for name, spec in ZOO.items():
        features = {**spec["features"], **QUALITY_FEATURES.get(name, {})}
        tune[name] = {"label": spec["label"], "task": spec["task"], "features": features, "train": {},
                      "member": spec["member"], "every": 1}
    held_out = {name: {"every": 1, **spec, "train": {}} for name, spec in HELD_OUT.items()}
    return {"tune": tune, "held_out": held_out}


# Where the zoo's config is lossy on purpose (its tests cover quantile buckets), the column as a user after
# quality would give it: chile's statusquo, the strongest predictor, as a number instead of 4 buckets.
QUALITY_FEATURES = {"chile": {"statusquo": [{"impute": "median"}, "z_score"]}}


def skewed(missing: bool = False) -> list:
    """A count or an amount of money (long right tail, zeros): log1p then z_score, a missing one as the median."""
    return ([{"impute": "median"}] if missing else []) + ["log1p", "z_score"]


# Tables no default was chosen on, each with the label and config a user would write for it. They differ
# from the tune group in shape: about 20,000-30,000 rows (10x the zoo's), ids with 1,000-3,000 values, skewed
# counts and money as features and labels, a free-text title, many missing values.
HELD_OUT = {
    # IMDb films: the average user rating from the title, year, length, budget (91% missing), votes, MPAA
    # rating (92% missing) and genre flags; r1..r10 (the rating's own histogram) left out. Every 2nd row.
    "movies": {"member": "ggplot2/movies.csv", "every": 2, "label": "rating", "task": "regression",
               "features": {"title": [{"normalize_text": {"stopwords": "english"}}, {"bag_of_words": [1, 2]},
                                      vocab(2000, 3)],
                            "year": ["z_score"], "length": skewed(), "budget": skewed(missing=True),
                            "votes": skewed(), "mpaa": ["vocabulary"],
                            **{genre: ["vocabulary"] for genre in ("Action", "Animation", "Comedy", "Drama",
                                                                   "Documentary", "Romance", "Short")}}},
    # ETH Zurich lecture ratings: the 1-5 score from the student (2,972 ids, hashed) and lecturer (1,128 ids)
    # with the student's semester, lecture age, service course and department. Every 3rd row.
    "insteval": {"member": "lme4/InstEval.csv", "every": 3, "label": "y", "task": "multiclass",
                 "features": {"s": [{"hash": 2000}], "d": [vocab(1000)], "studage": ["vocabulary"],
                              "lectage": ["vocabulary"], "service": ["vocabulary"], "dept": ["vocabulary"]}},
    # Baseball batting seasons 1871-2007: home runs (a count, median 1) from the player (1,228 ids), team
    # (132), league and the season's other counts, many missing in early years.
    "baseball": {"member": "plyr/baseball.csv", "label": "hr", "task": "regression",
                 "features": {"id": [vocab(1000)], "year": ["z_score"], "stint": ["vocabulary"],
                              "team": [vocab(100)], "lg": ["vocabulary"],
                              **{count: skewed() for count in ("g", "ab", "r", "h", "X2b", "X3b")},
                              **{count: skewed(missing=True) for count in ("rbi", "sb", "cs", "bb", "so", "ibb",
                                                                           "hbp", "sh", "sf", "gidp")}}},
    # US married women (1993 CPS): whether she has health insurance through her own job, from her hours,
    # husband's income and coverage, schooling, race, experience, children and region (the survey weight
    # left out).
    "hi": {"member": "Ecdat/HI.csv", "label": "whi", "task": "binary",
           "features": {"whrswk": ["z_score"], "hhi": ["vocabulary"], "hhi2": ["vocabulary"],
                        "education": ["vocabulary"], "race": ["vocabulary"], "hispanic": ["vocabulary"],
                        "experience": ["z_score"], "kidslt6": ["z_score"], "kids618": ["z_score"],
                        "husby": ["yeo_johnson", "z_score"], "region": ["vocabulary"]}},
    # RAND Health Insurance Experiment: doctor visits in a year (a count: 0 for a third, up to 77) from the
    # plan's coinsurance and deductible, income, chronic diseases, health, age, sex and flags.
    "doctorcontacts": {"member": "Ecdat/DoctorContacts.csv", "label": "mdu", "task": "regression",
                       "features": {"lc": ["z_score"], "idp": ["vocabulary"], "lpi": ["z_score"],
                                    "fmde": ["z_score"], "physlim": ["vocabulary"],
                                    "ndisease": ["yeo_johnson", "z_score"],
                                    "health": ["vocabulary"], "linc": ["z_score"], "lfam": ["z_score"],
                                    "educdec": ["z_score"], "age": ["z_score"], "sex": ["vocabulary"],
                                    "child": ["vocabulary"], "black": ["vocabulary"]}},
    # German health registry 1984-88: whether a person is out of work, from doctor and hospital visits
    # (skewed counts), household income, schooling, age and 0/1 flags (the person's id left out, and `self`,
    # self-employed: a column named `self` fails tf.saved_model.save's signature, "multiple values for
    # argument 'self'").
    "rwm5yr": {"member": "COUNT/rwm5yr.csv", "label": "outwork", "task": "binary",
               "features": {"docvis": skewed(), "hospvis": skewed(), "year": ["vocabulary"],
                            "edlevel": ["vocabulary"], "age": ["z_score"], "female": ["vocabulary"],
                            "married": ["vocabulary"], "kids": ["vocabulary"], "hhninc": skewed(),
                            "educ": ["z_score"]}},
}


def write_table(name: str, spec: dict, root: Path) -> Path:
    """The table (every `every`-th row) as Parquet (R's NA as null), rows with a missing label dropped."""
    from tfbridge.datasets import diamonds_table

    if spec["member"] is None:
        table = diamonds_table()
    else:
        table = pacsv.read_csv(pa.py_buffer(r_csv(spec["member"]).encode()),
                               convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        table = table.rename_columns(["rownames", *table.column_names[1:]])
        table = table.take(np.arange(0, table.num_rows, spec["every"]))
    table = table.filter(pa.compute.is_valid(table.column(spec["label"])))
    path = root / f"{name}.parquet"
    pq.write_table(table, path)
    return path


def train_ours(name: str, spec: dict, data: Path, root: Path, overrides: dict, workers: int):
    """(config, the model manifest, its metrics.json, seconds of `tfbridge train`) for our model (or models) on the
    table."""
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
    manifest = ModelManifest.read(layout.model_manifest_path)
    metrics = manifest.file(layout.model_dir, METRICS).read_text()
    return PipelineConfig.from_yaml(path), manifest, json.loads(metrics), seconds


def raw_frames(config, spec: dict):
    """(X_train, y_train, X_eval, y_eval) of the raw columns the trees take: categories (a vocabulary
    or hash step) as pandas categories, numbers as floats, dates (a date step) as days since 1970, text
    (normalize_text) left out."""
    import pandas as pd

    from tft_features.pipeline import split_rows

    def first_step(steps) -> str:
        names = [s if isinstance(s, str) else next(iter(s)) for s in steps]
        return ("text" if "normalize_text" in names else "category" if {"vocabulary", "hash"} & set(names)
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
    import xgboost
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    kind = xgboost.XGBRegressor if task == "regression" else xgboost.XGBClassifier
    return {"HistGradientBoosting": (HistGradientBoostingRegressor if task == "regression" else
                                     HistGradientBoostingClassifier)(categorical_features="from_dtype",
                                                                     random_state=0),
            "XGBoost": kind(tree_method="hist", enable_categorical=True, random_state=0)}


def print_group(group: str, rows: list, trees: list[str]) -> None:
    """One group's table: per table each model's eval metric and train time and ours (the kept one, with several)
    minus the best tree, then the group's average and worst of that gap (a group alone, so held-out tables are
    never averaged away)."""
    ours = [k for k in rows[0][4] if k.startswith("ours")]
    mine = "ours (kept)" if "ours (kept)" in ours else ours[0]
    print(f"\n{group}:\n")
    print(f"| table | task (metric) | train / eval rows | {' | '.join(ours)} | " + " | ".join(trees)
          + f" | {mine} - best tree | train s ({' / '.join([*ours, *trees])}) |")
    print("|---|---|---:|" + "---:|" * (len(ours) + len(trees)) + "---:|---:|")
    gaps = []
    for name, task, n_train, n_eval, results in rows:
        best = max(results[t][0] for t in trees)
        gaps.append(results[mine][0] - best)
        print(f"| {name} | {task} ({METRIC[task]}) | {n_train:,} / {n_eval:,} | "
              + " | ".join(f"{results[k][0]:.4f}" for k in [*ours, *trees])
              + f" | {gaps[-1]:+.4f} | " + " / ".join("reused" if results[k][1] is None else f"{results[k][1]:.1f}"
                                                  for k in [*ours, *trees]) + " |")
    print(f"\n{group}: average of {mine} - best tree {np.mean(gaps):+.4f}; worst {min(gaps):+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", choices=["tune", "held_out", "all"], default="all",
                        help="tune: the tables the defaults were chosen on; held_out: tables they never saw "
                             "(default: all, each group reported apart)")
    parser.add_argument("--tables", help="comma-separated subset of the group's tables (default: all)")
    parser.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override a train: default for every table (value parsed as YAML)")
    parser.add_argument("--models", default="network,gbdt",
                        help="our models, train.model (default network,gbdt: both trained on the same features, "
                             "'ours (kept)' the one the run kept, by the lower validation loss)")
    parser.add_argument("--workers", type=int, default=1, help="training workers (default 1: train.workers auto)")
    parser.add_argument("--work", help="directory for the tables and runs (default: a new temporary one)")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.train)}
    models = args.models.split(",")
    from tfbridge.jobs import setup_logging

    setup_logging()
    root = Path(args.work or tempfile.mkdtemp(prefix="model-quality-"))
    root.mkdir(parents=True, exist_ok=True)
    groups = {group: specs for group, specs in tables().items() if args.group in (group, "all")}
    if args.tables:
        chosen = args.tables.split(",")
        unknown = set(chosen) - {name for specs in groups.values() for name in specs}
        if unknown:
            parser.error(f"no such table in --group {args.group}: {', '.join(sorted(unknown))}")
        groups = {group: {name: spec for name, spec in specs.items() if name in chosen}
                  for group, specs in groups.items()}
    rows = {group: [] for group in groups}
    for group, specs in groups.items():
        for name, spec in specs.items():
            data = write_table(name, spec, root)
            task, results = spec["task"], {}
            config, manifest, metrics, seconds = train_ours(
                name, spec, data, root, {**overrides, "model": models if len(models) > 1 else models[0]},
                args.workers)
            for candidate in manifest.candidates:  # `model: [network, gbdt]`: each trained, the best kept
                results[f"ours ({candidate.model})"] = (candidate.eval[METRIC[task]], candidate.seconds)
            if manifest.candidates:
                kept = next(c for c in manifest.candidates if c.kept)
                results["ours (kept)"] = (kept.eval[METRIC[task]], seconds)
                print(f"{name}: validation loss "
                      f"{json.dumps({c.model: c.validation_loss for c in manifest.candidates})}: kept {kept.model}",
                      flush=True)
            else:
                results[f"ours ({models[0]})"] = (metrics["eval"][METRIC[task]], seconds)
            frames = raw_frames(config, spec)
            log_label = config.train.label_transform == "log"
            for tree, model in tree_models(task).items():
                results[tree] = score_trees(model, task, log_label, frames)
            rows[group].append((name, task, len(frames[1]), len(frames[3]), results))
            print(f"{name}: {json.dumps(results)}", flush=True)

    trees = sorted({t for group_rows in rows.values() for *_, results in group_rows for t in results
                    if not t.startswith("ours")})
    print(f"\nour models ({', '.join(models)}): train defaults{' with ' + ' '.join(args.train) if args.train else ''}, "
          f"{args.workers} worker(s); eval split of each table")
    for group, group_rows in rows.items():
        if group_rows:
            print_group(group, group_rows, trees)


if __name__ == "__main__":
    main()
