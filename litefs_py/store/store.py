"""All databases of one mount, kept under `DATA/dbs/<name>/` (the layout is in paths.py).

The store owns the data directory: every path under it, and every change to it, goes
through this class, `DB` or `LtxLog`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from ..errors import ExitCode, QuietError
from ..ltx import FLAG_V3_NO_CHECKSUM, Decoder, LTXError, encode_snapshot
from ..types import FileKind, TxRange
from .db import DB
from .ltx_log import LtxLog, fsync_dir
from .page_table import PageTable
from .paths import DataDirPaths, DBPaths
from .quarantine import DEFAULT_LIMIT, Quarantine, QuarantineUsage

log = logging.getLogger("litefs.store")


def _reapply_would_match(db: DB) -> bool:
    """Whether writing the last LTX record's pages into the database file again would make
    it match the record's post-apply checksum (worked out on page checksums; nothing is
    written)."""
    last = db.ltx.last_range()
    if last is None or not db.exists(FileKind.DATABASE):
        return False
    try:
        with db.ltx.open(last) as f:
            dec = Decoder(f, name=db.ltx.describe(last))
            header = dec.header
            if header.commit == 0 or header.flags & FLAG_V3_NO_CHECKSUM:
                return False
            pages = dict(dec.pages())
            assert dec.trailer is not None
            want = dec.trailer.post_apply_checksum
    except (LTXError, OSError):
        return False
    fd = db.dup_fd(FileKind.DATABASE)
    try:
        table = PageTable.scan(fd, header.page_size, os.fstat(fd).st_size // header.page_size)
    finally:
        os.close(fd)
    table.commit(pages, header.commit)
    return table.checksum == want


def valid_db_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in name


@dataclass(frozen=True, slots=True)
class RestoredDatabase:
    """What a restore built, for `Store.install_restored`: the database's TXID in the
    replica (0 for a Litestream 0.3 restore, which has none: it starts at 1), its size, the
    rolling checksum it was built with (None if unknown) and its time in the replica."""

    txid: int
    page_size: int
    page_count: int
    checksum: int | None = None
    timestamp: datetime | None = None


class Store:
    def __init__(self, data_dir: Path, *, quarantine_limit: int = DEFAULT_LIMIT) -> None:
        self.data_dir = data_dir
        #: Bytes each database's quarantine keeps (data.quarantine-limit, quarantine.py).
        self.quarantine_limit = quarantine_limit
        self.layout = DataDirPaths(data_dir)
        self.dbs_dir = self.layout.dbs
        self.dbs_dir.mkdir(parents=True, exist_ok=True)
        self.dbs: dict[str, DB] = {}
        self._lock_fd: int | None = None
        # database name -> (its quarantine's entry names, their usage): see quarantine_usage
        self._quarantine_seen: dict[str, tuple[tuple[str, ...], QuarantineUsage]] = {}
        self._db_listeners: list[Callable[[DB], None]] = []

    def add_db_listener(self, listener: Callable[[DB], None]) -> None:
        """Call `listener(db)` with each database object the first time it exists (loaded or
        created)."""
        self._db_listeners.append(listener)

    def lock(self) -> None:
        """Take the data directory for this process: two litefs processes on one data
        directory would both append to the same LTX logs."""
        fd = os.open(self.layout.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise QuietError(f"data directory {self.data_dir} is in use by litefs pid {owner}; "
                             "stop it first (or use another --data-dir)", ExitCode.USAGE) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def open(self, *, replica: bool = False) -> None:
        """Load every database directory (recovery runs per database, see recovery.py).

        A LiteFS data directory is taken over first: its LTX v1 files become v3 records
        (litefs_import.py), and if LiteFS crashed between writing its last LTX file and the
        database, that file is applied again, as LiteFS's own start-up would.

        On a read replica a database that does not match its log is repaired instead of
        refused: the last LTX record is applied again (a crash in the middle of an apply), and
        if that does not help the copy is moved to the quarantine and the next snapshot
        replaces it."""
        from .recovery import DatabaseDivergedError, recover

        for entry in sorted(os.listdir(self.dbs_dir)):
            if not (self.dbs_dir / entry).is_dir():
                continue
            q = self.quarantine(entry)
            imported = self._import_litefs(entry, q)
            db = DB(entry, self.dbs_dir / entry)
            if replica and db.exists(FileKind.WAL) and db.size(FileKind.WAL):
                # A replica's WAL is always empty (pages go into the database file); frames
                # left in it would be replayed over the database by a reader's recovery.
                q.keep(db.path(FileKind.WAL), "replica-wal", copy=True,
                       why="a replica's WAL must be empty; emptying it")
                os.truncate(db.path(FileKind.WAL), 0)
            try:
                recover(db, quarantine=q)
            except DatabaseDivergedError as exc:
                if not replica and not imported:
                    raise
                repaired = self._reapply_last(db, exc, q, replica=replica)
                if repaired is None:
                    continue
                db = repaired
            self.dbs[entry] = db
            self._announce(db)

    def _import_litefs(self, name: str, q: Quarantine) -> bool:
        """Convert a LiteFS database directory's LTX v1 files; whether there were any."""
        from .litefs_import import import_litefs_ltx

        result = import_litefs_ltx(self.layout.db(name), q)
        return result is not None and bool(result.converted)

    def _reapply_last(self, db: DB, exc: Exception, q: Quarantine, *,
                      replica: bool) -> DB | None:
        """Apply the last LTX record's pages again (they are idempotent) after a crash
        between writing a record and the database: a replica's interrupted apply, or LiteFS's
        commit. The database as it was is kept in the quarantine first. If that does not
        help, a primary raises `exc`; a replica drops its copy (None)."""
        from .recovery import DatabaseDivergedError, recover
        from .replica_apply import reapply_last

        log.warning("%s", exc)  # names the database
        database = db.path(FileKind.DATABASE)
        before: Path | None = None
        if not replica:
            if not _reapply_would_match(db):
                raise exc  # not the crash LiteFS repairs this way: nothing is touched
            before = q.keep(database, "before-reapply", copy=True,
                            why="the database before its last LTX record is applied again "
                                "(LiteFS writes the record first, and re-applies it on "
                                "start-up)")
        try:
            if reapply_last(db):
                db.close()
                db = DB(db.name, db.paths.root)
                recover(db, quarantine=q)
                log.info("%s: re-applied the last LTX record after an interrupted %s; at "
                         "TXID %016x", db.name, "apply" if replica else "commit", db.txid)
                return db
        except (DatabaseDivergedError, OSError, ValueError, LTXError) as again:
            log.warning("%s: re-applying the last LTX record did not help: %s", db.name, again)
        db.close()
        if before is not None:
            # The database goes back to what it was, for the choice the error offers
            # (record it as it is, or restore).
            shutil.copyfile(before, database)
            raise exc
        self._drop_replica_copy(db.paths, q)
        return None

    def _drop_replica_copy(self, paths: DBPaths, q: Quarantine) -> None:
        """Move everything of a replica's copy (database, WAL, log, ...) to the quarantine,
        as one entry: the next snapshot from the primary replaces it."""
        parts = [p for p in sorted(paths.root.iterdir()) if p != paths.quarantine]
        q.keep_all(parts, "replica-copy", name=paths.root.name,
                   why="the replica's copy does not match its log even after re-applying the "
                       "last record; it will be replaced by a snapshot from the primary")

    def quarantine(self, name: str) -> Quarantine:
        """Database `name`'s quarantine (what recovery set aside instead of deleting)."""
        return Quarantine(self.layout.db(name).root, limit=self.quarantine_limit)

    def quarantine_usage(self) -> dict[str, QuarantineUsage]:
        """What each database directory's quarantine holds, by database name; only the
        non-empty ones. Blocking: call it in a worker thread. Cheap when nothing changed
        (one directory listing per database): entries never change once named."""
        out: dict[str, QuarantineUsage] = {}
        try:
            names = os.listdir(self.dbs_dir)
        except FileNotFoundError:
            return out
        for name in sorted(names):
            q = self.quarantine(name)
            entries = q.names()
            if not entries:
                continue
            seen = self._quarantine_seen.get(name)
            if seen is None or seen[0] != entries:
                seen = (entries, q.usage())
                self._quarantine_seen[name] = seen
            out[name] = seen[1]
        return out

    def load(self, name: str) -> DB | None:
        """Database `name` as found in the data directory, not recovered (for `litefs
        recover`, with the store not mounted); None if there is no such database. A LiteFS
        database directory is imported first (see `open`)."""
        root = self.layout.db(name).root
        if not valid_db_name(name) or not root.is_dir():
            return None
        self._import_litefs(name, self.quarantine(name))
        return DB(name, root)

    def get(self, name: str) -> DB | None:
        """The database if its database file exists (a deleted one keeps its log)."""
        db = self.dbs.get(name)
        if db is None or not db.exists(FileKind.DATABASE):
            return None
        return db

    def create(self, name: str) -> DB:
        db = self.dbs.get(name)
        if db is None:
            db = DB(name, self.dbs_dir / name)
            self.dbs[name] = db
            self._announce(db)
        return db

    def _announce(self, db: DB) -> None:
        for listener in self._db_listeners:
            listener(db)

    def forget(self, name: str) -> None:
        """Drop a database that never recorded a transaction, with its directory (but not
        its quarantine, if it has one)."""
        db = self.dbs.pop(name, None)
        if db is None:
            return
        db.close()
        if not db.paths.quarantine.exists():
            shutil.rmtree(db.paths.root, ignore_errors=True)
            return
        for part in db.paths.root.iterdir():
            if part != db.paths.quarantine:
                if part.is_dir():
                    shutil.rmtree(part, ignore_errors=True)
                else:
                    part.unlink(missing_ok=True)

    def names(self) -> list[str]:
        return sorted(n for n, db in self.dbs.items() if db.exists(FileKind.DATABASE))

    def root_stat(self) -> os.stat_result:
        """The data directory's attributes (the mount's root directory reports them)."""
        return os.stat(self.data_dir)

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.data_dir)

    def save_status(self, text: str) -> None:
        """Replace `DATA/status.json` atomically (blocking: run it in a worker thread)."""
        path = self.layout.status
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    @property
    def was_primary(self) -> bool:
        """Whether this data directory was left by a lease's primary (its WAL may hold
        committed frames: recover it as a primary), not by a replica (recover it as one:
        the last applied record is re-applied if the crash cut its apply short)."""
        return self.layout.primary_term.exists()

    def mark_primary(self, epoch: int | None) -> None:
        """Record (epoch) or clear (None) that this node is a lease's primary; durable
        before it returns (blocking: run it in a worker thread)."""
        path = self.layout.primary_term
        if epoch is None:
            if path.exists():
                path.unlink()
                fsync_dir(self.data_dir)
            return
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(f"{epoch}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.data_dir)

    def close(self) -> None:
        for db in self.dbs.values():
            try:
                db.save_state()
            except OSError as exc:
                log.warning("%s: could not save state for a fast restart: %s", db.name, exc)
            db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- installing a restored database --------------------------------------------------

    def database_path(self, name: str) -> Path:
        """Where database `name`'s file lives (for messages and results)."""
        return self.layout.database(name)

    def has_database(self, name: str) -> bool:
        """Whether database `name`'s file exists in the data directory."""
        return self.layout.database(name).exists()

    def has_local_data(self, name: str) -> bool:
        """Whether anything of database `name` is here: its file or any LTX record (a
        deleted database keeps its log). A cold start restores only what has nothing."""
        paths = self.layout.db(name)
        if paths.database.exists():
            return True
        return LtxLog.has_records(paths.ltx_dir)

    def stage_restore(self, name: str) -> Path:
        """A fresh staging directory for restoring database `name`; returns the path the
        restored database file is to be written to, then given to `install_restored` (or
        dropped with `discard_restore`). What a crashed restore left is removed, except a
        database directory it was replacing, which goes to the quarantine."""
        staging = self.layout.restore_staging
        shutil.rmtree(staging / name, ignore_errors=True)
        if (staging / f"{name}.old").exists():
            self._keep_replaced(name, DBPaths(staging / f"{name}.old"))
        return DBPaths(staging / name).database

    def discard_restore(self, name: str) -> None:
        staging = self.layout.restore_staging
        shutil.rmtree(staging / name, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.rmdir()

    def install_restored(self, name: str, staged: Path, restored: RestoredDatabase) -> int:
        """Make the staged database file (from `stage_restore`) database `name`, at the
        replica's position.

        Its local LTX log gets one snapshot record `1-<TXID>` holding the restored database
        with its rolling checksum, so the mount starts at the replica's TXID and its uploader
        continues the replica's numbering instead of starting a new history. An existing
        database directory (database, WAL, journal, log) is replaced and kept in the new
        directory's quarantine (with the quarantine it had). The swap is two renames; a crash
        between them leaves the old directory in the staging area and no database, which the
        next restore replaces. The caller holds the data directory (`lock`), and
        the database is not loaded (`open` has not run, or the mount does not run).
        Returns the database checksum read back from the staged file."""
        if name in self.dbs:
            raise RuntimeError(f"{name} is loaded; it cannot be replaced underneath")
        staging = DBPaths(staged.parent)
        checksum = self._seed_log(staging, restored)
        root = self.layout.db(name).root
        old = self.layout.restore_staging / f"{name}.old"
        if root.exists():
            os.replace(root, old)
        try:
            os.replace(staging.root, root)
        except BaseException:
            if old.exists() and not root.exists():
                os.replace(old, root)  # put the database that was there back
            raise
        fsync_dir(self.dbs_dir)
        if old.exists():
            self._keep_replaced(name, DBPaths(old))
        self.discard_restore(name)
        return checksum

    def _keep_replaced(self, name: str, old: DBPaths) -> None:
        """After a restore replaced database `name`'s directory: its quarantine moves into
        the new directory, and what it held (if anything) becomes a quarantine entry."""
        q = self.quarantine(name)
        if old.quarantine.is_dir():
            q.directory.mkdir(parents=True, exist_ok=True)
            for entry in sorted(old.quarantine.iterdir()):
                os.replace(entry, q.directory / entry.name)
            fsync_dir(q.directory)
            old.quarantine.rmdir()
        held = old.database.exists() or (old.ltx_dir.is_dir() and any(old.ltx_dir.iterdir()))
        if held:
            q.keep(old.root, "replaced-by-restore", name=name,
                   why="the database directory a restore replaced")
        else:
            shutil.rmtree(old.root, ignore_errors=True)

    def _seed_log(self, staging: DBPaths, restored: RestoredDatabase) -> int:
        txid = restored.txid or 1
        ts = int(restored.timestamp.timestamp() * 1000) if restored.timestamp else \
            int(time.time() * 1000)
        seed = LtxLog(staging.ltx_dir)
        checksum = 0

        def produce(out: BinaryIO) -> None:
            nonlocal checksum
            with open(staging.database, "rb") as db:
                _, _, checksum = encode_snapshot(
                    db, out, page_size=restored.page_size, txid=txid, timestamp=ts,
                    page_count=restored.page_count,
                    name=f"{staging.database} as TXIDs 1-{txid:016x}")

        seed.write_streaming(TxRange(1, txid), produce)
        if restored.checksum is not None and checksum != restored.checksum:
            raise QuietError(f"the restored database {staging.database} reads back with "
                             f"checksum {checksum:016x}, not the {restored.checksum:016x} it "
                             "was built with: the disk returned different data; nothing was "
                             "installed", ExitCode.IO)
        seed.sync()
        fsync_dir(staging.root)
        return checksum
