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

The cost is bounded: the rebuild runs in a child process (`python -m
litefs_py.replication.drill_process`, the client's settings passed on its stdin, the result as one
JSON line on its stdout) at the lowest CPU priority (nice 19), reading from the bucket at most
READ_RATE bytes per second, so CPU and I/O per second are bounded whatever the database size
(a larger database takes longer). A process rather than a thread because of the GIL: in a
thread of the mount the rebuild's Python work took the interpreter from the FUSE handlers, and
bench/drill.py measured commits at 0.64-0.85 of the rate without the drill; nice cannot help a
thread that holds the GIL. Runs never overlap: the next one starts `interval` seconds after the
previous one ended; stopping the mount kills a running one. docs/reliability.md has the
figures.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from ..errors import QuietError
from ..ltx import LTXError
from ..storage.base import ChunkStream, DelegatingReplicaClient, LtxFileInfo, ReplicaClient
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
NICE = 19  # the drill process's CPU priority (the lowest)
ClientFactory = Callable[[], ReplicaClient]  # picklable: it is sent to the drill process


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


class _PacedClient(DelegatingReplicaClient):
    """`inner`, reading LTX objects at most `rate` bytes per second (a token bucket)."""

    def __init__(self, inner: ReplicaClient, rate: float) -> None:
        super().__init__(inner)
        self.rate = rate
        self.bytes_read = 0
        self._next = time.monotonic()

    def _pace(self, n: int) -> None:
        self.bytes_read += n
        now = time.monotonic()
        self._next = max(self._next, now) + n / self.rate
        if self._next > now:
            time.sleep(self._next - now)

    def open_ltx(self, info: LtxFileInfo) -> Iterator[bytes]:
        return self._paced(self.inner.open_ltx(info))

    def open_ltx_with_metadata(self, info: LtxFileInfo) -> tuple[LtxFileInfo, Iterator[bytes]]:
        full, chunks = self.inner.open_ltx_with_metadata(info)
        return full, ChunkStream(self._paced(chunks), getattr(chunks, "close", lambda: None))

    def _paced(self, chunks: Iterator[bytes]) -> Generator[bytes, None, None]:
        for chunk in chunks:
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


@dataclass(frozen=True)
class _Job:
    """What the drill process gets on its stdin (pickled: the factory holds the replica's
    settings, secrets included, which must not travel on a command line)."""

    client_factory: ClientFactory
    path: Path
    read_rate: float


class RestoreDrill:
    def __init__(self, db: DB, client: ReplicaClient, client_factory: ClientFactory,
                 work_dir: Path, interval: float, *, read_rate: float = READ_RATE) -> None:
        if interval <= 0:
            raise ValueError(f"validation interval must be positive, not {interval}")
        self.db = db
        self.client = client  # for messages; the drill process makes its own
        self.client_factory = client_factory
        self.work_dir = work_dir
        self.read_rate = read_rate
        self.status = DrillStatus(interval=interval)

    @property
    def path(self) -> Path:
        return self.work_dir / f"{self.db.name}.drill"

    async def run(self) -> None:
        """Drill every `interval` seconds, from `interval` after the start (cancel to stop)."""
        while True:
            await trio.sleep(self.status.interval)
            await self.run_once()

    async def run_once(self) -> None:
        """One drill: rebuild in the drill process, compare, record (never raises but
        Cancelled)."""
        where = self.client.description
        started = time.monotonic()
        st = self.status
        st.running = True
        st.last_run_at = datetime.now(UTC)
        try:
            result = await self._rebuild()
        finally:
            st.running = False
            st.runs += 1
            st.last_run_seconds = time.monotonic() - started
        status = result.get("status")
        if status == "skip":
            return  # nothing uploaded yet, or the database was deleted: nothing to check
        if status != "ok":
            self._failed(str(result.get("kind") or "restore"),
                         f"restoring from {where} failed: {result.get('message')}")
            return
        rebuilt = _Rebuilt(txid=int(result["txid"]), checksum=int(result["checksum"]),
                           keys=tuple(result["keys"]), verified=int(result["verified"]),
                           avoided=dict(result["avoided"]), bytes_read=int(result["bytes_read"]))
        st.last_bytes_read = rebuilt.bytes_read
        if rebuilt.avoided:
            self._failed("damaged", "the restore from {} had to go around damaged object(s): "
                         "{}".format(where, "; ".join(f"{k}: {p}"
                                                      for k, p in rebuilt.avoided.items())))
            return
        against = ["object metadata"] if rebuilt.verified else []
        local = await local_checksum_at(self.db, rebuilt.txid)
        if local is not None:
            if local.checksum != rebuilt.checksum:
                st.mismatches += 1
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
        st.last_verified_txid = rebuilt.txid
        st.last_verified_at = datetime.now(UTC)
        st.last_verified_checksum = rebuilt.checksum
        st.verified_against = tuple(against)
        log.info("%s: restore drill verified TXID %016x from %s (checksum %016x, against %s; "
                 "%d bytes in %.1f s)", self.db.name, rebuilt.txid, where, rebuilt.checksum,
                 " and ".join(against), rebuilt.bytes_read, st.last_run_seconds or 0.0)

    async def _rebuild(self) -> dict[str, Any]:
        """Run the drill process; its JSON result. Cancelled (the mount stops): the process
        is killed and its file removed."""
        job = pickle.dumps(_Job(self.client_factory, self.path, self.read_rate))
        try:
            proc = await trio.run_process(
                [sys.executable, "-m", "litefs_py.replication.drill_process"], stdin=job,
                capture_stdout=True, check=False, deliver_cancel=_kill)
        except OSError as exc:
            return {"status": "failed", "kind": "local_io",
                    "message": f"cannot start the drill process: {exc}"}
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._remove_file)
        lines = proc.stdout.decode(errors="replace").strip().splitlines()
        try:
            doc: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, ValueError):
            return {"status": "failed", "kind": "drill_process",
                    "message": f"the drill process exited with {proc.returncode} without a "
                               "result (see the log above)"}
        return doc

    def _remove_file(self) -> None:
        self.path.unlink(missing_ok=True)

    def _failed(self, kind: str, message: str) -> None:
        st = self.status
        st.failures += 1
        st.failure_kinds[kind] = st.failure_kinds.get(kind, 0) + 1
        st.last_failure = message
        st.last_failure_at = datetime.now(UTC)
        log.error("%s: restore drill failed: %s", self.db.name, message)


async def _kill(proc: trio.Process) -> None:
    proc.kill()


# ---- the drill process ---------------------------------------------------------------------


def _rebuild(job: _Job) -> dict[str, Any]:
    """The newest state into the job's file, paced; the result document."""
    client = _PacedClient(job.client_factory(), job.read_rate)
    job.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(job.path, "w+b") as f:
            state = build_verified(client, RestoreTarget(), f)
    finally:
        job.path.unlink(missing_ok=True)
    assert state.rolling is not None
    return {"status": "ok", "txid": state.txid, "checksum": state.rolling.checksum,
            "keys": list(state.keys), "verified": state.verified, "avoided": state.avoided,
            "bytes_read": client.bytes_read}


def _outcome(job: _Job) -> dict[str, Any]:
    try:
        return _rebuild(job)
    except (NoBackupsError, DatabaseDeletedError) as exc:
        return {"status": "skip", "message": exc.message}
    except (StorageError, QuietError, LTXError, OSError) as exc:
        message = exc.message if isinstance(exc, QuietError) else str(exc)
        kind = ("damaged" if isinstance(exc, CorruptObjectError | LTXError) else
                error_kind(exc) if isinstance(exc, StorageError | OSError) else "restore")
        return {"status": "failed", "kind": kind, "message": message}


def child_main() -> int:
    """`python -m litefs_py.replication.drill_process`: one rebuild; the job pickled on stdin (from
    the mount, never from a user), the result as one JSON line on stdout; its warnings (a
    transfer tried again) go to stderr, which is the mount's log."""
    os.nice(NICE)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: restore drill: "
                               "%(message)s")
    job = pickle.loads(sys.stdin.buffer.read())  # our own parent's bytes
    print(json.dumps(_outcome(job)), flush=True)
    return 0
