"""The `tfbridge` command: runs the stages in order, each of which is also its own job.

    tfbridge features --config C [Beam pipeline options...]
    tfbridge train --config C [--workers N] [--retries R]
    tfbridge export --config C            (the SavedModel as one ONNX graph: model/model.onnx)
    tfbridge score --model DIR --input PATH --output DIR [--master URL] [--mode error|overwrite] [--format csv|parquet]
    tfbridge run --config C [--workers N] [Beam pipeline options...]
    tfbridge demo [--output DIR] [--workers N]
    tfbridge train-worker --config C      (one worker; the cluster from TF_CONFIG: what `python -m tf_train` runs)

Options the command does not know (e.g. `--runner=FlinkRunner
--flink_master=host:8081`) go to Beam as pipeline options.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from importlib import resources
from pathlib import Path

import yaml

from tfbridge.contracts import BrokenRuntimeError, ConfigError, DataError, PipelineConfig, TrainingError



def setup_logging() -> None:
    """Our progress at INFO; TensorFlow's and absl's chatter only when it is a warning we can act on."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    for noisy in ("absl", "tensorflow", "apache_beam"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def demo_config(output: str) -> PipelineConfig:
    """The built-in diamonds config, its data materialized on first use."""
    from tfbridge import datasets

    raw = yaml.safe_load(resources.files("tfbridge.configs").joinpath("diamonds.yaml").read_text())
    raw["output"] = output
    datasets.materialize_diamonds(raw["data"]["path"])
    return PipelineConfig.from_dict(raw, source="tfbridge/configs/diamonds.yaml")


def run_features_stage(config: PipelineConfig, beam_args: list[str]) -> None:
    from tft_features.pipeline import run_features

    result = run_features(config, beam_args)
    print(f"features: {result.rows} rows -> {result.features_dir} ({result.seconds:.1f} s)")


def run_train_stage(config: PipelineConfig, workers: int | None, retries: int) -> None:
    from tf_train.launcher import launch

    start = time.monotonic()
    launch(config, workers or config.train.workers, retries)
    metrics = json.loads(config.layout.metrics_path.read_text())
    print(f"train: {config.layout.saved_model_dir} ({time.monotonic() - start:.1f} s); "
          f"eval {json.dumps(metrics['eval'])}")


def run_export_stage(config: PipelineConfig) -> None:
    from tf_train.onnx_export import export_onnx

    start = time.monotonic()
    path = export_onnx(config)
    print(f"export: {path} ({time.monotonic() - start:.1f} s)")


def run_score_stage(model: str, input_path: str, output: str, master: str | None, mode: str,
                    id_column: str | None = None, fmt: str | None = None) -> None:
    from spark_infer.job import run_score

    result = run_score(model, input_path, output, master, mode, id_column, fmt=fmt)
    print(f"score: {result.rows:,} rows -> {result.output} ({result.seconds:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tfbridge", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    parsers = {}
    for name, help_text in (("features", "run the TFT feature stage (a Beam job)"),
                            ("train", "train on N local workers (MultiWorkerMirroredStrategy) and export"),
                            ("export", "write the trained model and its transform as one ONNX graph"),
                            ("run", "run every stage in order: features, train, export, score"),
                            ("train-worker", "one training worker; the cluster from TF_CONFIG")):
        parsers[name] = sub.add_parser(name, help=help_text)
        parsers[name].add_argument("--config", required=True, help="pipeline config (YAML)")
    parsers["score"] = sub.add_parser("score", help="score raw Parquet/CSV on Spark with the exported model")
    parsers["score"].add_argument("--model", required=True, help="the training stage's <output>/model")
    parsers["score"].add_argument("--input", required=True, help="raw Parquet (file, directory, glob) or CSV")
    parsers["score"].add_argument("--output", required=True, help="Parquet directory to write")
    parsers["score"].add_argument("--mode", default="error", choices=("error", "overwrite"),
                                  help="an existing output: stop (default) or replace it")
    parsers["score"].add_argument("--id-column", help="keep only this input column next to the predictions")
    parsers["score"].add_argument("--format", choices=("parquet", "csv"),
                                  help="the input's format (default: csv for a path ending in .csv, else parquet)")
    parsers["demo"] = sub.add_parser("demo", help="`run` on the built-in diamonds dataset")
    parsers["demo"].add_argument("--output", default="runs/demo", help="where the run writes (default: runs/demo)")
    for name in ("score", "run", "demo"):
        parsers[name].add_argument("--master", help="Spark master URL (default local[*], or spark-submit's)")
    for name in ("train", "run", "demo"):
        parsers[name].add_argument("--workers", type=int, help="training workers (default: train.workers, 2)")
        parsers[name].add_argument("--retries", type=int, default=0,
                                   help="restart the workers from the last backup this many times (default 0)")
    args, extra_args = parser.parse_known_args(argv)
    if extra_args and args.command in ("train", "train-worker", "export", "score"):
        parser.error(f"unrecognized arguments: {' '.join(extra_args)}")
    setup_logging()
    try:
        if args.command == "score":
            run_score_stage(args.model, args.input, args.output, args.master, args.mode, args.id_column, args.format)
            return 0
        if args.command == "demo":
            config = demo_config(args.output)
        else:
            config = PipelineConfig.from_yaml(Path(args.config))
        if args.command == "train-worker":
            from tf_train.worker import run_worker

            run_worker(config)
            return 0
        if args.command in ("features", "run", "demo"):
            run_features_stage(config, extra_args)
        if args.command in ("train", "run", "demo"):
            run_train_stage(config, args.workers, args.retries)
        if args.command in ("export", "run", "demo"):
            run_export_stage(config)
        if args.command in ("run", "demo"):
            # A rerun replaces its scores, as it replaces its features and model.
            run_score_stage(str(config.layout.model_dir), config.data.pattern(), str(config.layout.scores_dir),
                            args.master, "overwrite", fmt=config.data.format)
    except (ConfigError, DataError) as e:
        print(f"tfbridge: error: {e}", file=sys.stderr)
        return 2
    except (TrainingError, BrokenRuntimeError) as e:
        print(f"tfbridge: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
