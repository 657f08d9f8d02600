"""The data directory's layout: the one place that knows where anything lives under it.

    DATA/lock                      held by the running litefs process (Store.lock)
    DATA/status.json               what `litefs status` prints (written by the mount)
    DATA/primary-term              present while this node is (or last was) an etcd/s3
                                   lease's primary: how it recovers at the next start
    DATA/dbs/<name>/database       the database as SQLite sees it
    DATA/dbs/<name>/{journal,wal,shm}
    DATA/dbs/<name>/ltx/           the local LTX log (LtxLog): segments seg-<n>.ltxs (and, in
                                   data directories from before segments, <min>-<max>.ltx)
    DATA/dbs/<name>/checksums      per-page checksums saved on a clean shutdown
    DATA/dbs/<name>/epochs         where each primary term's records begin (EpochHistory)
    DATA/dbs/<name>/quarantine/    what recovery would have deleted, and an old primary's
                                   records the new history does not have (quarantine.py)
    DATA/dbs/<name>/litefs-import/ LiteFS's LTX files while they are imported (litefs_import.py)
    DATA/restore-tmp/<name>/       a restore being built, before Store.install_restored

Pure path arithmetic: nothing here touches the filesystem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..types import FileKind

_BACKING_NAMES = {FileKind.DATABASE: "database", FileKind.JOURNAL: "journal",
                  FileKind.WAL: "wal", FileKind.SHM: "shm"}


@dataclass(frozen=True, slots=True)
class DBPaths:
    root: Path  # DATA/dbs/<name>

    def file(self, kind: FileKind) -> Path:
        """The backing file of `kind` (the virtual `-pos` file has none)."""
        try:
            return self.root / _BACKING_NAMES[kind]
        except KeyError:
            raise ValueError(f"{kind} has no backing file") from None

    @property
    def database(self) -> Path:
        return self.root / "database"

    @property
    def ltx_dir(self) -> Path:
        return self.root / "ltx"

    @property
    def quarantine(self) -> Path:
        """Files recovery judged torn, stale or superseded (see quarantine.py)."""
        return self.root / "quarantine"

    @property
    def import_staging(self) -> Path:
        """LiteFS's original LTX files, gathered while they are converted (litefs_import.py)."""
        return self.root / "litefs-import"

    @property
    def page_table(self) -> Path:
        """Per-page checksums saved on clean shutdown (see PageTable.save)."""
        return self.root / "checksums"

    @property
    def epochs(self) -> Path:
        return self.root / "epochs"


@dataclass(frozen=True, slots=True)
class DataDirPaths:
    root: Path  # DATA

    @property
    def dbs(self) -> Path:
        return self.root / "dbs"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def primary_term(self) -> Path:
        return self.root / "primary-term"

    @property
    def restore_staging(self) -> Path:
        return self.root / "restore-tmp"

    def db(self, name: str) -> DBPaths:
        return DBPaths(self.dbs / name)

    def database(self, name: str) -> Path:
        """Where database `name`'s file lives (for messages and `litefs restore`)."""
        return self.db(name).database
