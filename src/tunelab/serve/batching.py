"""Micro-batching: requests that arrive together share one model call.

Each model has one `MicroBatcher`: an asyncio queue of items (one text, one image, one generation
request) and a worker task. The worker takes the first waiting item, then keeps taking items until it has
`max_batch_size` of them or `max_wait_s` has passed since the first, and runs the model function on the
whole batch in the model's own thread (torch and ONNX Runtime release the GIL, so the event loop keeps
serving). While a batch runs, new items queue up, so under load batches fill without waiting at all. With
``workers`` > 1, that many batches run at once (ONNX Runtime sessions take concurrent calls; one compute
thread per batch wastes less than one batch split over several threads).

A request with several inputs submits several items; they may be split across batches. A request that
times out or goes away cancels its futures, and cancelled items are dropped before the model call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from tunelab.serve.errors import APIError

logger = logging.getLogger("tunelab.serve")


@dataclass
class _Entry:
    item: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """FN(items) -> results (same length; an Exception instance fails just that item), run in EXECUTOR."""

    def __init__(self, name: str, fn: Callable[[list[Any]], list[Any]], executor: Executor, max_batch_size: int = 16,
                 max_wait_s: float = 0.005, max_pending: int = 4096,
                 on_batch: Callable[[int, float, list[float]], None] | None = None, workers: int = 1) -> None:
        self.name, self.fn, self.executor = name, fn, executor
        self.max_batch_size, self.max_wait_s, self.max_pending = max(1, max_batch_size), max(0.0, max_wait_s), max_pending
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Entry] | None = None
        self.workers = max(1, workers)  # batches in flight at once (EXECUTOR needs as many threads)
        self._tasks: list[asyncio.Task] = []
        self.batches = 0

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._worker(), name=f"batcher-{self.name}-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass  # shutting down: the worker's own end (cancelled or failed) was already reported
        if self._queue is not None:
            while not self._queue.empty():
                entry = self._queue.get_nowait()
                if not entry.future.done():
                    entry.future.set_exception(APIError(503, "the server is shutting down", code="shutting_down"))

    @property
    def alive(self) -> bool:
        return any(not task.done() for task in self._tasks)

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    # -- use -------------------------------------------------------------------------------------------
    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Results for ITEMS, in order. Raises what the model function raised for any of them."""
        if not self.alive or self._queue is None:
            raise APIError(503, f"model {self.name} is not running", code="model_unavailable")
        if self.pending + len(items) > self.max_pending:
            raise APIError(503, f"model {self.name} is overloaded ({self.pending} items queued); retry later",
                           code="overloaded", headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, fut in zip(items, futures):
            self._queue.put_nowait(_Entry(item, fut))
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for fut in futures:
                if not fut.done():
                    fut.cancel()
            raise

    async def _collect(self) -> list[_Entry]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                batch = [e for e in await self._collect() if not e.future.done()]
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the worker alive whatever happens
                logger.exception("batcher %s: collecting a batch failed", self.name)
                continue
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [e.item for e in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"model function returned {len(results)} results for {len(batch)} items")
            except asyncio.CancelledError:
                for e in batch:
                    if not e.future.done():
                        e.future.cancel()
                raise
            except Exception as err:  # noqa: BLE001 - fail this batch's requests, keep serving
                logger.exception("batcher %s: model call failed", self.name)
                results = [err] * len(batch)
            self.batches += 1
            if self.on_batch is not None:
                try:
                    self.on_batch(len(batch), time.perf_counter() - started, [started - e.enqueued for e in batch])
                except Exception:  # noqa: BLE001
                    logger.exception("batcher %s: metrics callback failed", self.name)
            for e, r in zip(batch, results):
                if e.future.done():
                    continue
                if isinstance(r, BaseException):
                    e.future.set_exception(r)
                else:
                    e.future.set_result(r)
