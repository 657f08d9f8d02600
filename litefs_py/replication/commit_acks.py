"""`replication.commit: replica | bucket`: a commit is acknowledged to the application only
once a candidate replica has its LTX record durably (`replica`) or the bucket has it
(`bucket`).

The FUSE request that completes the commit waits in `wait(name, txid)` (the transaction is
already recorded locally and on its way); replicas' acknowledgements (POSTed by the replica
after each applied batch) and the uploader's successful PUTs call `acknowledged`. A wait
that runs out of time returns False: the caller fails the request (the application sees an
I/O error) and the node steps down, so that the next term decides the transaction
(docs/leases.md, "Commit modes").
"""

from __future__ import annotations

import trio

COMMIT_MODES = ("local", "replica", "bucket")


class CommitAcks:
    def __init__(self, mode: str, timeout: float) -> None:
        if mode not in COMMIT_MODES:
            raise ValueError(f"commit mode {mode!r}")
        self.mode = mode
        self.timeout = timeout
        self._acked: dict[str, int] = {}  # database -> highest TXID acknowledged
        self._changed = trio.Event()
        self.waits = 0
        self.timeouts = 0

    @property
    def waiting(self) -> bool:
        return self.mode != "local"

    def acknowledged(self, name: str, txid: int) -> None:
        if txid > self._acked.get(name, 0):
            self._acked[name] = txid
            self._changed.set()
            self._changed = trio.Event()

    def acked(self, name: str) -> int:
        return self._acked.get(name, 0)

    def reset(self) -> None:
        """A new term: acknowledgements of another term count for nothing."""
        self._acked.clear()

    async def wait(self, name: str, txid: int) -> bool:
        """Until `txid` of `name` is acknowledged (True) or the timeout passes (False)."""
        self.waits += 1
        with trio.move_on_after(self.timeout):
            while self._acked.get(name, 0) < txid:
                await self._changed.wait()
            return True
        self.timeouts += 1
        return False
