"""Blocking replica calls from trio: `await aio.run(client.write_ltx, ...)`.

Every call runs in a worker thread; at most `LIMITER.total_tokens` (8) at once across the
process, so a burst of uploads and restores cannot open unbounded threads and connections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import trio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

LIMITER = trio.CapacityLimiter(8)


async def run(fn: Callable[[*Ts], T], *args: *Ts) -> T:
    """`fn(*args)` in a worker thread (cancellation waits for it: boto3 calls have timeouts)."""
    return await trio.to_thread.run_sync(fn, *args, limiter=LIMITER)
