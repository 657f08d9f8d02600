"""aio.run: blocking calls in worker threads, at most 8 at once."""

from __future__ import annotations

import threading
import time

import trio

from litefs_py.storage import aio


def test_runs_in_threads_with_a_limit() -> None:
    lock = threading.Lock()
    running = 0
    peak = 0
    main = threading.get_ident()

    def work(i: int, delay: float) -> tuple[int, int]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(delay)
        with lock:
            running -= 1
        return i, threading.get_ident()

    async def main_task() -> list[tuple[int, int]]:
        results: list[tuple[int, int]] = []

        async def one(i: int) -> None:
            results.append(await aio.run(work, i, 0.05))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
        return results

    for _ in range(2):  # the module-level limiter works across trio runs
        results = trio.run(main_task)
        assert sorted(i for i, _t in results) == list(range(20))
        assert all(t != main for _i, t in results)
        assert peak == 8
        assert aio.LIMITER.borrowed_tokens == 0
        peak = 0
