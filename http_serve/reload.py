"""A new model version without a restart: the model a worker serves, replaced only by a verified, warmed-up one.

`ModelSlot.reload` runs on `POST /v2/repository/models/{name}/load`, on SIGHUP to the worker, and every
`--watch-seconds` when the manifest's graph changed. It reads the model directory again; when the graph's sha256
differs from the one served, the new version is loaded as at start (`ServedModel.load`: the manifest, model.onnx's
sha256, a graph the export proved, the text-op self-check, a warm-up run), in a thread while the old one keeps
serving, and only then takes the requests that arrive. A request holds the model it was decoded with until it is
answered (and the batcher never runs two models in one run), so requests in flight finish on the version they
started on. A version that fails to load is refused, with the reason; the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal

import anyio.to_thread

from http_serve import metrics
from http_serve.model import ServedModel, settle_heap
from tfbridge.contracts import DataError, ModelManifest
from tfbridge.contracts.layout import MANIFEST
from tfbridge.storage import Location

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Reload:
    """What one reload did: the version served after it and before it; `refused`: why the new one was not taken,
    and `status` the HTTP status that says so (422: the model directory's content; 500: this host's runtime)."""

    version: str
    previous: str
    refused: str | None = None
    status: int = 200

    @property
    def loaded(self) -> bool:
        return self.refused is None and self.version != self.previous


class ModelSlot:
    """The model this process serves now (`model`), and its replacement by the version in `model_dir`."""

    def __init__(self, model: ServedModel, model_dir: str, threads: int):
        self.model, self.model_dir, self.threads = model, model_dir, threads
        self._lock = asyncio.Lock()  # one reload at a time: two would load the same version twice
        self._refused: tuple | None = None  # the last graph refused (`_graph_state`), not tried again by the watch
        self._tasks: set[asyncio.Task] = set()

    def start(self, watch_seconds: float | None) -> None:
        """Inside the event loop: reload on SIGHUP, and every `watch_seconds` when the manifest changed."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload("SIGHUP")))
        if watch_seconds:
            self._spawn(self._watch(watch_seconds))

    async def stop(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def reload(self, why: str) -> Reload:
        """Loads the model directory's version if it is another; the outcome, logged and counted."""
        async with self._lock:
            old = self.model
            try:
                if await anyio.to_thread.run_sync(self._graph_sha256) == old.sha256:
                    return Reload(old.version, old.version)
                new = await anyio.to_thread.run_sync(ServedModel.load, self.model_dir, old.name, self.threads)
            except Exception as e:  # noqa: BLE001 - a version refused is reported; the old one keeps serving
                refused = Reload(old.version, old.version, f"{type(e).__name__}: {e}",
                                 422 if isinstance(e, DataError) else 500)
                log.error("%s: refused the model in %s, still serving version %s: %s", why, self.model_dir,
                          old.version, refused.refused)
                self._refused = await anyio.to_thread.run_sync(self._graph_state)
                metrics.reload_refused()
                return refused
            self.model = new
            metrics.model_replaced(old.name, old.version, old.sha256, new.version, new.sha256)
            log.info("%s: now serving version %s of %s (was %s)", why, new.version, self.model_dir, old.version)
            outcome = Reload(new.version, old.version)
            del old  # what only the requests in flight still hold is collected when they are answered
            settle_heap()
            return outcome

    async def _watch(self, seconds: float) -> None:
        """Reloads when the manifest names a graph other than the one served, unless it is the graph last refused
        as it was then."""
        while True:
            await asyncio.sleep(seconds)
            state = await anyio.to_thread.run_sync(self._graph_state)
            if state is not None and state[0] != self.model.sha256 and state != self._refused:
                await self.reload("the manifest changed")

    def _graph_sha256(self) -> str | None:
        """The sha256 the manifest records for the graph (None: it records none), as it is now."""
        manifest = ModelManifest.read(Location.of(self.model_dir) / MANIFEST)
        return manifest.onnx.sha256 if manifest.onnx is not None else None

    def _graph_state(self) -> tuple | None:
        """The graph's sha256 as the manifest records it, and the graph file's mtime and size: a refused graph
        replaced under the same manifest is another state. None while they cannot be read (a copy in progress:
        the watch waits for the next poll)."""
        try:
            directory = Location.of(self.model_dir)
            manifest = ModelManifest.read(directory / MANIFEST)
            if manifest.onnx is None:
                return None, None, None
            info = (directory / manifest.onnx.path).info()
            return manifest.onnx.sha256, info.mtime_ns, info.size
        except Exception:  # noqa: BLE001 - unreadable now: the next poll, or a reload, says why
            return None

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
