"""Execute a restore: rebuild a SQLite database from a replica, or leave everything untouched.

`restore_database(client, out)` is the whole operation (plan, download, verify, install) for a
plain database file, as `litefs restore -o OUT` does; `restore_to_data_dir(client, data_dir,
name)` installs the result where `litefs mount` keeps the database, with its position, so the
mount continues the replica's TXIDs. Both are blocking (run them in a worker thread from trio).

Safety protocol:

1. Everything is written to `OUT.tmp` (a stale one from a crashed run is removed first), in
   missing parent directories created on the way.
2. Every LTX object is streamed through the decoder, which checks every rule and the file
   checksum; where the object metadata records `litefs-post-apply-checksum` (or the file itself
   carries checksums), the rolling database checksum after that file must match. The rolling
   checksum is kept incrementally in a page-checksum table: O(pages changed) per file.
3. Optionally `PRAGMA integrity_check`.
4. fsync `OUT.tmp`, remove sidecar files that would corrupt the new database (`OUT-wal`,
   `OUT-shm`, `OUT-journal` of the database being replaced, or orphaned ones), rename to `OUT`,
   fsync the directory.

On any error `OUT.tmp` is removed, `OUT` is untouched, and the error names the object and the
problem. The restored file keeps the bytes the backups hold: a database replicated in WAL mode
keeps header bytes 18/19 = 2 (exactly what `litestream restore` produces); SQLite opens it in
WAL mode and creates its -wal/-shm files as usual.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import ExitCode, QuietError
from ..ltx import (
    Decoder,
    Header,
    LTXError,
)
from ..storage.base import LtxFileInfo, ReplicaClient
from ..storage.errors import ObjectNotFoundError
from ..store.page_table import PageTable
from .progress import NullProgress
from .restore_plan import (
    CorruptObjectError,
    MixedPageSizeError,
    NoBackupsError,
    RestorePlan,
    RestoreTarget,
    describe_file,
    format_time,
    metadata_loader,
    plan_restore,
)

__all__ = [
    "DatabaseDeletedError",
    "IntegrityCheckError",
    "OutputExistsError",
    "RestoreResult",
    "apply_plan",
    "restore_database",
    "restore_to_data_dir",
]

if TYPE_CHECKING:
    from ..store.store import Store

log = logging.getLogger("litefs.restore")

SIDE_FILES = ("-wal", "-shm", "-journal")
STATUS_RESTORED = "restored"
STATUS_DB_EXISTS = "skipped: database exists"
STATUS_NO_REPLICA = "skipped: no backups"


class OutputExistsError(QuietError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.FAILED)


class DatabaseDeletedError(QuietError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.NOT_FOUND)


class IntegrityCheckError(QuietError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.FAILED)


@dataclass
class RestoreResult:
    """What a restore did (or why it did nothing); `to_json()` is `--json`'s document."""

    status: str
    output: Path
    replica: str
    format: str = "ltx"  # "ltx" (Litestream 0.5 / litefs-py) or "litestream-0.3"
    txid: int | None = None
    timestamp: datetime | None = None
    page_size: int = 0
    page_count: int = 0
    checksum: int | None = None  # rolling database checksum of the result
    files: list[str] = field(default_factory=list)  # object keys applied, in order
    bytes_read: int = 0
    checksums_verified: int = 0  # post-apply checksums that matched
    integrity: str | None = None  # "ok" when --integrity-check ran
    removed: list[str] = field(default_factory=list)  # stale side files removed
    seconds: float = 0.0
    generation: str | None = None  # Litestream 0.3 only
    wal_index: int | None = None  # Litestream 0.3 only: the last WAL index replayed

    @property
    def restored(self) -> bool:
        return self.status == STATUS_RESTORED

    def summary(self) -> str:
        if self.status == STATUS_DB_EXISTS:
            return f"{self.output} already exists; nothing restored (--if-db-not-exists)"
        if self.status == STATUS_NO_REPLICA:
            return (f"no backups found at {self.replica}; nothing restored "
                    "(--if-replica-exists)")
        where = (f"TXID {self.txid:016x}" if self.txid is not None else
                 f"generation {self.generation} WAL index {self.wal_index:08x}"
                 if self.generation is not None and self.wal_index is not None else
                 f"generation {self.generation}")
        when = f" ({format_time(self.timestamp)})" if self.timestamp is not None else ""
        checks = f", {self.checksums_verified} checksum(s) verified" \
            if self.checksums_verified else ""
        integ = ", integrity ok" if self.integrity == "ok" else ""
        return (f"restored {self.output} from {self.replica} at {where}{when}: "
                f"{self.page_count} pages of {self.page_size} bytes from {len(self.files)} "
                f"object(s), {self.bytes_read} bytes in {self.seconds:.1f}s{checks}{integ}")

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "output": str(self.output),
            "replica": self.replica,
            "format": self.format,
            "txid": None if self.txid is None else f"{self.txid:016x}",
            "timestamp": None if self.timestamp is None else format_time(self.timestamp),
            "page_size": self.page_size,
            "page_count": self.page_count,
            "checksum": None if self.checksum is None else f"{self.checksum:016x}",
            "files": self.files,
            "bytes_read": self.bytes_read,
            "checksums_verified": self.checksums_verified,
            "integrity": self.integrity,
            "removed": self.removed,
            "seconds": round(self.seconds, 3),
            "generation": self.generation,
            "wal_index": None if self.wal_index is None else f"{self.wal_index:08x}",
        }


# --------------------------------------------------------------------------------------------
# Streaming an object into the decoder
# --------------------------------------------------------------------------------------------


class _ChunkReader:
    """A read()-able view of an iterator of chunks (a streamed GET)."""

    def __init__(self, chunks: Iterator[bytes], progress: NullProgress) -> None:
        self._chunks = chunks
        self._buf = b""
        self._pos = 0
        self._progress = progress
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = [self._buf[self._pos:]]
            for chunk in self._chunks:
                self._count(chunk)
                parts.append(chunk)
            self._buf, self._pos = b"", 0
            return b"".join(parts)
        while len(self._buf) - self._pos < n:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                break
            self._count(chunk)
            self._buf = self._buf[self._pos:] + chunk
            self._pos = 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def _count(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._progress.advance(len(chunk))

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


# --------------------------------------------------------------------------------------------
# Applying a plan with an incremental rolling checksum
# --------------------------------------------------------------------------------------------


@dataclass
class _ApplyState:
    page_size: int = 0
    txid: int = 0
    timestamp_ms: int = 0
    commit: int = 0
    rolling: PageTable | None = None
    first: LtxFileInfo | None = None
    verified: int = 0
    bytes_read: int = 0
    keys: list[str] = field(default_factory=list)


def _apply_file(client: ReplicaClient, info: LtxFileInfo, f: BinaryIO, state: _ApplyState,
                progress: NullProgress, where: str) -> Header:
    reader = _ChunkReader(iter(client.open_ltx(info)), progress)
    try:
        try:
            dec = Decoder(reader, name=info.key)  # type: ignore[arg-type]
            h = dec.header
            if (h.min_txid, h.max_txid) != (info.min_txid, info.max_txid):
                raise CorruptObjectError(
                    info.key, f"its header says TXIDs {h.min_txid:016x}-{h.max_txid:016x} but "
                    f"its name says {info.min_txid:016x}-{info.max_txid:016x}", info.min_txid)
            if state.rolling is None:
                state.page_size = h.page_size
                state.rolling = PageTable(h.page_size)
                state.first = info
            elif h.page_size != state.page_size:
                assert state.first is not None
                raise MixedPageSizeError(
                    f"the backups at {where} mix page sizes: {describe_file(state.first)} has "
                    f"{state.page_size}-byte pages but {describe_file(info)} has "
                    f"{h.page_size}; restore up to TXID {info.min_txid - 1:016x} (--txid "
                    f"{info.min_txid - 1:x}) or remove the files of the other database")
            rolling = state.rolling
            if h.is_snapshot:
                rolling = state.rolling = PageTable(h.page_size)
                f.truncate(0)
            elif not h.no_checksum and h.min_txid == state.txid + 1 \
                    and h.pre_apply_checksum != rolling.checksum:
                raise CorruptObjectError(
                    info.key, f"its pre-apply checksum {h.pre_apply_checksum:016x} does not "
                    f"match the database rebuilt up to TXID {state.txid:016x} "
                    f"({rolling.checksum:016x})", info.min_txid)
            ps = h.page_size
            old_count = rolling.page_count
            seek, write, setck = f.seek, f.write, rolling.set_page
            for pgno, data in dec.pages():
                seek((pgno - 1) * ps)
                write(data)
                setck(pgno, data)
        except LTXError as exc:
            problem = exc.message if exc.offset is None else \
                f"{exc.message} (at byte {exc.offset})"
            raise CorruptObjectError(info.key, problem, info.min_txid) from None
        trailer = dec.trailer
        assert trailer is not None
        f.truncate(h.commit * ps)
        rolling.finish_growth(old_count, h.commit)
        ck = rolling.checksum
        if not h.no_checksum:
            if trailer.post_apply_checksum != ck:
                raise CorruptObjectError(
                    info.key, f"the database checksum after it is {ck:016x} but the file "
                    f"records {trailer.post_apply_checksum:016x}", info.min_txid)
            state.verified += 1
        if info.post_apply_checksum:
            if info.post_apply_checksum != ck:
                raise CorruptObjectError(
                    info.key, f"the database checksum after it is {ck:016x} but its "
                    f"litefs-post-apply-checksum metadata records "
                    f"{info.post_apply_checksum:016x}", info.min_txid)
            state.verified += 1
        state.txid = h.max_txid
        state.timestamp_ms = h.timestamp
        state.commit = h.commit
        state.bytes_read += reader.total
        state.keys.append(info.key)
        return h
    finally:
        reader.close()


def apply_plan(client: ReplicaClient, plan: RestorePlan, f: BinaryIO, *,
               progress: NullProgress | None = None) -> _ApplyState:
    """Apply every file of `plan` to the (empty) database file `f`; return what was built.

    The caller owns `f` and discards it on error: pages are written as they are decoded and
    each file is verified when its last byte has been read.
    """
    progress = progress or NullProgress()
    resolve = metadata_loader(client)
    state = _ApplyState()
    for info in plan.files:
        # The checksum metadata may need a HEAD (S3 listings carry no metadata).
        info = resolve(info)
        _apply_file(client, info, f, state, progress, plan.replica)
    if state.commit == 0:
        last = plan.files[-1]
        raise DatabaseDeletedError(
            f"the database at {plan.replica} was deleted at TXID {last.max_txid:016x} "
            f"({describe_file(last)}); restore an earlier point with --txid "
            f"{last.min_txid - 1:x}")
    return state


# --------------------------------------------------------------------------------------------
# Files and directories
# --------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tmp(tmp: Path) -> None:
    for p in (tmp, *(Path(f"{tmp}{s}") for s in SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _make_parents(out: Path) -> None:
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise QuietError(f"cannot create {parent}: a file with that name exists",
                         ExitCode.IO) from None
    except OSError as exc:
        raise QuietError(f"cannot create the directory {parent} for {out.name}: "
                         f"{exc.strerror or exc}", ExitCode.IO) from None


def integrity_check(path: Path) -> str:
    """`PRAGMA integrity_check` on a database nobody else has open; returns "ok" or the
    problems. Opened immutable: no -wal/-shm files are created and nothing is written."""
    uri = f"file:{urllib.parse.quote(str(path))}?immutable=1"
    conn = sqlite3.connect(uri, uri=True)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()
    return "\n".join(str(r[0]) for r in rows)


def _install(tmp: Path, out: Path, removed: list[str]) -> None:
    """fsync'd `tmp` becomes `out`: side files that would be applied to the new database are
    removed first (an old -wal or hot -journal would corrupt it), then rename, then fsync."""
    for suffix in SIDE_FILES:
        side = Path(f"{out}{suffix}")
        if side.exists() or side.is_symlink():
            side.unlink()
            removed.append(str(side))
    os.replace(tmp, out)
    _fsync_dir(out.parent)


# --------------------------------------------------------------------------------------------
# The operations
# --------------------------------------------------------------------------------------------


def _target(txid: int | None, timestamp: datetime | None) -> RestoreTarget:
    return RestoreTarget(txid=txid, timestamp=timestamp)


def _has_legacy(client: ReplicaClient) -> bool:
    from .legacy_v03 import has_generations

    return has_generations(client)


def restore_database(
    client: ReplicaClient,
    out: str | os.PathLike[str],
    *,
    txid: int | None = None,
    timestamp: datetime | None = None,
    plan: RestorePlan | None = None,
    if_replica_exists: bool = False,
    if_db_not_exists: bool = False,
    force: bool = False,
    integrity: bool = False,
    progress: NullProgress | None = None,
    generation: str | None = None,
    wal_index: int | None = None,
) -> RestoreResult:
    """Restore the replica `client` into the database file `out`.

    Target: the latest state, `txid` (inclusive) or `timestamp` (the last transaction at or
    before it). `plan` skips planning (e.g. after a `--dry-run` was shown). With no LTX files
    but Litestream 0.3 `generations/`, those are restored (`generation`/`wal_index` pick one).

    Returns a RestoreResult whose status says whether anything was restored:
    `if_db_not_exists` and an existing `out` → "skipped: database exists";
    `if_replica_exists` and an empty replica → "skipped: no backups". Raises QuietError
    subclasses (OutputExistsError, restore_plan errors, CorruptObjectError, StorageError...).
    """
    started = time.monotonic()
    out = Path(out)
    progress = progress or NullProgress()
    where = client.description
    if out.exists() or out.is_symlink():
        if out.is_dir():
            raise OutputExistsError(f"{out} is a directory; give the database file path "
                                    "with -o (e.g. -o /data/app.db)")
        if if_db_not_exists:
            return RestoreResult(STATUS_DB_EXISTS, out, where)
        if not force:
            raise OutputExistsError(
                f"{out} already exists; nothing was changed. Use --force to replace it (its "
                "-wal, -shm and -journal files are removed too; stop every program using it "
                "first), or --if-db-not-exists to keep it and exit 0")

    legacy = generation is not None or wal_index is not None
    replan = plan is None and not legacy  # our own plan: redo it if compaction moves files
    if plan is None and not legacy:
        try:
            plan = plan_restore(client, _target(txid, timestamp))
        except NoBackupsError:
            if _has_legacy(client):
                legacy = True
            elif if_replica_exists:
                return RestoreResult(STATUS_NO_REPLICA, out, where)
            else:
                raise
    if legacy:
        if txid is not None:
            raise QuietError(f"the backups at {where} are Litestream 0.3 generations, which "
                             "have no TXIDs: use --timestamp, or --generation/--index",
                             ExitCode.USAGE)
        from .legacy_v03 import restore_legacy

        try:
            return restore_legacy(client, out, timestamp=timestamp, generation=generation,
                                  wal_index=wal_index, integrity=integrity, progress=progress,
                                  started=started)
        except NoBackupsError:
            if if_replica_exists:
                return RestoreResult(STATUS_NO_REPLICA, out, where)
            raise
    assert plan is not None

    _make_parents(out)
    tmp = Path(f"{out}.tmp")
    _remove_tmp(tmp)
    result = RestoreResult(STATUS_RESTORED, out, where)
    try:
        progress.add_total(plan.total_size)
        for attempt in range(3):
            try:
                with open(tmp, "w+b") as f:
                    state = apply_plan(client, plan, f, progress=progress)
                    f.flush()
                    os.fsync(f.fileno())
                break
            except ObjectNotFoundError:
                # A file of the plan was compacted away while we read (the replica is live):
                # plan again from the current listing.
                if not replan or attempt == 2:
                    raise
                log.info("a planned object disappeared from %s (compaction); planning again",
                         where)
                plan = plan_restore(client, _target(txid, timestamp))
        progress.close()
        if integrity:
            result.integrity = _check(tmp, f"the database rebuilt from {where} at TXID "
                                           f"{state.txid:016x}")
        _install(tmp, out, result.removed)
    except BaseException:
        progress.close()
        _remove_tmp(tmp)
        raise
    assert state.rolling is not None
    result.txid = state.txid
    result.timestamp = datetime.fromtimestamp(state.timestamp_ms / 1000, tz=UTC) \
        if state.timestamp_ms else plan.timestamp
    result.page_size = state.page_size
    result.page_count = state.commit
    result.checksum = state.rolling.checksum
    result.files = state.keys
    result.bytes_read = state.bytes_read
    result.checksums_verified = state.verified
    result.seconds = time.monotonic() - started
    log.info("%s", result.summary())
    return result


def _check(path: Path, what: str) -> str:
    verdict = integrity_check(path)
    if verdict != "ok":
        first = verdict.splitlines()[0] if verdict else "no result"
        raise IntegrityCheckError(
            f"PRAGMA integrity_check failed on {what}: {first}; nothing was installed. "
            "Restore an earlier --txid or --timestamp, or report the backup as damaged")
    return verdict


def restore_to_data_dir(
    client: ReplicaClient,
    store: Store,
    name: str,
    *,
    txid: int | None = None,
    timestamp: datetime | None = None,
    plan: RestorePlan | None = None,
    if_replica_exists: bool = False,
    if_db_not_exists: bool = False,
    force: bool = False,
    integrity: bool = False,
    progress: NullProgress | None = None,
    generation: str | None = None,
    wal_index: int | None = None,
) -> RestoreResult:
    """Restore database `name` where `litefs mount` keeps it, with its position
    (`Store.install_restored`), so the mount continues the replica's TXIDs.

    The caller must hold the data directory (the mount holds its lock; the CLI takes it).
    "Exists" means the database file exists in the store; with `force` the whole database
    directory (database, WAL, journal, LTX log) is replaced.
    """
    from ..store.store import RestoredDatabase  # `litefs restore -o` does not load the store

    database = store.database_path(name)
    if store.has_database(name):
        if if_db_not_exists:
            return RestoreResult(STATUS_DB_EXISTS, database, client.description)
        if not force:
            raise OutputExistsError(
                f"database {name} already exists in the data directory {store.data_dir} "
                f"({database}); nothing was changed. Use --force to replace it and its local "
                "LTX log, or --if-db-not-exists to keep it and exit 0")
    staged = store.stage_restore(name)
    try:
        result = restore_database(
            client, staged, txid=txid, timestamp=timestamp, plan=plan,
            if_replica_exists=if_replica_exists, integrity=integrity, progress=progress,
            generation=generation, wal_index=wal_index)
        if result.restored:
            result.checksum = store.install_restored(name, staged, RestoredDatabase(
                result.txid or 0, result.page_size, result.page_count, result.checksum,
                result.timestamp))
    finally:
        store.discard_restore(name)
    result.output = database
    return result
