"""The `tfbridge` command: runs the stages in order, each of which is also its own job.

    tfbridge features --config C [Beam pipeline options...]
    tfbridge train --config C [--workers N] [--retries R]
    tfbridge export --config C            (the SavedModel as one ONNX graph, named in model/manifest.json)
    tfbridge score --model DIR --input PATH --output DIR [--master URL] [--mode error|overwrite] [--format csv|parquet]
    tfbridge run --config C [--workers N] [--force | --from STAGE] [Beam pipeline options...]
    tfbridge demo [--output DIR] [--workers N] [--force | --from STAGE]
    tfbridge report --config C | --output DIR   (report.html from a finished run)
    tfbridge serve --model DIR [--port 8080] [--workers N]   (the model over HTTP: Open Inference Protocol, instances)

Quiet by default: one line per stage, progress bars, a summary; each stage's full output goes to
<output>/logs/<stage>.log. --verbose shows it all on the terminal instead. `run` and `demo` skip the
stages whose output is up to date; Ctrl-C stops cleanly, and the next run resumes.

Each stage also runs as its own job, without this command: `python -m tft_features --config C`,
`python -m tf_train --config C` (one worker, the cluster from TF_CONFIG), `python -m onnx_export
--config C`, `python -m spark_infer --model ... --input ... --output ...`, `python -m http_serve --model ...`.

Options the command does not know (e.g. `--runner=FlinkRunner
--flink_master=host:8081`) go to Beam as pipeline options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from pathlib import Path

import yaml

from tfbridge.console import Console
from tfbridge.contracts import ModelManifest, PipelineConfig, output_lock
from tfbridge.contracts.layout import METRICS
from tfbridge.jobs import run_job
from tfbridge.storage import Location
from tfbridge.storage.attempts import work_dir


def demo_config(output: str) -> PipelineConfig:
    """The built-in diamonds config, its data materialized on first use."""
    from tfbridge import datasets

    raw = yaml.safe_load(resources.files("tfbridge.configs").joinpath("diamonds.yaml").read_text())
    raw["output"] = output
    datasets.materialize_diamonds(raw["data"]["path"])
    return PipelineConfig.from_dict(raw, source="tfbridge/configs/diamonds.yaml")


def main(argv: list[str] | None = None) -> int:
    from http_serve.server import add_serve_arguments
    from spark_infer.job import add_score_arguments

    parser = argparse.ArgumentParser(prog="tfbridge", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    parsers = {}
    for name, help_text in (("features", "run the TFT feature stage (a Beam job)"),
                            ("train", "train on N local workers (MultiWorkerMirroredStrategy) and export"),
                            ("export", "write the trained model and its transform as one ONNX graph"),
                            ("run", "run every stage in order: features, train, export, score, report")):
        parsers[name] = sub.add_parser(name, help=help_text)
        parsers[name].add_argument("--config", required=True, help="pipeline config (YAML)")
    parsers["score"] = sub.add_parser("score", help="score raw Parquet/CSV on Spark with the exported model")
    add_score_arguments(parsers["score"])
    parsers["serve"] = sub.add_parser("serve", help="score rows sent over HTTP with the exported model (online)")
    add_serve_arguments(parsers["serve"])
    parsers["demo"] = sub.add_parser("demo", help="`run` on the built-in diamonds dataset")
    parsers["demo"].add_argument("--output", default="runs/demo", help="where the run writes (default: runs/demo)")
    parsers["report"] = sub.add_parser("report", help="write report.html (and report/*.png) for a finished run")
    which = parsers["report"].add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="the run's pipeline config (YAML)")
    which.add_argument("--output", help="the run's output directory (its config is read from its manifest)")
    for name in ("run", "demo"):
        parsers[name].add_argument("--master", help="Spark master URL (default local[*], or spark-submit's)")
    for name in ("train", "run", "demo"):
        parsers[name].add_argument("--workers", type=int, help="training workers (default: train.workers, auto: 1)")
        parsers[name].add_argument("--retries", type=int, default=0,
                                   help="restart the workers from the last backup this many times (default 0)")
    for name in ("run", "demo"):
        parsers[name].add_argument("--force", action="store_true", help="redo every stage, even one up to date")
        parsers[name].add_argument("--from", dest="from_stage", choices=STAGES,
                                   help="redo this stage and every one after it (earlier ones: only if out of date)")
    for command in parsers.values():
        command.add_argument("--verbose", action="store_true",
                             help="show every library's output on the terminal (default: in <output>/logs/)")
    args, extra_args = parser.parse_known_args(argv)
    if extra_args and args.command in ("train", "export", "score", "report", "serve"):
        parser.error(f"unrecognized arguments: {' '.join(extra_args)}")
    return run_job(lambda: run_stages(args, extra_args, Console(args.verbose)))


STAGES = ("features", "train", "export", "score", "report")
COMMAND_STAGES = {"features": ("features",), "train": ("train",), "export": ("export",), "report": ("report",),
                  "run": STAGES, "demo": STAGES}


def run_stages(args: argparse.Namespace, beam_args: list[str], console: Console) -> None:
    """The command's stages in order, each with its line on the console. `run` and `demo` skip a stage whose
    output is up to date (its recorded fingerprint matches), unless --force or --from says to redo it."""
    if args.command == "serve":  # a service, not a stage: its own log lines, until it is stopped
        from http_serve.server import serve

        serve(args)
        return
    if args.command == "score":
        # Its log beside its output (scores/ -> scores.log): never a run's own logs/score.log.
        output = Location.of(args.output)
        log = (Path(os.path.abspath(output.uri)).with_name(f"{output.name}.log") if output.is_local
               else work_dir(output) / f"{output.name}.log")
        result = score_stage(console, log,
                             None if output.is_local else output.with_name(f"{output.name}.log"),
                             args.model, args.input, args.output, args.master, args.mode, args.id_column, args.format)
        console.line(f"scores: {result.output}")
        return
    config = _command_config(args)
    if args.command != "report":
        console.line(f"tfbridge {args.command}: {config.source} → {config.output} (logs: {config.layout.logs})")
    resumable = args.command in ("run", "demo")
    redo_from = STAGES.index(args.from_stage) if resumable and args.from_stage else (
        0 if not resumable or args.force else len(STAGES))
    with output_lock(config.layout.root):  # from the first stage's check to the summary: no other run writes here
        for name in COMMAND_STAGES[args.command]:
            if STAGES.index(name) < redo_from:
                why = up_to_date(name, config)
                if why:
                    console.skipped(name, why)
                    continue
                if name == "export" and graph_to_recheck(config):
                    recheck_export_stage(config, console)
                    continue
            _RUNNERS[name](config, args, beam_args, console)
        if resumable:
            console.line(summary(config, json.loads(config.layout.report_results_path.read_text())))


def up_to_date(stage: str, config: PipelineConfig) -> str | None:
    """Why a stage's output needs no redoing (its recorded fingerprint is today's), or None. Reads manifests only."""
    from tfbridge.contracts import DataError, FeaturesManifest, ModelManifest, fingerprints

    layout = config.layout
    try:
        features = FeaturesManifest.read(layout.features_manifest_path)
        if stage == "features":
            done = features.fingerprint == fingerprints.features_fingerprint(config)
            return f"{layout.features_dir} is up to date" if done else None
        model = ModelManifest.read(layout.model_manifest_path)
        if stage == "train":
            done = model.fingerprint == fingerprints.model_fingerprint(config, features.fingerprint)
            return f"{layout.model_dir} is up to date" if done else None
        if stage == "export":
            done = (model.onnx is not None and model.onnx.proven
                    and model.onnx.fingerprint == fingerprints.onnx_fingerprint(model.fingerprint))
            return f"{layout.model_dir / model.onnx.path} is up to date" if done else None
        if stage == "score":
            recorded = json.loads(layout.score_record_path.read_text())["fingerprint"]
            done = recorded == fingerprints.scores_fingerprint(model, config.data.files())
            return f"{layout.scores_dir} is up to date" if done else None
        recorded = json.loads(layout.report_results_path.read_text())["fingerprint"]
        return f"{layout.report_path} is up to date" if recorded == fingerprints.report_fingerprint(layout) else None
    except (OSError, ValueError, KeyError, DataError):  # not there, or written by an older version: redo it
        return None


def graph_to_recheck(config: PipelineConfig) -> bool:
    """The manifest names a graph made from today's model that changed since its parity check."""
    from tfbridge.contracts import DataError, ModelManifest, fingerprints

    try:
        model = ModelManifest.read(config.layout.model_manifest_path)
    except (OSError, ValueError, KeyError, DataError):
        return False
    return (model.onnx is not None and not model.onnx.proven
            and model.onnx.fingerprint == fingerprints.onnx_fingerprint(model.fingerprint))


def _working() -> tuple[int, None]:
    """A bar with no measure of progress: it shows the stage at work."""
    return 0, None


# Each stage is imported inside its console stage: importing TensorFlow already writes to the terminal.
def features_stage(config: PipelineConfig, args, beam_args: list[str], console: Console) -> None:
    with _stage(console, "features", config) as stage:
        from tft_features.inputs import READ_PROGRESS
        from tft_features.pipeline import run_features

        stage.track("rows read (analysis, then transform)", READ_PROGRESS.snapshot)
        result = run_features(config, beam_args)
        stage.result = f"{_rows(result.rows)} → {result.features_dir}"


def train_stage(config: PipelineConfig, args, beam_args: list[str], console: Console) -> None:
    with _stage(console, "train", config) as stage:
        from tf_train.launcher import epochs_done, launch, resolve_workers

        workers = resolve_workers(args.workers or config.train.workers)
        stage.track("epochs", lambda: (epochs_done(config), config.train.epochs))
        resumed_after = launch(config, workers, args.retries)
        layout = config.layout
        model = ModelManifest.read(layout.model_manifest_path)
        metrics = json.loads(model.file(layout.model_dir, METRICS).read_text())
        figures = ", ".join(f"{k} {_figure(v)}" for k, v in metrics["eval"].items() if k != "rows")
        fitting = metrics["fitting"]
        unit = "boosting rounds" if fitting.get("model") == "gbdt" else "epochs"
        epochs = (f"{fitting['epochs']} {unit}" if fitting["epochs"] == fitting["kept_epoch"]
                  else f"{fitting['epochs']} {unit} (kept {fitting['kept_epoch']})")
        if resumed_after is not None:
            epochs += f", resumed after epoch {resumed_after}"
        stage.result = (f"{_kept_of(model)}{epochs} on {workers} worker(s) at {fitting['examples_per_s']:,.0f} "
                        f"examples/s{', eval ' + figures if figures else ''} → {layout.model_dir}")


def _kept_of(model: ModelManifest) -> str:
    """Which model was kept, of several trained, and why: "gbdt kept (validation loss 0.12 vs network 0.15): "."""
    kept = next((c for c in model.candidates if c.kept), None)
    if kept is None:
        return ""
    others = ", ".join(f"{c.model} {_figure(c.validation_loss)}" for c in model.candidates if c is not kept)
    return f"{kept.model} kept (validation loss {_figure(kept.validation_loss)} vs {others}): "


def export_stage(config: PipelineConfig, args, beam_args: list[str], console: Console) -> None:
    with _stage(console, "export", config) as stage:
        from onnx_export.convert import describe_check, export_onnx, onnx_location

        stage.track("converting the SavedModel, then checking the graph against it", _working)
        hand_off = export_onnx(config)
        stage.result = f"→ {onnx_location(config)}; {describe_check(hand_off)}"


def recheck_export_stage(config: PipelineConfig, console: Console) -> None:
    """A graph up to date but changed since its parity check (copied or edited into place): checked again
    against the SavedModel before anything scores with it."""
    with _stage(console, "export", config) as stage:
        from onnx_export.convert import check_exported, describe_check, onnx_location

        stage.track("checking the graph against the SavedModel", _working)
        hand_off = check_exported(config)
        stage.result = f"{onnx_location(config)} changed since its check, checked again; {describe_check(hand_off)}"


def run_score_stage(config: PipelineConfig, args, beam_args: list[str], console: Console) -> None:
    # A rerun replaces its scores, as it replaces its features and model.
    layout = config.layout
    score_stage(console, layout.logs_dir / "score.log", None if layout.root.is_local else layout.logs / "score.log",
                str(layout.model_dir), config.data.pattern(), str(layout.scores_dir), args.master, "overwrite",
                fmt=config.data.format)


def report_stage(config: PipelineConfig, args, beam_args: list[str], console: Console) -> None:
    with _stage(console, "report", config) as stage:
        from tfbridge.report import build_report

        stage.track("plots and hand-off checks", _working)
        stage.result = f"→ {build_report(config).html}"


_RUNNERS = {"features": features_stage, "train": train_stage, "export": export_stage, "score": run_score_stage,
            "report": report_stage}


def _stage(console: Console, name: str, config: PipelineConfig):
    """A stage's console block, its log under the run's logs (written locally, then copied to a store)."""
    layout = config.layout
    return console.stage(name, layout.logs_dir, copy_to=None if layout.root.is_local else layout.logs / f"{name}.log")


def score_stage(console: Console, log: Path, copy_to: Location | None, *args, **kwargs):
    with console.stage("score", log.parent, log.name, copy_to) as stage:
        from spark_infer.job import run_score, scoring_progress

        stage.track("Spark tasks", scoring_progress)
        result = run_score(*args, **kwargs)
        stage.result = f"{result.rows:,} rows → {result.output}"
    return result


def _command_config(args: argparse.Namespace) -> PipelineConfig:
    """The config the command runs. `report --output DIR` takes the one its run recorded (an artifact): it
    gives the report its paths and data; a `preprocessing_fn` it names is never imported on the report's
    way (only a config the user passes names code), and the recorded `output` gives way to DIR."""
    if args.command == "demo":
        return demo_config(args.output)
    if args.command == "report" and args.output:
        from tfbridge.contracts import ArtifactLayout, FeaturesManifest

        layout = ArtifactLayout(Location.of(args.output))
        recorded = FeaturesManifest.read(layout.features_manifest_path).config
        return PipelineConfig.from_dict({**recorded, "output": args.output}, source=str(layout.features_manifest_path))
    return PipelineConfig.from_yaml(Path(args.config))


def _rows(rows: dict[str, int]) -> str:
    return " / ".join(f"{count:,} {split}" for split, count in rows.items()) + " rows"


def summary(config: PipelineConfig, results: dict) -> str:
    """The run in a few lines: where each artifact is, quality next to the baseline, the hand-offs, the scoring, and
    the command that serves the model online."""
    layout = config.layout
    lines = ["", f"Summary of {config.output}"]
    metrics = results.get("metrics") or {}
    ours, base = metrics.get("eval", {}), metrics.get("baseline", {})
    quality = ", ".join(f"{k} {_figure(v)} (baseline {_figure(base.get(k))})" for k, v in ours.items() if k != "rows")
    model = ModelManifest.read(layout.model_manifest_path)
    kept = next((f" ({c.model}, kept of {', '.join(o.model for o in model.candidates)})" for c in model.candidates
                 if c.kept), "")
    lines.append(f"  model     {layout.model_dir}{kept}" + (f": eval {quality}" if quality else ""))
    for hand_off in results.get("hand_offs", []):
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in hand_off["max_abs_diff"].items())
        lines.append(f"  parity    {hand_off['name']}, {hand_off['rows']:,} rows: largest difference {diffs}")
    scoring = results.get("scoring")
    if scoring:
        rate = scoring["rows"] / max(scoring["job_seconds"], 1e-9)
        lines.append(f"  scores    {scoring['output']}: {scoring['rows']:,} rows, {rate:,.0f} rows/s")
    graph = model.onnx
    lines += [f"  features  {layout.features_dir}", *([f"  onnx      {layout.model_dir / graph.path}"] if graph else []),
              f"  logs      {layout.logs}", f"  report    {layout.report_path}"]
    if graph:  # the service runs the ONNX graph only
        lines.append(f"  serve it  tfbridge serve --model {layout.model_dir}")
    return "\n".join(lines)


def _figure(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"


if __name__ == "__main__":
    sys.exit(main())
