"""Adaptive batching: concurrent requests coalesced into one onnxruntime run, each given back its own rows.

A request's rows (already checked: `http_serve.protocol`) wait in a queue, with the model that checked them,
until it holds `max_rows` rows or the oldest has waited `max_delay` seconds; then the model scores them all at once
(converted and run once), in the process's single scoring thread (onnxruntime releases the GIL: the event loop
keeps taking requests meanwhile). While a run is in progress the queue fills, so batches grow with load by
themselves and no request waits longer than the run before it plus the delay. A request of more than `max_rows`
rows runs alone, whole.

A batch holds requests of one model only: after a reload (`http_serve.reload`) the requests checked by the
old version run on it, in batches of their own, and never on the new one, whose inputs may differ.

Each request gets exactly its own rows back: the batch's outputs are sliced at the offsets its rows were
concatenated at, in the order they were queued. A batch that fails (a value the model cannot take, found when the
batch is converted) is scored again request by request, so a failure, and its message's row numbers, stay with
the request that caused it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import time
from typing import Callable

import numpy as np

Outputs = dict[str, np.ndarray]
Score = Callable[[list], Outputs]  # the requests' parts, in order -> outputs of one row per row of the parts


@dataclasses.dataclass(frozen=True)
class BatchRun:
    """What one run did, for the metrics: its rows and requests, how long each request queued, the run's time."""

    rows: int
    requests: int
    queued_seconds: tuple[float, ...]
    run_seconds: float


@dataclasses.dataclass
class _Pending:
    score: Score
    part: object
    rows: int
    arrived: float  # time.monotonic()
    answer: asyncio.Future


class Batcher:
    """Scores each request's `part` (its rows, `rows` of them) by its `score`, coalesced with the requests queued
    with the same `score`: one `score(parts)` call.

    `observe(BatchRun)` is told of every run. Start it inside the event loop (`start`), `close` it at shutdown.
    """

    def __init__(self, max_rows: int, max_delay: float, observe: Callable[[BatchRun], None] = lambda _: None):
        self.max_rows, self.max_delay, self._observe = max_rows, max_delay, observe
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="onnxruntime")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def close(self) -> None:
        """Stops taking batches (after the server finished its requests, nothing is queued) and the thread."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for pending in self._queue:
            if not pending.answer.done():
                pending.answer.set_exception(RuntimeError("the server stopped before scoring this request"))
        self._executor.shutdown(wait=True)

    async def score(self, score: Score, part, rows: int) -> Outputs:
        """This request's outputs by `score` (the model that checked `part`), once the batch it joined has run."""
        answer = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(score, part, rows, time.monotonic(), answer))
        self._queued_rows += rows
        self._arrived.set()
        return await answer

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            await self._gather()
            batch = self._take()
            started = time.monotonic()
            results = await loop.run_in_executor(self._executor, _score_batch, batch[0].score,
                                                 [p.part for p in batch], [p.rows for p in batch])
            self._observe(BatchRun(sum(p.rows for p in batch), len(batch),
                                   tuple(started - p.arrived for p in batch), time.monotonic() - started))
            for pending, result in zip(batch, results):
                if pending.answer.done():  # the client went away
                    continue
                if isinstance(result, Exception):
                    pending.answer.set_exception(result)
                else:
                    pending.answer.set_result(result)

    async def _gather(self) -> None:
        """Waits until `max_rows` rows are queued or the oldest request has waited `max_delay`."""
        deadline = self._queue[0].arrived + self.max_delay
        while self._queued_rows < self.max_rows:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:  # TimeoutError from 3.11 on
                return

    def _take(self) -> list[_Pending]:
        """The oldest requests of the oldest one's model, up to `max_rows` rows (always at least one)."""
        batch, rows = [], 0
        while self._queue and (not batch or rows + self._queue[0].rows <= self.max_rows
                               and self._queue[0].score == batch[0].score):
            pending = self._queue.popleft()
            batch.append(pending)
            rows += pending.rows
        self._queued_rows -= rows
        return batch


def _score_batch(score: Score, parts: list, sizes: list[int]) -> list[Outputs | Exception]:
    """In the scoring thread: one call over every part, its outputs sliced back per request."""
    if len(parts) == 1:
        return [_score_alone(score, parts[0])]
    try:
        outputs = score(parts)
    except Exception:  # noqa: BLE001 - find the request that failed, and answer the others
        return [_score_alone(score, part) for part in parts]
    offsets = np.cumsum([0, *sizes])
    return [{name: values[start:stop] for name, values in outputs.items()}
            for start, stop in zip(offsets[:-1], offsets[1:])]


def _score_alone(score: Score, part) -> Outputs | Exception:
    try:
        return score([part])
    except Exception as e:  # noqa: BLE001 - handed to the request's own answer
        return e
