"""Execute a restore: rebuild a SQLite database from a replica, or leave everything untouched.

A restore is one `RestoreRequest` (where from, where to, which point, which flags); `restore()`
runs it. `make_plan()` is the one planner: Litestream 0.5 LTX files (restore_plan.py) or, with
--generation/--index or when the replica holds only them, Litestream 0.3 generations
(legacy_v03.py). The output is checked, staged and installed by restore_output.py for both.
Everything is blocking (run it in a worker thread from trio).

Targets: `output` is a plain database file, as `litefs restore -o OUT` writes;
`data_dir` + `name` installs the result where `litefs mount` keeps the database, with its
position, so the mount continues the replica's TXIDs (`restore_to_data_dir`).
`restore_database(client, out, **fields)` is the same as a request for a plain file.

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
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeAlias

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
from .restore_output import (
    STATUS_DB_EXISTS,
    STATUS_NO_REPLICA,
    STATUS_RESTORED,
    IntegrityCheckError,
    OutputExistsError,
    RestoreResult,
    build_and_install,
    check_output,
    integrity_check,
)
from .restore_plan import (
    CorruptObjectError,
    MixedPageSizeError,
    NoBackupsError,
    RestorePlan,
    RestoreTarget,
    describe_file,
    plan_restore,
    read_plan_headers,
)

__all__ = [
    "STATUS_DB_EXISTS",
    "STATUS_NO_REPLICA",
    "STATUS_RESTORED",
    "AnyPlan",
    "DatabaseDeletedError",
    "DryRunResult",
    "IntegrityCheckError",
    "OutputExistsError",
    "RestoreRequest",
    "RestoreResult",
    "apply_plan",
    "check_point",
    "integrity_check",
    "make_plan",
    "restore",
    "restore_database",
    "restore_to_data_dir",
]

if TYPE_CHECKING:
    from ..store.store import Store

    # Litestream 0.3 restores are rare: legacy_v03 (and the WAL reader it needs) is imported
    # only when one happens, which keeps it off every restore's start-up.
    from .legacy_v03 import LegacyPlan

log = logging.getLogger("litefs.restore")

WRITE_BUFFER = 1 << 20
PREFETCH_CHUNKS = 32  # chunks (1 MiB from S3) downloaded ahead of the decoder
AnyPlan: TypeAlias = "RestorePlan | LegacyPlan"
STATUS_PLAN = "plan"


class DatabaseDeletedError(QuietError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.NOT_FOUND)


# --------------------------------------------------------------------------------------------
# The request
# --------------------------------------------------------------------------------------------


def check_point(*, txid: int | None, timestamp: datetime | None, generation: str | None,
                wal_index: int | None) -> None:
    """Refuse combinations of restore points that mean nothing (exit 2). The CLI calls it
    before it reads the configuration, so a bad command line is reported first."""
    if txid is not None and timestamp is not None:
        raise QuietError("give --txid or --timestamp, not both", ExitCode.USAGE)
    if generation is not None and txid is not None:
        raise QuietError("--generation applies to Litestream 0.3 backups, which have no TXIDs; "
                         "use --index or --timestamp with it", ExitCode.USAGE)
    if wal_index is not None and generation is None:
        raise QuietError("--index needs --generation (as in Litestream 0.3)", ExitCode.USAGE)


@dataclass(frozen=True)
class RestoreRequest:
    """One restore: from `client`, into `output` (a plain database file) or into `data_dir`
    as database `name` (where `litefs mount` keeps it), at a point, with the CLI's flags.

    The point is the latest state, `txid` (inclusive) or `timestamp` (the last transaction at
    or before it); Litestream 0.3 backups are chosen by `generation` and `wal_index` (or
    `timestamp`). A `dry_run` needs no target: it only plans.
    """

    client: ReplicaClient
    output: Path | None = None
    data_dir: Path | None = None
    name: str = ""
    txid: int | None = None
    timestamp: datetime | None = None
    generation: str | None = None
    wal_index: int | None = None
    if_replica_exists: bool = False  # no backups at all: nothing restored, success
    if_db_not_exists: bool = False  # the target exists: nothing restored, success
    force: bool = False  # replace an existing target
    integrity: bool = False  # PRAGMA integrity_check before installing
    dry_run: bool = False
    progress: NullProgress = field(default_factory=NullProgress, compare=False)

    def __post_init__(self) -> None:
        check_point(txid=self.txid, timestamp=self.timestamp, generation=self.generation,
                    wal_index=self.wal_index)
        if self.output is not None:
            object.__setattr__(self, "output", Path(self.output))
        if self.progress is None:
            object.__setattr__(self, "progress", NullProgress())
        if self.output is not None and self.data_dir is not None:
            raise QuietError("restore to an output file or into a data directory, not both",
                             ExitCode.USAGE)
        if self.data_dir is not None and not self.name:
            raise QuietError("a restore into a data directory needs the database name",
                             ExitCode.USAGE)
        if self.output is None and self.data_dir is None and not self.dry_run:
            raise QuietError("a restore needs an output file (-o OUT) or a data directory",
                             ExitCode.USAGE)

    @property
    def target(self) -> RestoreTarget:
        return RestoreTarget(txid=self.txid, timestamp=self.timestamp)

    @property
    def legacy(self) -> bool:
        """Litestream 0.3 backups were asked for by name."""
        return self.generation is not None or self.wal_index is not None

    @property
    def destination(self) -> Path | None:
        """The database file the restore writes (None: a dry run without a target)."""
        if self.data_dir is not None:
            from ..store.paths import DataDirPaths

            return DataDirPaths(self.data_dir).database(self.name)
        return self.output


@dataclass(frozen=True)
class DryRunResult:
    """What `--dry-run` reports: the plan, or why a restore would do nothing."""

    status: str  # "plan", STATUS_DB_EXISTS or STATUS_NO_REPLICA
    replica: str
    output: Path | None = None
    plan: AnyPlan | None = None

    def summary(self) -> str:
        if self.status == STATUS_DB_EXISTS:
            return (f"{self.output} already exists; a restore would do nothing "
                    "(--if-db-not-exists)")
        if self.status == STATUS_NO_REPLICA:
            return (f"no backups found at {self.replica}; a restore would do nothing "
                    "(--if-replica-exists)")
        assert self.plan is not None
        return "\n".join(self.plan.lines())

    def to_json(self) -> dict[str, Any]:
        if self.status == STATUS_DB_EXISTS:
            return {"status": self.status, "output": str(self.output)}
        if self.status == STATUS_NO_REPLICA:
            return {"status": self.status, "replica": self.replica}
        assert self.plan is not None
        doc: dict[str, Any] = {"status": self.status, **self.plan.to_json()}
        if self.output is not None:
            doc["output"] = str(self.output)
        return doc


# --------------------------------------------------------------------------------------------
# The planner
# --------------------------------------------------------------------------------------------


def make_plan(request: RestoreRequest) -> AnyPlan:
    """The plan for `request`: LTX files (Litestream 0.5, litefs-py), or Litestream 0.3
    generations when they are asked for or are all the replica holds. Raises NoBackupsError
    when it holds neither, other RestorePlanError/QuietError when the point is unreachable."""
    client = request.client
    if not request.legacy:
        try:
            return plan_restore(client, request.target)
        except NoBackupsError:
            from .legacy_v03 import has_generations

            if not has_generations(client):
                raise
    from .legacy_v03 import plan_legacy

    if request.txid is not None:
        raise QuietError(f"the backups at {client.description} are Litestream 0.3 "
                         "generations, which have no TXIDs: use --timestamp, or "
                         "--generation/--index", ExitCode.USAGE)
    return plan_legacy(client, timestamp=request.target.timestamp,
                       generation=request.generation, wal_index=request.wal_index)


def _plan_unless_empty(request: RestoreRequest) -> AnyPlan | None:
    """`make_plan`, or None for an empty replica with --if-replica-exists."""
    try:
        return make_plan(request)
    except NoBackupsError:
        if request.if_replica_exists:
            return None
        raise


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


class _Prefetch:
    """The plan's objects, downloaded in order by one worker thread while the caller
    decodes and writes the previous bytes (at most PREFETCH_CHUNKS chunks ahead).

    Without it the server waited on our decoding and we on the server, object after
    object; with it the download streams on (socket reads release the GIL). The worker
    also completes each object's checksum metadata (from the GET's headers on S3). Its
    errors are raised in the caller where the object's bytes would have been; closing (also
    on an error of the caller) stops it and joins it."""

    def __init__(self, client: ReplicaClient, infos: Sequence[LtxFileInfo]) -> None:
        self._client = client
        self._infos = infos
        self._q: queue.Queue[tuple[str, Any]] = queue.Queue(PREFETCH_CHUNKS)
        self._stop = threading.Event()
        self._open = False  # the caller is between an object's "info" and its "end"
        self._thread = threading.Thread(target=self._run, name="restore-prefetch",
                                        daemon=True)

    def __enter__(self) -> Iterator[tuple[LtxFileInfo, Iterator[bytes]]]:
        self._thread.start()
        return self._objects()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # unblock a worker waiting to put
                self._q.get(timeout=0.05)
        self._thread.join()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._q.put(item, timeout=0.1)
                return True
        return False

    def _run(self) -> None:
        try:
            for planned in self._infos:
                # The checksum metadata: S3 listings carry none, the GET's headers do.
                if planned.metadata:
                    info, chunks = planned, self._client.open_ltx(planned)
                else:
                    info, chunks = self._client.open_ltx_with_metadata(planned)
                if not self._put(("info", info)):
                    return
                stream = iter(chunks)
                try:
                    for chunk in stream:
                        if not self._put(("chunk", chunk)):
                            return
                finally:
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()
                self._put(("end", None))
        except BaseException as exc:  # handed to the caller, raised there
            self._put(("error", exc))

    def _next(self) -> tuple[str, Any]:
        kind, value = self._q.get()
        if kind == "error":
            raise value
        return kind, value

    def _objects(self) -> Iterator[tuple[LtxFileInfo, Iterator[bytes]]]:
        for _ in self._infos:
            kind, info = self._next()
            assert kind == "info", kind
            self._open = True
            yield info, self._chunks()
            while self._open:  # the caller stopped before the end: skip the rest
                if self._next()[0] == "end":
                    self._open = False

    def _chunks(self) -> Iterator[bytes]:
        while self._open:
            kind, value = self._next()
            if kind == "end":
                self._open = False
                return
            yield value


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


def _apply_file(chunks: Iterator[bytes], info: LtxFileInfo, f: BinaryIO, state: _ApplyState,
                progress: NullProgress, where: str) -> Header:
    reader = _ChunkReader(chunks, progress)
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
            # Seek only when the next page is not where the last one ended: a seek flushes
            # the write buffer, so seeking before every page of a snapshot (pages in order)
            # made one write(2) per page.
            at = -1
            for pgno, data in dec.pages():
                pos = (pgno - 1) * ps
                if pos != at:
                    seek(pos)
                write(data)
                at = pos + len(data)
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
    state = _ApplyState()
    with _Prefetch(client, plan.files) as objects:
        for info, chunks in objects:
            _apply_file(chunks, info, f, state, progress, plan.replica)
    if state.commit == 0:
        last = plan.files[-1]
        raise DatabaseDeletedError(
            f"the database at {plan.replica} was deleted at TXID {last.max_txid:016x} "
            f"({describe_file(last)}); restore an earlier point with --txid "
            f"{last.min_txid - 1:x}")
    return state


# --------------------------------------------------------------------------------------------
# The operations
# --------------------------------------------------------------------------------------------


def restore(request: RestoreRequest, plan: AnyPlan | None = None, *,
            store: Store | None = None) -> RestoreResult | DryRunResult:
    """Run `request`: a dry run returns the plan, a restore installs the database.

    `plan` skips planning (e.g. after a dry run was shown). A restore into a data directory
    installs through `store`, the Store of `request.data_dir`, whose lock the caller holds
    (the CLI takes it, a mount holds it); without one, a Store of that directory is used
    unlocked. The result's status says whether
    anything was restored: `if_db_not_exists` and an existing target → "skipped: database
    exists"; `if_replica_exists` and an empty replica → "skipped: no backups". Raises
    QuietError subclasses (OutputExistsError, restore_plan errors, CorruptObjectError,
    StorageError...).
    """
    if request.dry_run:
        return _dry_run(request)
    if request.data_dir is not None:
        if store is None:
            from ..store.store import Store

            store = Store(request.data_dir)
        return restore_to_data_dir(
            request.client, store, request.name, txid=request.txid,
            timestamp=request.timestamp, plan=plan, if_replica_exists=request.if_replica_exists,
            if_db_not_exists=request.if_db_not_exists, force=request.force,
            integrity=request.integrity, progress=request.progress,
            generation=request.generation, wal_index=request.wal_index)
    return _restore_file(request, plan)


def restore_database(client: ReplicaClient, out: str | os.PathLike[str], *,
                     plan: AnyPlan | None = None, **fields: Any) -> RestoreResult:
    """Restore the replica `client` into the database file `out`: `restore()` of a
    `RestoreRequest(client, output=out, **fields)` (txid, timestamp, if_replica_exists,
    if_db_not_exists, force, integrity, progress, generation, wal_index)."""
    return _restore_file(RestoreRequest(client, output=Path(out), **fields), plan)


def _dry_run(request: RestoreRequest) -> DryRunResult:
    where = request.client.description
    out = request.destination
    if request.if_db_not_exists and out is not None and out.exists():
        return DryRunResult(STATUS_DB_EXISTS, where, out)
    plan = _plan_unless_empty(request)
    if plan is None:
        return DryRunResult(STATUS_NO_REPLICA, where, out)
    if isinstance(plan, RestorePlan):
        plan = read_plan_headers(request.client, plan)  # page sizes, checked
    return DryRunResult(STATUS_PLAN, where, out, plan)


def _restore_file(request: RestoreRequest, plan: AnyPlan | None) -> RestoreResult:
    started = time.monotonic()
    out = request.output
    assert out is not None
    where = request.client.description
    if not check_output(out, if_db_not_exists=request.if_db_not_exists, force=request.force):
        return RestoreResult(STATUS_DB_EXISTS, out, where)
    replan = plan is None  # our own plan: redo it if compaction moves files
    if plan is None:
        plan = _plan_unless_empty(request)
        if plan is None:
            return RestoreResult(STATUS_NO_REPLICA, out, where)
    result = RestoreResult(STATUS_RESTORED, out, where)
    if isinstance(plan, RestorePlan):
        _install_ltx(request, out, plan, result, replan=replan)
    else:
        _install_legacy(request, out, plan, result)
    result.seconds = time.monotonic() - started
    log.info("%s", result.summary())
    return result


def _install_ltx(request: RestoreRequest, out: Path, plan: RestorePlan, result: RestoreResult,
                 *, replan: bool) -> None:
    client, where = request.client, request.client.description

    def build(tmp: Path) -> _ApplyState:
        nonlocal plan
        attempt = 1
        while True:
            try:
                # A large buffer: pages arrive one by one, 4 KiB writes would be a syscall
                # each.
                with open(tmp, "w+b", buffering=WRITE_BUFFER) as f:
                    state = apply_plan(client, plan, f, progress=request.progress)
                    f.flush()
                    os.fsync(f.fileno())
                return state
            except ObjectNotFoundError:
                # A file of the plan was compacted away while we read (the replica is live):
                # plan again from the current listing.
                if not replan or attempt == 3:
                    raise
                attempt += 1
                log.info("a planned object disappeared from %s (compaction); planning again",
                         where)
                plan = plan_restore(client, request.target)

    state = build_and_install(
        out, result, build, total_size=plan.total_size, progress=request.progress,
        integrity=request.integrity,
        describe=lambda s: f"the database rebuilt from {where} at TXID {s.txid:016x}")
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


def _install_legacy(request: RestoreRequest, out: Path, plan: LegacyPlan,
                    result: RestoreResult) -> None:
    from .legacy_v03 import apply_legacy_plan

    client = request.client
    result.format = "litestream-0.3"
    built = build_and_install(
        out, result, lambda tmp: apply_legacy_plan(client, plan, tmp, request.progress),
        total_size=plan.total_size, progress=request.progress, integrity=request.integrity,
        describe=lambda _built: f"the database rebuilt from {client.description} "
                                f"generation {plan.generation}")
    result.generation = plan.generation
    result.wal_index = plan.wal_index
    result.timestamp = plan.timestamp
    result.page_size = built.page_size
    result.page_count = built.page_count
    result.files = [plan.snapshot.obj.key] + [s.obj.key for s in plan.segments]
    result.bytes_read = built.bytes_read


def restore_to_data_dir(
    client: ReplicaClient,
    store: Store,
    name: str,
    *,
    txid: int | None = None,
    timestamp: datetime | None = None,
    plan: AnyPlan | None = None,
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
