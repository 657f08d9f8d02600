"""Hold a database's writers while its files are read in a worker thread.

A snapshot reads pages straight from the backing files in a worker thread, so the trio
thread keeps serving FUSE requests. If commits keep changing the files under that read, the
snapshotter reads once more with the gate held: requests that would start a write
transaction on this database wait for it (a transaction already under way finishes first),
while reads, and every other database, carry on. The FUSE layer checks `held` (one
attribute) before each changing request.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trio

# trio is imported when a gate is first held (always inside the mount's trio run): the store
# is also used by short CLI commands (`litefs restore`, `litefs recover`), whose start-up
# time importing trio would double.


class WriteGate:
    def __init__(self) -> None:
        self.held = False
        self._holders = 0  # two snapshots of one database may hold it at once
        self._opened: trio.Event | None = None

    async def wait(self) -> None:
        """Return once the gate is not held."""
        while self.held:
            assert self._opened is not None
            await self._opened.wait()

    @contextmanager
    def hold(self) -> Iterator[None]:
        if not self._holders:
            import trio

            self._opened = trio.Event()
        self._holders += 1
        self.held = True
        try:
            yield
        finally:
            self._holders -= 1
            if not self._holders:
                self.held = False
                assert self._opened is not None
                self._opened.set()
