"""Data contracts shared by the stages: what passes between them is files on disk, described here.

Every stage reads these and nothing else of another stage. The package imports no stage.

- `config`: the pipeline config (one YAML file, validated once).
- `columns`: a raw column (`RawColumn`), its name inside the graphs, how missing values and text read.
- `layout`: where each artifact lives under `<output>/`.
- `manifests`: what each stage produced, typed (`FeaturesManifest`, `ModelManifest`, `OnnxGraph`,
  `TrainedCandidate`).
- `fingerprints`: what each stage's output was made from, so that a rerun skips what is up to date.
- `files`: local files replaced atomically (`staged`), one run per output (`output_lock`), checking files
  (`file_sha256`). Artifacts live on local disk or a store (`tfbridge.storage`), committed by their manifests.
- `errors`: the errors a stage raises, by what the user must do.
"""

from tfbridge.contracts import fingerprints
from tfbridge.contracts.columns import (CSV_NULL_VALUES, PUNCTUATION_AND_WHITESPACE, RAW_DTYPES, RawColumn,
                                        graph_input_name, graph_input_names, model_numbers,
                                        model_timestamps)
from tfbridge.contracts.config import (DATA_FORMATS, LABEL_TRANSFORMS, OUTPUT_FORMATS, TASKS, DataSource,
                                       PipelineConfig, SplitConfig, TrainConfig, TransformStep)
from tfbridge.contracts.errors import BrokenRuntimeError, ConfigError, DataError, StageError, TrainingError
from tfbridge.contracts.files import file_sha256, output_lock, staged, write_json_atomic
from tfbridge.contracts.layout import SCORE_RECORD, ArtifactLayout
from tfbridge.contracts.manifests import (STAT_OUTPUT_PREFIX, FeatureKind, FeatureOutput, FeaturesManifest,
                                          ModelManifest, OnnxGraph, ParityRecord, ShardFile,
                                          TrainedCandidate, materialized_feature_spec, named_attempts)

__all__ = [
    "ArtifactLayout", "BrokenRuntimeError", "CSV_NULL_VALUES", "ConfigError", "DATA_FORMATS", "DataError",
    "DataSource", "FeatureKind", "FeatureOutput", "FeaturesManifest", "LABEL_TRANSFORMS",
    "ModelManifest", "OUTPUT_FORMATS", "OnnxGraph", "PUNCTUATION_AND_WHITESPACE", "ParityRecord", "PipelineConfig",
    "RAW_DTYPES",
    "RawColumn", "SCORE_RECORD", "STAT_OUTPUT_PREFIX", "ShardFile", "SplitConfig", "StageError", "TASKS", "TrainConfig",
    "TrainedCandidate", "TrainingError", "TransformStep",
    "file_sha256", "fingerprints", "graph_input_name", "graph_input_names", "materialized_feature_spec",
    "model_numbers", "model_timestamps", "named_attempts", "output_lock", "staged", "write_json_atomic",
]
