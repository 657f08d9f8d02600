"""Where a database's files live under the data directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class DBPaths:
    root: Path  # DATA/dbs/<name>

    @property
    def database(self) -> Path:
        return self.root / "database"

    @property
    def journal(self) -> Path:
        return self.root / "journal"

    @property
    def wal(self) -> Path:
        return self.root / "wal"

    @property
    def shm(self) -> Path:
        return self.root / "shm"

    @property
    def ltx_dir(self) -> Path:
        return self.root / "ltx"

    @property
    def page_table(self) -> Path:
        """Per-page checksums saved on clean shutdown (see PageTable.save)."""
        return self.root / "checksums"
