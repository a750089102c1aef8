"""Dynamic batching of concurrent requests: one worker thread runs the pipeline over whatever has queued up.

A request is put on a queue and its handler awaits a future. The worker takes the oldest request, then everything
else already waiting (up to ``max_batch``; optionally it waits ``max_wait_ms`` for more), and serves them with one
pipeline run, so the model stages run once per batch instead of once per request. At low load a batch is one request
and nothing waits; under load, requests that arrive while a batch computes form the next one. This is what lets
two CPU cores keep up with many concurrent clients: the per-call overhead of the models is paid per batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
_STOP = object()


class MicroBatcher(Generic[T, R]):
    """``submit(item) -> Future``; ``fn(items) -> results`` (same length, same order) runs on the worker threads."""

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], max_batch: int = 64, max_wait_ms: float = 0.0,
                 workers: int = 1, name: str = "batcher") -> None:
        if max_batch < 1 or workers < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch and workers must be >= 1 and max_wait_ms >= 0, got {max_batch}, {workers}, "
                             f"{max_wait_ms}")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._queue: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        self._started = False

    def start(self) -> None:
        if not self._started:
            for t in self._threads:
                t.start()
            self._started = True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Serve what is queued, then stop the workers."""
        if not self._started:
            return
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout_s)
        self._started = False

    def submit(self, item: T) -> Future:
        if not self._started:
            raise RuntimeError("the batcher is not running")
        fut: Future = Future()
        self._queue.put((item, fut))
        return fut

    def _collect(self, first: tuple) -> tuple[list[tuple], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                wait = deadline - time.monotonic()
                nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                stop = True
                break
            batch.append(nxt)
        return batch, stop

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._collect(first)
            items = [item for item, _ in batch]
            try:
                results = self.fn(items)
                if len(results) != len(items):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, the worker lives on
                log.exception("batch of %d failed", len(items))
                for _, fut in batch:
                    fut.set_exception(exc)
            else:
                for (_, fut), res in zip(batch, results):
                    fut.set_result(res)
            if stop:
                return


__all__ = ["MicroBatcher"]
