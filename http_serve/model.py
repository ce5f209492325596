"""The model as one serving process holds it: read and verified by the scoring core, one onnxruntime session,
warmed up before the process reports ready, outputs named as the Spark scorer names its columns.

Several worker processes share the machine: each session gets `--threads` intra-op threads (default 1), one
inter-op thread and no spinning, so N workers ask for N threads, not N times the cores (a common complaint about
onnxruntime services: every session defaults to all the cores). One is also the fastest here: on 1,000-row runs
one 2-thread session scored 539K rows/s, two 1-thread runs at once 1.15M (benchmarks/serve_throughput.py).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools

import numpy as np
import pyarrow as pa

from http_serve.protocol import column_kind
from tfbridge.contracts import RawColumn
from tfbridge.scoring import ScoringModel, arrow_feeds, graph_inputs
from tfbridge.storage import Location

PREDICTION = "prediction"  # the column the Spark scorer adds (spark_infer.score's default output_col)
PROBABILITIES = f"{PREDICTION}_probabilities"


def default_name(model_dir: str) -> str:
    """The model's name in the URLs: the run's directory for `<run>/model` (as `tfbridge run` lays it out), else
    the model directory's own name."""
    location = Location.of(model_dir)
    return location.parent.name if location.name == "model" and location.parent.name else location.name


@dataclasses.dataclass
class ServedModel:
    """A verified model and its session. `columns`: the raw columns it takes, by the user's names."""

    name: str
    scoring: ScoringModel
    session: object

    @classmethod
    def load(cls, model_dir: str, name: str, threads: int) -> "ServedModel":
        """Reads and verifies the model (`ScoringModel.load`: the manifest, model.onnx's sha256, a graph the export
        proved), builds the session (the text-op self-check runs first when the graph has text ops) and runs it
        once on a row of plain values. DataError or TextOpsError say what is wrong; nothing serves then."""
        scoring = ScoringModel.load(model_dir)
        model = cls(name, scoring, scoring.session(threads))
        model.run(model.feeds(warm_up_columns(model.columns)))
        return model

    @property
    def columns(self) -> dict[str, RawColumn]:
        return dict(self.scoring.manifest.inputs)

    @property
    def sha256(self) -> str:
        return self.scoring.manifest.onnx.sha256

    @property
    def version(self) -> str:
        """The graph's sha256, shortened: a replaced graph is another version."""
        return self.sha256[:12]

    @property
    def task(self) -> str:
        return self.scoring.manifest.task

    @property
    def output_names(self) -> list[str]:
        return [PREDICTION] if self.task == "regression" else [PREDICTION, PROBABILITIES]

    def score(self, parts: list[dict[str, list]]) -> dict[str, np.ndarray]:
        """The outputs of one run over the requests' rows, in order: their values (`http_serve.protocol`'s batch
        form) concatenated, converted to Arrow and to the graph's feeds once."""
        return self.run(self.feeds(self.arrays(parts)))

    def run_each(self, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The outputs of requests already converted to feeds: one run over them all, in order."""
        if len(parts) == 1:
            return self.run(parts[0])
        return self.run({name: np.concatenate([part[name] for part in parts]) for name in parts[0]})

    def arrays(self, parts: list[dict[str, list]]) -> dict[str, pa.Array]:
        """The requests' values of each column, one after the other, as one Arrow array: numbers (with booleans) as
        float64, text (and dates or times, which the scoring core reads from text) as strings."""
        out = {}
        for name, column in self.columns.items():
            values = parts[0][name] if len(parts) == 1 else list(itertools.chain.from_iterable(p[name] for p in parts))
            out[name] = pa.array(values, type=pa.float64() if column_kind(column) == "float" else pa.string())
        return out

    def feeds(self, arrays: dict[str, pa.Array]) -> dict[str, np.ndarray]:
        """Arrow arrays by the user's column names as the graph's feeds, converted as the Spark scorer converts its
        Arrow batches (`arrow_feeds`); MissingValues or DataError name a column the model cannot take as sent."""
        names = self.scoring.manifest.input_names
        return arrow_feeds({names[column]: array for column, array in arrays.items()},
                           graph_inputs(self.scoring.manifest))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One onnxruntime run: `prediction` (float64) or `prediction` (the label) and `prediction_probabilities`
        (float64, one column per class in the manifest's order), as the Spark scorer writes them."""
        graph_outputs = list(self.scoring.manifest.outputs)
        out = dict(zip(graph_outputs, self.session.run(graph_outputs, feeds)))
        if self.task == "regression":
            return {PREDICTION: out["prediction"].astype(np.float64)}
        return {PREDICTION: out["label"], PROBABILITIES: out["probabilities"].astype(np.float64)}


def settle_heap() -> None:
    """After a model is loaded (at start, after a reload): what the process holds now is collected once and
    frozen (`gc.freeze`), out of the cyclic collector's sight. Every full collection used to walk the modules and
    the model, tens of milliseconds that a request caught in one waited out: at 64 clients p99 was 56 ms, and 21 ms
    frozen, for 4,587 and 4,795 requests/s (benchmarks/serve_throughput.py, medians of 3). Unfrozen first, so that a
    replaced model's cycles are collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def warm_up_columns(columns: dict[str, RawColumn]) -> dict[str, pa.Array]:
    """One row every column takes: "" for text, 1970-01-01 for a date or time, 0 for a number (1 above the bound
    of a column with one)."""
    def value(column: RawColumn) -> pa.Array:
        if column.dtype == "timestamp":
            return pa.array([0], pa.timestamp("s"))
        return pa.array([""]) if column.dtype == "string" else pa.array([0.0 if column.above is None else
                                                                           column.above + 1.0])

    return {name: value(column) for name, column in columns.items()}
