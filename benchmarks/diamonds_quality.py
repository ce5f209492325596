"""Model quality on diamonds: the demo's model next to a linear baseline on the same features, one run.

    .venv/bin/python benchmarks/diamonds_quality.py [--workers 2]

The feature stage runs once on the built-in diamonds data with the demo
config; then the demo's model (train.hidden_units [64, 32]) and a linear model
(hidden_units [], the same inputs, embeddings, label transform and epochs)
are trained on N workers. Prints eval-split R^2, RMSE and MAE in price units.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import json

    from tf_train.launcher import launch
    from tfbridge.cli import demo_config
    from tfbridge.jobs import setup_logging
    from tft_features.pipeline import run_features

    setup_logging()
    work = Path(tempfile.mkdtemp(prefix="diamonds-quality-"))
    config = demo_config(str(work / "demo"))
    run_features(config)
    rows = []
    for directory, name, units in (("mlp", f"demo model {list(config.train.hidden_units)}", config.train.hidden_units),
                                   ("linear", "linear baseline []", ())):
        out = work / directory
        shutil.copytree(config.layout.features_dir, out / "features")
        run = dataclasses.replace(config, output=str(out), train=dataclasses.replace(config.train, hidden_units=units))
        start = time.monotonic()
        launch(run, args.workers, out=io.StringIO())
        metrics = json.loads(run.layout.metrics_path.read_text())["eval"]
        rows.append((name, metrics, time.monotonic() - start))
    print(f"\ndiamonds, eval split ({rows[0][1]['rows']:,} rows), {args.workers} workers, "
          f"{config.train.epochs} epochs, label_transform {config.train.label_transform}\n")
    print("| model | R^2 | RMSE | MAE | train s |\n|---|---:|---:|---:|---:|")
    for name, m, seconds in rows:
        print(f"| {name} | {m['r2']:.4f} | {m['rmse']:,.0f} | {m['mae']:,.0f} | {seconds:.0f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
