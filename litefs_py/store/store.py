"""All databases of one mount, kept under `DATA/dbs/<name>/`."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..errors import ExitCode, QuietError
from .db import DB, SUFFIXES, FileKind

log = logging.getLogger("litefs.store")

POS_SUFFIX = "-pos"


def parse_name(name: str) -> tuple[str, FileKind | None]:
    """Split a mount file name into (database name, kind); kind None means the `-pos` file."""
    for kind, suffix in SUFFIXES.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], kind
    if name.endswith(POS_SUFFIX) and len(name) > len(POS_SUFFIX):
        return name[: -len(POS_SUFFIX)], None
    return name, FileKind.DATABASE


def valid_db_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in name


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.dbs_dir = data_dir / "dbs"
        self.dbs_dir.mkdir(parents=True, exist_ok=True)
        self.dbs: dict[str, DB] = {}
        self._lock_fd: int | None = None
        # Called with each database object the first time it exists (loaded or created).
        self.db_listeners: list[Callable[[DB], None]] = []

    def lock(self) -> None:
        """Take the data directory for this process: two litefs processes on one data
        directory would both append to the same LTX logs."""
        fd = os.open(self.data_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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

        On a read replica a database that does not match its log is repaired instead of
        refused: the last LTX file is applied again (a crash in the middle of an apply), and
        if that does not help the copy is dropped and the next snapshot replaces it."""
        from .recovery import DatabaseDivergedError, recover

        for entry in sorted(os.listdir(self.dbs_dir)):
            if not (self.dbs_dir / entry).is_dir():
                continue
            db = DB(entry, self.dbs_dir / entry)
            if replica:
                # A replica's WAL is always empty (pages go into the database file); frames
                # left in it would be replayed over the database by a reader's recovery.
                wal = db.path(FileKind.WAL)
                if wal.exists() and wal.stat().st_size:
                    log.warning("%s: emptying the replica's WAL file", entry)
                    os.truncate(wal, 0)
            try:
                recover(db)
            except DatabaseDivergedError as exc:
                if not replica:
                    raise
                repaired = self._repair_replica(db, exc)
                if repaired is None:
                    continue
                db = repaired
            self.dbs[entry] = db
            self._announce(db)

    def _repair_replica(self, db: DB, exc: Exception) -> DB | None:
        from .recovery import DatabaseDivergedError, recover
        from .replica_apply import reapply_last

        log.warning("%s: %s", db.name, exc)
        try:
            if reapply_last(db):
                db.close()
                db = DB(db.name, db.paths.root)
                recover(db)
                log.info("%s: re-applied the last LTX file after an interrupted apply; at "
                         "TXID %016x", db.name, db.txid)
                return db
        except (DatabaseDivergedError, OSError, ValueError) as again:
            log.warning("%s: re-applying the last LTX file did not help: %s", db.name, again)
        db.close()
        shutil.rmtree(db.paths.root, ignore_errors=True)
        log.warning("%s: dropped the replica's copy; it will be replaced by a snapshot",
                    db.name)
        return None

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
        for listener in self.db_listeners:
            listener(db)

    def forget(self, name: str) -> None:
        """Drop a database that never recorded a transaction, with its directory."""
        db = self.dbs.pop(name, None)
        if db is None:
            return
        db.close()
        shutil.rmtree(db.paths.root, ignore_errors=True)

    def names(self) -> list[str]:
        return sorted(n for n, db in self.dbs.items() if db.exists(FileKind.DATABASE))

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
