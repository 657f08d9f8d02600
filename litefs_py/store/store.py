"""All databases of one mount, kept under `DATA/dbs/<name>/`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

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

    def open(self) -> None:
        """Load every database directory (recovery runs per database, see recovery.py)."""
        from .recovery import recover

        for entry in sorted(os.listdir(self.dbs_dir)):
            if (self.dbs_dir / entry).is_dir():
                db = DB(entry, self.dbs_dir / entry)
                recover(db)
                self.dbs[entry] = db

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
        return db

    def names(self) -> list[str]:
        return sorted(n for n, db in self.dbs.items() if db.exists(FileKind.DATABASE))

    def close(self) -> None:
        for db in self.dbs.values():
            try:
                db.save_state()
            except OSError as exc:
                log.warning("%s: could not save state for a fast restart: %s", db.name, exc)
            db.close()
