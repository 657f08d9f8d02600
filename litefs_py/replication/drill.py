"""The continuous restore drill (`replica.validation-interval`, Litestream 0.3's key).

Litestream users found out that their backups did not restore during the incident that needed
them. With `validation-interval: 1h` a primary restores its database from the bucket every
hour, in the background, and checks the result:

1. Plan the newest state as `litefs restore` does and rebuild it into a temporary file
   (`DATA/drill/<db>.drill`, removed afterwards) with the restore's own code
   (restore.build_verified): every object is decoded and its file checksum checked, and the
   rolling database checksum after every object that records one (`litefs-post-apply-checksum`
   metadata) must match.
2. Compare the rebuilt database's checksum with the one this node recorded for the same TXID:
   the live database when it is still at that TXID, else the trailer of the local LTX file that
   ends there (replication/local_checksum.py).
3. Record the outcome in the status document (`litefs status`): `last_verified_txid`,
   `last_verified_at`, what it was checked against, and counters of failures and mismatches
   with the last failure. A mismatch is logged as an error naming every object the restore
   applied; a restore that fails (a corrupt or missing object, a gap) is logged as an error
   with the restore's own message (which names the object and the newest restorable TXID).
   A damaged object the restore could go around still counts as a failure.

The cost is bounded: the drill runs in its own thread at the lowest CPU priority (nice 19)
and reads from the bucket at most READ_RATE bytes per second, so CPU and I/O per second are
bounded whatever the database size (a larger database takes longer). Runs never overlap: the
next one starts `interval` seconds after the previous one ended. bench/drill.py measures the
effect on commits (docs/reliability.md has the figures).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import trio

from ..errors import QuietError
from ..ltx import LTXError
from ..storage.base import DelegatingReplicaClient, LtxFileInfo, ReplicaClient
from ..storage.errors import StorageError
from ..storage.retry import error_kind
from ..store.db import DB
from .local_checksum import local_checksum_at
from .restore import DatabaseDeletedError, build_verified
from .restore_plan import CorruptObjectError, NoBackupsError, RestoreTarget

__all__ = ["READ_RATE", "DrillStatus", "RestoreDrill"]

log = logging.getLogger("litefs.replication")

READ_RATE = 16 << 20  # bytes per second the drill reads from the bucket, at most
PIECE = 256 << 10  # bytes between two looks at the clock
NICE = 19  # the drill thread's CPU priority (the lowest)
T = TypeVar("T")


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class DrillStatus:
    """One database's drill, for `litefs status` (and later metrics: plain counters)."""

    interval: float
    runs: int = 0
    running: bool = False
    last_run_at: datetime | None = None
    last_run_seconds: float | None = None
    last_bytes_read: int = 0
    last_verified_txid: int | None = None
    last_verified_at: datetime | None = None
    last_verified_checksum: int | None = None
    verified_against: tuple[str, ...] = ()
    failures: int = 0  # runs that did not verify (a mismatch, a failed or damaged restore)
    mismatches: int = 0  # runs whose rebuilt checksum differed from the local one
    last_failure: str | None = None
    last_failure_at: datetime | None = None
    failure_kinds: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "validation_interval": self.interval,
            "runs": self.runs,
            "running": self.running,
            "last_run_at": _iso(self.last_run_at),
            "last_run_seconds": None if self.last_run_seconds is None
            else round(self.last_run_seconds, 3),
            "last_bytes_read": self.last_bytes_read,
            "last_verified_txid": None if self.last_verified_txid is None
            else f"{self.last_verified_txid:016x}",
            "last_verified_at": _iso(self.last_verified_at),
            "last_verified_checksum": None if self.last_verified_checksum is None
            else f"{self.last_verified_checksum:016x}",
            "verified_against": list(self.verified_against),
            "failures": self.failures,
            "mismatches": self.mismatches,
            "last_failure": self.last_failure,
            "last_failure_at": _iso(self.last_failure_at),
            "failure_kinds": dict(sorted(self.failure_kinds.items())),
        }


class DrillStopped(Exception):
    """The drill was cancelled (the mount is stopping) while its thread was reading."""


class _PacedClient(DelegatingReplicaClient):
    """`inner`, reading LTX objects at most `rate` bytes per second (a token bucket), and
    stopping at the next piece once `stop` is set."""

    def __init__(self, inner: ReplicaClient, rate: float, stop: threading.Event) -> None:
        super().__init__(inner)
        self.rate = rate
        self.stop = stop
        self.bytes_read = 0
        self._next = time.monotonic()

    def _pace(self, n: int) -> None:
        if self.stop.is_set():
            raise DrillStopped
        self.bytes_read += n
        now = time.monotonic()
        self._next = max(self._next, now) + n / self.rate
        if self._next > now and self.stop.wait(self._next - now):
            raise DrillStopped

    def open_ltx(self, info: LtxFileInfo) -> Iterator[bytes]:
        for chunk in self.inner.open_ltx(info):
            for i in range(0, len(chunk), PIECE):
                piece = chunk[i:i + PIECE]
                self._pace(len(piece))
                yield piece

    def read_ltx(self, info: LtxFileInfo, start: int = 0, end: int | None = None) -> bytes:
        data = self.inner.read_ltx(info, start, end)
        self._pace(len(data))
        return data


@dataclass(frozen=True)
class _Rebuilt:
    txid: int
    checksum: int
    keys: tuple[str, ...]
    verified: int  # checksums inside the restore that matched (metadata, in-file)
    avoided: dict[str, str]
    bytes_read: int


def _in_low_priority_thread(fn: Callable[[], T]) -> T:
    """`fn()` in a thread of its own at nice NICE (Linux: per thread), so its CPU priority
    never leaks into trio's cached worker threads; waits for it."""
    box: dict[str, Any] = {}

    def target() -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="restore drill", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


class RestoreDrill:
    def __init__(self, db: DB, client: ReplicaClient, work_dir: Path, interval: float, *,
                 read_rate: float = READ_RATE) -> None:
        if interval <= 0:
            raise ValueError(f"validation interval must be positive, not {interval}")
        self.db = db
        self.client = client
        self.work_dir = work_dir
        self.read_rate = read_rate
        self.status = DrillStatus(interval=interval)
        self._limiter = trio.CapacityLimiter(1)

    @property
    def path(self) -> Path:
        return self.work_dir / f"{self.db.name}.drill"

    async def run(self) -> None:
        """Drill every `interval` seconds, from `interval` after the start (cancel to stop)."""
        while True:
            await trio.sleep(self.status.interval)
            await self.run_once()

    async def run_once(self) -> None:
        """One drill: rebuild, compare, record (never raises but Cancelled)."""
        name, where = self.db.name, self.client.description
        stop = threading.Event()
        started = time.monotonic()
        self.status.running = True
        self.status.last_run_at = datetime.now(UTC)
        try:
            rebuilt = await trio.to_thread.run_sync(
                functools.partial(_in_low_priority_thread,
                                  functools.partial(self._rebuild, stop)),
                abandon_on_cancel=True, limiter=self._limiter)
        except trio.Cancelled:
            stop.set()  # the thread stops at its next piece and removes its file
            raise
        except (NoBackupsError, DatabaseDeletedError):
            return  # nothing uploaded yet, or the database was deleted: nothing to check
        except (StorageError, QuietError, LTXError, OSError) as exc:
            message = exc.message if isinstance(exc, QuietError) else str(exc)
            kind = ("damaged" if isinstance(exc, CorruptObjectError | LTXError) else
                    error_kind(exc) if isinstance(exc, StorageError | OSError) else "restore")
            self._failed(kind, f"restoring from {where} failed: {message}")
            return
        finally:
            self.status.running = False
            self.status.runs += 1
            self.status.last_run_seconds = time.monotonic() - started
        self.status.last_bytes_read = rebuilt.bytes_read
        if rebuilt.avoided:
            self._failed("damaged", "the restore from {} had to go around damaged object(s): "
                         "{}".format(where, "; ".join(f"{k}: {p}"
                                                      for k, p in rebuilt.avoided.items())))
            return
        against = ["object metadata"] if rebuilt.verified else []
        local = await local_checksum_at(self.db, rebuilt.txid)
        if local is not None:
            if local.checksum != rebuilt.checksum:
                self.status.mismatches += 1
                self._failed(
                    "mismatch",
                    f"the database rebuilt from {where} at TXID {rebuilt.txid:016x} has "
                    f"checksum {rebuilt.checksum:016x}, but {local.source} records "
                    f"{local.checksum:016x} for that TXID; objects applied: "
                    f"{', '.join(rebuilt.keys)}")
                return
            against.append(local.source)
        if not against:
            self._failed("unverifiable",
                         f"the database rebuilt from {where} at TXID {rebuilt.txid:016x} has "
                         "nothing to be checked against: its objects record no checksum and "
                         "the local log no longer holds that TXID")
            return
        st = self.status
        st.last_verified_txid = rebuilt.txid
        st.last_verified_at = datetime.now(UTC)
        st.last_verified_checksum = rebuilt.checksum
        st.verified_against = tuple(against)
        log.info("%s: restore drill verified TXID %016x from %s (checksum %016x, against %s; "
                 "%d bytes in %.1f s)", name, rebuilt.txid, where, rebuilt.checksum,
                 " and ".join(against), rebuilt.bytes_read, st.last_run_seconds or 0.0)

    def _failed(self, kind: str, message: str) -> None:
        st = self.status
        st.failures += 1
        st.failure_kinds[kind] = st.failure_kinds.get(kind, 0) + 1
        st.last_failure = message
        st.last_failure_at = datetime.now(UTC)
        log.error("%s: restore drill failed: %s", self.db.name, message)

    def _rebuild(self, stop: threading.Event) -> _Rebuilt:
        """In the drill thread: the newest state into the temporary file, paced."""
        client = _PacedClient(self.client, self.read_rate, stop)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.path
        try:
            with open(path, "w+b") as f:
                state = build_verified(client, RestoreTarget(), f)
        finally:
            path.unlink(missing_ok=True)
        assert state.rolling is not None
        return _Rebuilt(txid=state.txid, checksum=state.rolling.checksum,
                        keys=tuple(state.keys), verified=state.verified,
                        avoided=dict(state.avoided), bytes_read=client.bytes_read)
