"""The `tfbridge` command: runs the stages in order, each of which is also its own job.

    tfbridge features --config C [Beam pipeline options...]
    tfbridge run --config C [Beam pipeline options...]
    tfbridge demo [--output DIR]

Options the command does not know (e.g. `--runner=FlinkRunner
--flink_master=host:8081`) go to Beam as pipeline options.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import resources
from pathlib import Path

import yaml

from tfbridge.contracts import ConfigError, DataError, PipelineConfig

# Stages that later issues add; `run` says which ones it skipped.
PENDING_STAGES = ("train", "export", "score")


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


def run_stages(config: PipelineConfig, beam_args: list[str], every_stage: bool) -> None:
    from tft_features.pipeline import run_features

    result = run_features(config, beam_args)
    print(f"features: {result.rows} rows -> {result.features_dir} ({result.seconds:.1f} s)")
    if every_stage:
        print(f"stages not built yet, skipped: {', '.join(PENDING_STAGES)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tfbridge", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("features", "run the TFT feature stage (a Beam job)"),
                            ("run", "run every stage that exists, in order")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="pipeline config (YAML)")
    demo = sub.add_parser("demo", help="`run` on the built-in diamonds dataset")
    demo.add_argument("--output", default="runs/demo", help="where the run writes (default: runs/demo)")
    args, beam_args = parser.parse_known_args(argv)
    setup_logging()
    try:
        if args.command == "demo":
            config = demo_config(args.output)
        else:
            config = PipelineConfig.from_yaml(Path(args.config))
        run_stages(config, beam_args, every_stage=args.command != "features")
    except (ConfigError, DataError) as e:
        print(f"tfbridge: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
