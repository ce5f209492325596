"""The batcher alone, in this process, on a scoring function whose answer shows which rows it was given."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from http_serve.batching import Batcher, BatchRun


def doubled(parts):
    x = np.concatenate([part["x"] for part in parts])
    if (x < 0).any():
        raise ValueError("a negative row")
    return {"y": x * 2, "pair": np.stack([x, -x], axis=1)}


def scored(requests: list[np.ndarray], max_rows: int, max_delay: float = 0.005):
    """Every request queued at once: each one's answer (or error), and the runs the batcher made."""
    runs: list[BatchRun] = []

    async def main():
        batcher = Batcher(max_rows, max_delay, runs.append)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.score(doubled, {"x": x}, len(x)) for x in requests),
                                        return_exceptions=True)
        finally:
            await batcher.close()

    return asyncio.run(main()), runs


def test_each_request_gets_its_own_rows_back_from_coalesced_runs():
    rng = np.random.default_rng(0)
    requests = [rng.uniform(0, 100, rng.integers(1, 20)) for _ in range(200)]
    answers, runs = scored(requests, max_rows=64)
    for x, answer in zip(requests, answers):
        np.testing.assert_array_equal(answer["y"], x * 2)
        np.testing.assert_array_equal(answer["pair"], np.stack([x, -x], axis=1))
    assert sum(run.rows for run in runs) == sum(map(len, requests)) and sum(r.requests for r in runs) == 200
    assert len(runs) < 200 and all(run.rows <= 64 for run in runs)


def test_a_request_larger_than_a_batch_runs_alone_and_whole():
    answers, runs = scored([np.arange(3.0), np.arange(100.0), np.arange(2.0)], max_rows=10)
    np.testing.assert_array_equal(answers[1]["y"], np.arange(100.0) * 2)
    assert [run.rows for run in runs] == [3, 100, 2]


@pytest.mark.parametrize("bad", [0, 2, 4])
def test_a_failing_request_fails_alone(bad):
    requests = [np.full(3, float(i)) for i in range(5)]
    requests[bad] = np.array([1.0, -1.0])
    answers, runs = scored(requests, max_rows=100, max_delay=0.05)
    assert isinstance(answers[bad], ValueError)
    for i, (x, answer) in enumerate(zip(requests, answers)):
        if i != bad:
            np.testing.assert_array_equal(answer["y"], x * 2)
    assert runs[0].requests == 5  # they were one batch


def test_requests_of_two_models_are_never_run_together():
    """As during a reload: the old model's requests queued, then the new one's, a few interleaved where they meet.
    Model B takes another input; each run must see only its own model's requests, coalesced."""
    seen = {"a": [], "b": []}

    def model_a(parts):
        x = np.concatenate([part["x"] for part in parts])
        seen["a"].append(len(x))
        return {"y": x * 2}

    def model_b(parts):
        w = np.concatenate([part["w"] for part in parts])
        seen["b"].append(len(w))
        return {"y": w * 3}

    a, b = (model_a, "x"), (model_b, "w")
    requests = [a] * 25 + [b, a, b, a] + [b] * 25

    async def main():
        batcher = Batcher(max_rows=1000, max_delay=0.02)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.score(run, {name: np.full(2, float(i))}, 2)
                                          for i, (run, name) in enumerate(requests)))
        finally:
            await batcher.close()

    answers = asyncio.run(main())
    for i, ((run, _), answer) in enumerate(zip(requests, answers)):
        np.testing.assert_array_equal(answer["y"], np.full(2, i * (2.0 if run is model_a else 3.0)))
    assert sum(seen["a"]) == sum(seen["b"]) == 2 * 27
    assert len(seen["a"]) < 27 and len(seen["b"]) < 27  # coalesced, each run with its own model's requests
