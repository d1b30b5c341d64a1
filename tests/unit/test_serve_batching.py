"""MicroBatcher: concurrent submissions share model calls, within the size cap; failures and cancellations stay
with their own requests."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tunelab.serve.batching import MicroBatcher
from tunelab.serve.errors import APIError


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_batched_and_results_keep_their_order() -> None:
    calls: list[list[int]] = []
    threads: set[str] = set()

    def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        threads.add(threading.current_thread().name)
        time.sleep(0.02)  # a model call: requests arriving meanwhile form the next batch
        return [x * 10 for x in items]

    async def main() -> list[list[int]]:
        b = MicroBatcher("m", fn, ThreadPoolExecutor(1, thread_name_prefix="model"), max_batch_size=8, max_wait_s=0.01)
        b.start()
        try:
            return await asyncio.gather(*(b.submit([i, i + 100]) for i in range(20)))
        finally:
            await b.stop()

    results = _run(main())
    assert results == [[i * 10, (i + 100) * 10] for i in range(20)]
    assert sum(len(c) for c in calls) == 40
    assert max(len(c) for c in calls) == 8  # capped
    assert len(calls) <= 6  # 40 items in batches of up to 8, not 20 or 40 calls
    assert all(name.startswith("model") for name in threads)  # never on the event loop


def test_a_lone_request_waits_at_most_max_wait() -> None:
    async def main() -> float:
        b = MicroBatcher("m", lambda xs: xs, ThreadPoolExecutor(1), max_batch_size=64, max_wait_s=0.05)
        b.start()
        t = time.perf_counter()
        await b.submit([1])
        await b.stop()
        return time.perf_counter() - t

    assert _run(main()) < 0.5


def test_failures_reach_only_their_items() -> None:
    def fn(items: list[int]) -> list:
        if -1 in items and len(items) == 1:
            raise RuntimeError("boom")
        return [ValueError("bad item") if x == 13 else x for x in items]

    async def main() -> None:
        b = MicroBatcher("m", fn, ThreadPoolExecutor(1), max_batch_size=4, max_wait_s=0.0)
        b.start()
        assert await b.submit([1, 2]) == [1, 2]
        with pytest.raises(ValueError):
            await b.submit([13])
        with pytest.raises(RuntimeError):
            await b.submit([-1])
        assert await b.submit([3]) == [3]  # the worker survived
        assert b.alive
        await b.stop()

    _run(main())


def test_cancelled_items_are_dropped_before_the_model_call() -> None:
    seen: list[int] = []
    gate = threading.Event()

    def fn(items: list[int]) -> list[int]:
        seen.extend(items)
        gate.wait(2)
        return items

    async def main() -> None:
        b = MicroBatcher("m", fn, ThreadPoolExecutor(1), max_batch_size=1, max_wait_s=0.0)
        b.start()
        first = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0.05)  # 1 is in the model call
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.submit([2]), 0.05)  # times out while queued
        gate.set()
        assert await first == [1]
        assert await b.submit([3]) == [3]
        await b.stop()

    _run(main())
    assert seen == [1, 3]


def test_overload_is_a_503() -> None:
    async def main() -> None:
        b = MicroBatcher("m", lambda xs: (time.sleep(0.2), xs)[1], ThreadPoolExecutor(1), max_batch_size=1,
                         max_wait_s=0.0, max_pending=3)
        b.start()
        busy = asyncio.ensure_future(b.submit([0]))
        await asyncio.sleep(0.02)
        with pytest.raises(APIError) as err:
            await b.submit([1, 2, 3, 4])
        assert err.value.status == 503
        await busy
        await b.stop()

    _run(main())
