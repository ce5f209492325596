"""The feature stage as one Beam job: check, analyze on the train split, transform both splits, write.

Outputs (under `<output>/features/`, on local disk or a store, see `tfbridge.contracts.ArtifactLayout`): an
attempt directory holding transform_fn/ (tft_beam.WriteTransformFn), transformed/{train,eval}-*.parquet (or,
with `output_format: tfrecord`, *.tfrecord.gz of tf.Examples; at least 8 shards each, see shards.py),
stats.json and check_rows.parquet; then manifest.json, written last, which commits them. A failed run leaves
an attempt no manifest names (the next run deletes it), and an earlier run's features stay readable through
their manifest until the new one replaces it.

The runner is named explicitly: the in-process FnApiRunner unless the command
line names another (`--runner=FlinkRunner ...`): Beam's own default for batch
(Prism) downloads a binary, which these machines cannot.

On a distributed runner the code in the job's DoFns runs on workers, other
processes or hosts: they read the raw data and write the shards, stats and
bundle lists through `tfbridge.storage` (the output's store), and TFT writes
its analysis SavedModels and the transform_fn with TensorFlow under the job's
temporary directory (`--temp_location`: a directory every worker and the
driver reach; by default one on the driver's host). Only the driver commits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import re
import tempfile
import time
from typing import Callable

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

from tfbridge.contracts import (ConfigError, FeaturesManifest, PipelineConfig, ShardFile, StageError, fingerprints,
                                graph_input_name, graph_input_names, materialized_feature_spec, named_attempts)
from tfbridge.contracts.layout import CHECK_ROWS_FILE, STATS, TRANSFORMED
from tfbridge.storage import Location
from tfbridge.storage.attempts import abandon, new_attempt, remove_uncommitted
from tfbridge.scoring.parity import CHECK_ROWS
from tft_features import inputs, mappers, preprocessing
from tft_features.shards import MIN_SHARDS, WriteShards, name_shards
from tft_features.steps import RawDomain

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")
# Under the job's temporary directory: TFT's transform output (transform_fn/, transformed_metadata/, metadata/).
TRANSFORM_OUTPUT = "transform_output"
# File systems TensorFlow 2.21 writes, where TFT's temporary directory can be (its own, not tfbridge.storage's).
_TF_WRITABLE_SCHEMES = ("", "gs")


@dataclasses.dataclass(frozen=True)
class FeaturesResult:
    features_dir: Location
    rows: dict[str, int]
    seconds: float


def versions() -> dict[str, str]:
    return {"tensorflow": tf.__version__, "tensorflow_transform": tft.__version__, "apache_beam": beam.__version__}


# FnApiRunner (Beam 2.77) stalls on TFT analyses of three or more phases (a chain
# of three full-pass steps, e.g. [impute, box_cox, z_score]) with "A total of N
# watermark-pending bundles did not execute". The older bundle-based direct
# runner handles any depth, at about 40% of the speed, so it takes over there.
_FNAPI_MAX_PHASES = 2
_FNAPI_STALL = "watermark-pending bundles did not execute"


def make_pipeline(beam_args: list[str] | None, analysis_phases: int | None) -> beam.Pipeline:
    """A pipeline on the runner the arguments name, else an in-process one that can run this analysis.

    Beam's construction-time type check is off: the graph is fixed and tested
    here, and checking TFT's ~700 transforms cost 0.6 s per run (about 4% of
    the `wide` benchmark config on 1M rows).
    """
    options = PipelineOptions(["--no_pipeline_type_check", *(beam_args or [])])
    if options.view_as(StandardOptions).runner:
        return beam.Pipeline(options=options)
    if analysis_phases is not None and analysis_phases > _FNAPI_MAX_PHASES:
        log.info("features: %d analysis phases: using the bundle-based direct runner", analysis_phases)
        return beam.Pipeline(runner=BundleBasedDirectRunner(), options=options)
    return beam.Pipeline(runner=FnApiRunner(), options=options)


@dataclasses.dataclass(frozen=True)
class _Preprocessing:
    """What the Beam job needs from the config: the preprocessing_fn and the columns to read."""

    fn: Callable[[dict], dict]
    wanted: dict[str, tuple[str, bool]]  # column -> (read_as, nullable)
    domains: dict[str, RawDomain]  # column -> what its raw values must be (box_cox: > 0)
    why: dict[str, str]  # column -> which steps read it, for error messages
    analysis_phases: int | None  # None: unknown (a user's preprocessing_fn)
    plan: preprocessing.FeaturePlan | None  # None: a user's preprocessing_fn


def _preprocessing(config: PipelineConfig) -> _Preprocessing:
    if config.preprocessing_fn:
        return _user_preprocessing(config)
    plan = preprocessing.plan_features(config)
    wanted = plan.raw_columns()
    why = {c.column: f"used by {', '.join(s.name for s in c.steps)}" for c in plan.columns}
    for c in plan.columns:
        for other, step in c.partners().items():
            why.setdefault(other, f"used by {step} of '{c.column}'")
    return _Preprocessing(preprocessing.make_preprocessing_fn(plan), wanted, plan.raw_domains(), why,
                          plan.analysis_phases(), plan)


def _user_preprocessing(config: PipelineConfig) -> _Preprocessing:
    """The escape hatch: every numeric or string column of the data, read dense with no missing values.

    The user's function sees the columns by their own names; inside the transform they travel under
    their graph input names, and the label is passed through under its graph name.
    """
    user_fn = preprocessing.load_user_preprocessing_fn(config.preprocessing_fn, config.source)
    _exportable_tft()
    wanted, why = _user_columns(config)
    keys = graph_input_names([config.label, *wanted], f"{config.source}: data columns")

    def preprocessing_fn(features):
        outputs = dict(user_fn({column: features[keys[column]] for column in wanted}))
        outputs.setdefault(keys[config.label], tf.squeeze(features[keys[config.label]], 1))
        return outputs

    return _Preprocessing(preprocessing_fn, wanted, {}, why, None, None)


def _exportable_tft() -> None:
    """TFT's deduplicate_tensor_per_row (tft.bag_of_words' last step, also public) replaced in this process by
    tft_features.mappers.deduplicate_sparse_per_row: the same rows without a while loop that no ONNX lowering
    expresses, so a user's bag_of_words exports. The rest of TFT is as it is."""
    import tensorflow_transform.mappers as tft_mappers

    tft_mappers.deduplicate_tensor_per_row = mappers.deduplicate_sparse_per_row
    tft.deduplicate_tensor_per_row = mappers.deduplicate_sparse_per_row


def _user_columns(config: PipelineConfig) -> tuple[dict[str, tuple[str, bool]], dict[str, str]]:
    """The columns a user's preprocessing_fn reads (every numeric or string column but the label) and why each is
    read, from the data's schema alone: knowing them runs none of the user's code."""
    files, _ = inputs.resolve_columns(config.data, {}, config.label, {})
    wanted = {}
    for field in inputs.file_schema(config.data, files[0]):
        kind = inputs.kind_of(field.type)
        if field.name != config.label and kind in ("float", "int", "string"):
            wanted[field.name] = ("string" if kind == "string" else "float", False)
    return wanted, {name: f"read for preprocessing_fn {config.preprocessing_fn}" for name in wanted}


def split_rows(config: PipelineConfig, split: str, limit: int) -> pa.Table:
    """Up to `limit` raw rows of one split ("train" or "eval"), read and split as this stage does, by the user's
    column names: what the report plots and the hand-off checks compare the models on. A user's preprocessing_fn
    is not imported: reading rows needs only its columns."""
    if config.preprocessing_fn:
        wanted, why = _user_columns(config)
    else:
        prep = _preprocessing(config)
        wanted, why = prep.wanted, prep.why
    files, columns = inputs.resolve_columns(config.data, wanted, config.label, why, config.datetime_formats)
    kept, count = [], 0
    for table in inputs.read_tables(config.data, files, columns):
        in_eval = inputs.eval_rows(table, config.split.eval_fraction)
        kept.append(table.filter(pa.array(in_eval if split == "eval" else ~in_eval)))
        count += kept[-1].num_rows
        if count >= limit:
            break
    return pa.concat_tables(kept).slice(0, limit)


def run_features(config: PipelineConfig, beam_args: list[str] | None = None) -> FeaturesResult:
    """Runs the feature stage end to end; raises ConfigError/DataError before writing anything."""
    start = time.monotonic()
    prep = _preprocessing(config)
    raw = inputs.inspect(config.data, prep.wanted, config.label, prep.domains, prep.why, config.datetime_formats)
    inputs.READ_PROGRESS.start(2 * raw.rows)  # read twice: see _run_beam
    log.info("features: %d rows in %d file(s), %d columns checked", raw.rows, len(raw.files), len(raw.columns))

    layout = config.layout
    named = functools.partial(named_attempts, layout.features_manifest_path)
    remove_uncommitted(layout.features_dir, named())  # what crashed runs left
    attempt = new_attempt(layout.features_dir)
    try:
        with job_temp_dir(beam_args, attempt.name) as temp:
            manifest = _write_attempt(config, raw, prep, temp, attempt, beam_args)
        _check_rows_written(raw.rows, manifest.rows, beam_args)
        manifest.write(layout.features_manifest_path)  # the commit
    except BaseException:
        abandon(attempt, named)
        raise
    with contextlib.suppress(OSError):  # the attempt this commit replaced; else the next run's to remove
        remove_uncommitted(layout.features_dir, [attempt.name])
    seconds = time.monotonic() - start
    log.info("features: wrote %s (%s) in %.1f s", layout.features_dir, manifest.rows, seconds)
    return FeaturesResult(layout.features_dir, dict(manifest.rows), seconds)


@contextlib.contextmanager
def job_temp_dir(beam_args: list[str] | None, attempt: str):
    """The job's temporary directory (a Location), removed afterwards: TFT writes its analysis phases' SavedModels
    and the transform_fn there with TensorFlow, on whichever worker runs them, and the driver reads the
    transform_fn back. `--temp_location` names it (a shared mount or gs://, as Dataflow users give it); else it is
    on this host, which serves the in-process runner and a cluster whose workers share this host's disk."""
    temp_location = PipelineOptions(beam_args or []).view_as(GoogleCloudOptions).temp_location
    if not temp_location:
        if PipelineOptions(beam_args or []).view_as(StandardOptions).runner:
            log.info("features: no --temp_location: TFT's temporary files are on this host; a cluster whose workers "
                     "run on other hosts needs --temp_location=<a directory all of them reach: a shared mount or gs://>")
        with tempfile.TemporaryDirectory(prefix="tfbridge-job-") as local:
            yield Location.of(local)
        return
    root = Location.of(temp_location) / f"tfbridge-{attempt}"
    if root.scheme not in _TF_WRITABLE_SCHEMES:
        raise ConfigError(f"--temp_location={temp_location}: TFT writes its temporary SavedModels with TensorFlow "
                          f"{tf.__version__}, which has no '{root.scheme}://' file system; give a directory every "
                          "worker reaches on a shared mount, or a gs:// bucket")
    try:
        yield root
    finally:
        with contextlib.suppress(OSError):
            root.remove()


def _check_rows_written(rows_read: int, rows_written: dict[str, int], beam_args) -> None:
    """Every raw row in exactly one committed shard: a runner that lost or repeated work (a retried bundle whose
    files were committed twice) stops here, before the manifest commits anything."""
    if sum(rows_written.values()) != rows_read:
        runner = PipelineOptions(beam_args or []).view_as(StandardOptions).runner or "the in-process runner"
        raise StageError(f"features: the job on {runner} wrote {sum(rows_written.values()):,} rows "
                         f"({rows_written}), the input has {rows_read:,}: nothing was committed")


def job_failure(message: str, temp: Location) -> str:
    """What a failed job on a distributed runner says, in a line or two: the runner's first line (the job and its
    state) and the Python error a worker raised, if any (the last `...Error: ...` line of its traceback), with what
    to pass when the workers could not read the job's temporary directory."""
    lines = [line.strip() for line in message.splitlines() if line.strip()] or ["(the runner gave no message)"]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b.*: ", line)]
    said = "; ".join(dict.fromkeys([lines[0][:500], *(errors[-1:] if errors else [])]))
    if str(temp) in message:
        said += (f" (the workers could not read {temp}, this host's: give --temp_location=<a directory that every "
                 "worker and this driver reach: a shared mount or gs://>)")
    return f"features: the Beam job failed: {said}"


def _write_attempt(config, raw: inputs.RawData, prep: _Preprocessing, temp: Location, attempt: Location,
                   beam_args) -> FeaturesManifest:
    """Runs the Beam job: the shards go to the attempt as they are written, the transform to the job's `temp`
    directory (TensorFlow writes no object store), then to the attempt; returns the manifest that commits them."""
    try:
        rows, files = _run_beam(config, raw, prep, temp, attempt, make_pipeline(beam_args, prep.analysis_phases))
    except AssertionError as e:
        if _FNAPI_STALL not in str(e) or prep.analysis_phases is not None:
            raise
        log.warning("features: FnApiRunner stalled on a deep analysis; rerunning on the bundle-based runner")
        attempt.remove()
        for child in temp.children():
            child.remove()
        rows, files = _run_beam(config, raw, prep, temp, attempt, make_pipeline(beam_args, _FNAPI_MAX_PHASES + 1))
    except RuntimeError as e:  # how Beam's portable runners report a failed job
        if not PipelineOptions(beam_args or []).view_as(StandardOptions).runner or isinstance(e, StageError):
            raise
        raise StageError(job_failure(str(e), temp)) from e
    transform_output = temp / TRANSFORM_OUTPUT
    check_rows = _write_check_rows(config, attempt / CHECK_ROWS_FILE)
    stats = attempt / STATS
    outputs = _feature_outputs(transform_output, json.loads(stats.read_text()), config.label, prep.plan)
    artifacts = {**attempt.upload(transform_output), STATS: stats.sha256()}
    return FeaturesManifest(
        raw_columns={c.name: c for c in raw.columns},
        input_names={c.name: c.graph_name for c in raw.columns},
        label=config.label,
        task=config.task,
        outputs=outputs,
        rows=rows,
        shards={split: len(split_files) for split, split_files in files.items()},
        versions=versions(),
        config=config.to_dict(),
        fingerprint=fingerprints.features_fingerprint(config),
        format=config.output_format,
        files=files,
        check_rows=check_rows,
        attempt=attempt.name,
        artifacts=artifacts,
    )


def _run_beam(config, raw: inputs.RawData, prep: _Preprocessing, temp: Location, attempt: Location,
              pipeline: beam.Pipeline) -> tuple[dict[str, int], dict[str, tuple[ShardFile, ...]]]:
    adapter = raw.tensor_adapter_config()
    transform_output = str(temp / TRANSFORM_OUTPUT)
    stats_path = attempt / STATS
    transformed = attempt / TRANSFORMED
    bundles = attempt / "bundles"  # each split's list of completed bundles' files
    # TFT traces the preprocessing_fn and writes a SavedModel per analysis phase; in
    # its tf.compat.v1 graph mode that costs 3.5 s less per run (measured on the
    # `wide` benchmark config: 9.4 s -> 5.9 s on 2,000 rows), the transform_fn
    # works the same downstream (training, export and scoring parity tests run on
    # it). A user's preprocessing_fn keeps TFT's default (TF2) semantics.
    compat_v1 = prep.plan is not None
    with pipeline as p, tft_beam.Context(temp_dir=str(temp / "tft"), force_tf_compat_v1=compat_v1):
        # The input is read twice, once for the analysis and once for the transform. Read once, the train
        # split would feed both, and the in-process runner would hold all of it in memory until the analysis
        # (the transform's side input) is done: peak memory grew with the rows. Read twice, both stream.
        analyzed = p | "ReadRawForAnalysis" >> inputs.ReadRawData(raw, config.split.eval_fraction, for_analysis=True)
        splits = p | "ReadRaw" >> inputs.ReadRawData(raw, config.split.eval_fraction)
        transform_fn = (analyzed.train, adapter) | "Analyze" >> tft_beam.AnalyzeDataset(prep.fn)
        # TFT's layout: <dir>/transform_fn and <dir>/transformed_metadata, so that
        # tft.TFTransformOutput(dir) reads it.
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(transform_output)
        # The raw schema too (<dir>/metadata), so TFTransformOutput.raw_feature_spec() works downstream.
        metadata_io.write_metadata(dataset_metadata.DatasetMetadata(raw.tfmd_schema()),
                                   f"{transform_output}/{tft.TFTransformOutput.RAW_METADATA_DIR}")
        schemas = {}  # split -> the transformed schema its shard files are written in
        for split in SPLITS:
            (data, metadata) = ((splits[split], adapter), transform_fn) | f"Transform[{split}]" >> (
                tft_beam.TransformDataset(output_record_batches=True))
            schema = schemas[split] = metadata.schema
            _ = (data
                 | f"WriteShards[{split}]" >> beam.ParDo(
                     WriteShards(schema, str(transformed), split, MIN_SHARDS, config.output_format))
                 | f"ListShards[{split}]" >> beam.combiners.ToList()
                 | f"ReportShards[{split}]" >> beam.Map(_write_json, str(bundles / f"{split}.json")))
            if split == "train":
                _ = (data
                     | "StatsRow" >> beam.Map(_first_row_stats, schema, {c.graph_name: c.name for c in raw.columns})
                     | "OneStatsRow" >> beam.CombineGlobally(_AnyFn()).without_defaults()
                     | "WriteStats" >> beam.Map(_write_json, str(stats_path)))
    files = {split: name_shards([tuple(f) for f in json.loads((bundles / f"{split}.json").read_text())],
                                transformed, split, schemas[split], config.output_format)
             for split in SPLITS}
    bundles.remove()
    named = {f.name for split_files in files.values() for f in split_files}
    for leftover in transformed.children():  # the files of failed bundles, if any
        if leftover.name not in named:
            leftover.remove()
    if not stats_path.exists():
        _write_json({"features": {}}, str(stats_path))
    rows = {split: sum(f.rows for f in files[split]) for split in SPLITS}
    return rows, files


def _write_check_rows(config: PipelineConfig, location: Location) -> ShardFile:
    """Up to CHECK_ROWS raw rows of the eval split (the train split when there is none), for the hand-off checks
    of the stages after this one: the export's graph against its SavedModel, the report's checks."""
    split = "eval" if config.split.eval_fraction > 0 else "train"
    table = split_rows(config, split, CHECK_ROWS)
    with location.open_output() as f:
        pq.write_table(table, f)
    return ShardFile(location.name, table.num_rows, location.sha256())


def _feature_outputs(transform_dir: Location, stats: dict, label: str, plan) -> dict:
    transform_output = tft.TFTransformOutput(str(transform_dir))
    spec = materialized_feature_spec(transform_output.transformed_feature_spec())
    spec.pop(graph_input_name(label), None)
    # TFT records an id range for its vocabulary and bucket outputs (what a user's preprocessing_fn makes).
    id_ranges = {f.name: f.int_domain.max + 1 for f in transform_output.transformed_metadata.schema.feature
                 if f.HasField("int_domain") and f.int_domain.min == 0 and f.int_domain.HasField("max")}
    return preprocessing.feature_outputs(spec, plan, stats, id_ranges)


def _is_stat(name: str) -> bool:
    return preprocessing.parse_stat_output_name(name) is not None


def _first_row_stats(element, schema, columns: dict[str, str]) -> dict:
    """The statistics of the transform, read off the first row of a transformed batch."""
    batch, _ = element
    scalars = {f.name for f in schema.feature if not f.shape.dim}
    row = {}
    for name in batch.schema.names:
        if _is_stat(name):
            values = batch.column(name)[0].as_py()
            row[name] = values[0] if name in scalars else values
    return preprocessing.stats_from_row(row, columns)


class _AnyFn(beam.CombineFn):
    """Keeps one element: every row carries the same statistics."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, element):
        return element if acc is None else acc

    def merge_accumulators(self, accumulators):
        return next((a for a in accumulators if a is not None), None)

    def extract_output(self, acc):
        return acc


def _write_json(value, path: str) -> None:
    Location.of(path).write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def features_job(config: PipelineConfig, beam_args: list[str] | None = None) -> None:
    """The stage as a job (`python -m tft_features`, `tfbridge features`): run it, report one line."""
    result = run_features(config, beam_args)
    print(f"features: {result.rows} rows -> {result.features_dir} ({result.seconds:.1f} s)")
