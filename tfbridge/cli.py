"""The `tfbridge` command: runs the stages in order, each of which is also its own job.

    tfbridge features --config C [Beam pipeline options...]
    tfbridge train --config C [--workers N] [--retries R]
    tfbridge export --config C            (the SavedModel as one ONNX graph: model/model.onnx)
    tfbridge score --model DIR --input PATH --output DIR [--master URL] [--mode error|overwrite] [--format csv|parquet]
    tfbridge run --config C [--workers N] [Beam pipeline options...]
    tfbridge demo [--output DIR] [--workers N]

Each stage also runs as its own job, without this command: `python -m tft_features --config C`,
`python -m tf_train --config C` (one worker, the cluster from TF_CONFIG), `python -m onnx_export
--config C`, `python -m spark_infer --model ... --input ... --output ...`.

Options the command does not know (e.g. `--runner=FlinkRunner
--flink_master=host:8081`) go to Beam as pipeline options.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

import yaml

from tfbridge.contracts import PipelineConfig
from tfbridge.jobs import run_job


def demo_config(output: str) -> PipelineConfig:
    """The built-in diamonds config, its data materialized on first use."""
    from tfbridge import datasets

    raw = yaml.safe_load(resources.files("tfbridge.configs").joinpath("diamonds.yaml").read_text())
    raw["output"] = output
    datasets.materialize_diamonds(raw["data"]["path"])
    return PipelineConfig.from_dict(raw, source="tfbridge/configs/diamonds.yaml")


def main(argv: list[str] | None = None) -> int:
    from spark_infer.job import add_score_arguments

    parser = argparse.ArgumentParser(prog="tfbridge", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    parsers = {}
    for name, help_text in (("features", "run the TFT feature stage (a Beam job)"),
                            ("train", "train on N local workers (MultiWorkerMirroredStrategy) and export"),
                            ("export", "write the trained model and its transform as one ONNX graph"),
                            ("run", "run every stage in order: features, train, export, score")):
        parsers[name] = sub.add_parser(name, help=help_text)
        parsers[name].add_argument("--config", required=True, help="pipeline config (YAML)")
    parsers["score"] = sub.add_parser("score", help="score raw Parquet/CSV on Spark with the exported model")
    add_score_arguments(parsers["score"])
    parsers["demo"] = sub.add_parser("demo", help="`run` on the built-in diamonds dataset")
    parsers["demo"].add_argument("--output", default="runs/demo", help="where the run writes (default: runs/demo)")
    for name in ("run", "demo"):
        parsers[name].add_argument("--master", help="Spark master URL (default local[*], or spark-submit's)")
    for name in ("train", "run", "demo"):
        parsers[name].add_argument("--workers", type=int, help="training workers (default: train.workers, 2)")
        parsers[name].add_argument("--retries", type=int, default=0,
                                   help="restart the workers from the last backup this many times (default 0)")
    args, extra_args = parser.parse_known_args(argv)
    if extra_args and args.command in ("train", "export", "score"):
        parser.error(f"unrecognized arguments: {' '.join(extra_args)}")
    return run_job(lambda: run_stages(args, extra_args))


def run_stages(args: argparse.Namespace, beam_args: list[str]) -> None:
    """The command's stages in order, each through its own job function (stages imported when used)."""
    if args.command == "score":
        from spark_infer.job import score_job

        score_job(args.model, args.input, args.output, args.master, args.mode, args.id_column, args.format)
        return
    config = demo_config(args.output) if args.command == "demo" else PipelineConfig.from_yaml(Path(args.config))
    if args.command in ("features", "run", "demo"):
        from tft_features.pipeline import features_job

        features_job(config, beam_args)
    if args.command in ("train", "run", "demo"):
        from tf_train.launcher import train_job

        train_job(config, args.workers, args.retries)
    if args.command in ("export", "run", "demo"):
        from onnx_export.convert import export_job

        export_job(config)
    if args.command in ("run", "demo"):
        from spark_infer.job import score_job

        # A rerun replaces its scores, as it replaces its features and model.
        score_job(str(config.layout.model_dir), config.data.pattern(), str(config.layout.scores_dir),
                  args.master, "overwrite", fmt=config.data.format)


if __name__ == "__main__":
    sys.exit(main())
