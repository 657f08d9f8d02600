"""Where a restore writes: the output checks, the staging file and the install, shared by the
LTX restore (restore.py) and the Litestream 0.3 restore (legacy_v03.py).

The protocol (module docstring of restore.py): everything is built in `OUT.tmp` (a stale one
from a crashed run is removed first) in parent directories created on the way; optionally
`PRAGMA integrity_check`; then side files that would corrupt the new database (`OUT-wal`,
`OUT-shm`, `OUT-journal`) are removed, `OUT.tmp` is renamed to `OUT` and the directory is
fsynced. On any error `OUT.tmp` is removed and `OUT` is untouched.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ExitCode, QuietError
from .progress import NullProgress
from .restore_plan import format_time

__all__ = [
    "SIDE_FILES",
    "STATUS_DB_EXISTS",
    "STATUS_NO_REPLICA",
    "STATUS_RESTORED",
    "IntegrityCheckError",
    "OutputExistsError",
    "RestoreResult",
    "build_and_install",
    "check_integrity",
    "check_output",
    "fsync_dir",
    "integrity_check",
]

SIDE_FILES = ("-wal", "-shm", "-journal")
STATUS_RESTORED = "restored"
STATUS_DB_EXISTS = "skipped: database exists"
STATUS_NO_REPLICA = "skipped: no backups"

Built = TypeVar("Built")


class OutputExistsError(QuietError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.FAILED)


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


def check_output(out: Path, *, if_db_not_exists: bool, force: bool) -> bool:
    """Whether a restore may write `out`: False when it exists and `if_db_not_exists` asks
    to keep it; raises OutputExistsError when it is a directory, or exists without `force`."""
    if not (out.exists() or out.is_symlink()):
        return True
    if out.is_dir():
        raise OutputExistsError(f"{out} is a directory; give the database file path "
                                "with -o (e.g. -o /data/app.db)")
    if if_db_not_exists:
        return False
    if not force:
        raise OutputExistsError(
            f"{out} already exists; nothing was changed. Use --force to replace it (its "
            "-wal, -shm and -journal files are removed too; stop every program using it "
            "first), or --if-db-not-exists to keep it and exit 0")
    return True


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def check_integrity(path: Path, what: str) -> str:
    """`integrity_check`, raising IntegrityCheckError (naming `what`) unless it is "ok"."""
    verdict = integrity_check(path)
    if verdict != "ok":
        first = verdict.splitlines()[0] if verdict else "no result"
        raise IntegrityCheckError(
            f"PRAGMA integrity_check failed on {what}: {first}; nothing was installed. "
            "Restore an earlier --txid or --timestamp, or report the backup as damaged")
    return verdict


def build_and_install(out: Path, result: RestoreResult, build: Callable[[Path], Built], *,
                      total_size: int, progress: NullProgress, integrity: bool,
                      describe: Callable[[Built], str]) -> Built:
    """Run `build(OUT.tmp)` (it writes, verifies and fsyncs the database), check it with
    `PRAGMA integrity_check` if asked (`describe(built)` names it in the error), and install
    it as `out`. Side files removed on the way are added to `result.removed`, the verdict is
    `result.integrity`. On any error `OUT.tmp` is gone and `out` is as it was."""
    _make_parents(out)
    tmp = Path(f"{out}.tmp")
    _remove_tmp(tmp)
    try:
        progress.add_total(total_size)
        built = build(tmp)
        progress.close()
        if integrity:
            result.integrity = check_integrity(tmp, describe(built))
        _install(tmp, out, result.removed)
    except BaseException:
        progress.close()
        with contextlib.suppress(OSError):  # never hide the error that got us here
            _remove_tmp(tmp)
        raise
    return built


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


def _install(tmp: Path, out: Path, removed: list[str]) -> None:
    """fsync'd `tmp` becomes `out`: side files that would be applied to the new database are
    removed first (an old -wal or hot -journal would corrupt it), then rename, then fsync."""
    for suffix in SIDE_FILES:
        side = Path(f"{out}{suffix}")
        if side.exists() or side.is_symlink():
            side.unlink()
            removed.append(str(side))
    os.replace(tmp, out)
    fsync_dir(out.parent)
