"""Where recovery puts what it would otherwise delete: `DATA/dbs/<name>/quarantine/`.

Recovery and the replica's repair judge some files torn (a record cut short by a crash),
stale (a journal whose transaction was recorded), foreign (frames in a replica's WAL) or
superseded (a replica copy that a snapshot replaces, LiteFS's original LTX files after their
import). None of them is unlinked: each is moved here (or copied, when the original must stay
in place and shrink) under a name that says when and why, and the move is logged with the
new path:

    quarantine/20250114T101502.123456Z-torn-ltx-0000000000000007-0000000000000007.ltx

An entry is a file or a whole directory. The names sort by time. Entries are never read by
litefs again: they are there for a person (or a bug report) to look at, and can be deleted
by hand at any time.

The quarantine is bounded so it cannot fill the disk unnoticed: after each new entry, the
oldest entries are removed while the quarantine holds more than `limit` bytes
(`data.quarantine-limit`, default 1 GiB) or more than `MAX_ENTRIES` entries, each removal with
a warning naming what was removed. The entry just added is never removed by its own keep (a
single entry larger than the limit is kept, with a warning, until the next one). `litefs
status` and `/metrics` show what each database's quarantine holds.

A move is a rename within the database's directory, so it costs no space and no copying.

Failover uses the same quarantine for an old primary's transactions that the new primary's
history does not have (`quarantine_divergent`): each local LTX record from the fork point on
becomes an entry `<stamp>-divergent-<epoch>-<txid>.ltx` (`<epoch>-<min>-<max>.ltx` for a
record holding several transactions; TXIDs in hex as everywhere, the epoch in decimal) and
leaves the log. The entries are ordinary LTX files: `litefs ltx dump` shows their pages, and
an operator can re-apply what matters by hand. The caller then replaces the database by a
snapshot of the new history.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..types import TxRange
from .ltx_log import fsync_dir
from .paths import DBPaths

if TYPE_CHECKING:
    from .db import DB

log = logging.getLogger("litefs.store")

DEFAULT_LIMIT = 1 << 30  # bytes (data.quarantine-limit)
MAX_ENTRIES = 100  # entries per database, whatever their size
_REASON = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_PARTIAL = ".partial"  # a copy being written; left only by a crash (the original stays)
_FILLING = ".filling"  # an entry of several parts being moved in (keep_all)


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    path: Path
    bytes: int


@dataclass(frozen=True, slots=True)
class QuarantineUsage:
    """What one database's quarantine holds."""

    entries: int = 0
    bytes: int = 0


class Quarantine:
    """The quarantine of the database whose directory is `db_root` (`DATA/dbs/<name>`)."""

    def __init__(self, db_root: Path, *, limit: int = DEFAULT_LIMIT,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.db_root = db_root
        self.directory = DBPaths(db_root).quarantine
        self.limit = limit
        self.max_entries = max_entries

    @property
    def name(self) -> str:
        return self.db_root.name

    def keep(self, source: Path | bytes, reason: str, *, name: str | None = None,
             copy: bool = False, link: bool = False, why: str = "") -> Path:
        """Put `source` into the quarantine and return its new path; logs one warning with
        that path and `why` (or `reason`).

        `source` is a file or directory inside the database's directory, moved (renamed);
        with `copy` copied instead (the original is then shrunk or rewritten by the caller);
        with `link` hard-linked (a file the caller then unlinks: no copying). Or bytes,
        written to a new file. `reason` is a short slug ("torn-ltx"); `name` (default: the
        source's file name) ends the entry's name. The entry is durable before this returns,
        so the caller may then delete or shrink the original."""
        if not _REASON.match(reason):
            raise ValueError(f"quarantine reason must be a lowercase slug, not {reason!r}")
        if name is None:
            if isinstance(source, bytes):
                raise ValueError("keeping bytes needs a name")
            name = source.name
        self.directory.mkdir(parents=True, exist_ok=True)
        dest = self._new_path(f"{_stamp()}-{reason}-{name}")
        if isinstance(source, bytes):
            self._write(dest, source)
        elif link:
            try:
                os.link(source, dest)
            except OSError:  # a filesystem without hard links
                self._copy(source, dest)
        elif copy:
            self._copy(source, dest)
        else:
            os.rename(source, dest)
            fsync_dir(source.parent)
        fsync_dir(self.directory)
        what = name if isinstance(source, bytes) else str(source)
        log.warning("%s: kept %s in quarantine as %s (%d bytes): %s", self.name, what, dest,
                    _size(dest), why or reason)
        self._enforce(keep=dest)
        return dest

    def keep_all(self, sources: list[Path], reason: str, *, name: str, why: str = "") -> Path:
        """Move several files and directories of the database's directory into one new
        entry (a directory named like `keep`'s entries), e.g. a whole replica copy. A crash
        part-way leaves the rest where it was, for the next attempt (nothing is lost)."""
        if not _REASON.match(reason):
            raise ValueError(f"quarantine reason must be a lowercase slug, not {reason!r}")
        self.directory.mkdir(parents=True, exist_ok=True)
        dest = self._new_path(f"{_stamp()}-{reason}-{name}")
        # Filled under another name, so an entry's name never changes while its contents do
        # (a reader may cache sizes by name); a crash leaves it under that name, complete
        # or not, and it is an entry like any other.
        filling = dest.with_name(dest.name + _FILLING)
        filling.mkdir()
        parents = set()
        for source in sources:
            os.rename(source, filling / source.name)
            parents.add(source.parent)
        fsync_dir(filling)
        os.rename(filling, dest)
        for parent in parents:
            fsync_dir(parent)
        fsync_dir(self.directory)
        log.warning("%s: kept %s in quarantine as %s (%d bytes): %s", self.name,
                    ", ".join(s.name for s in sources) or "nothing", dest, _size(dest),
                    why or reason)
        self._enforce(keep=dest)
        return dest

    def entries(self) -> list[QuarantineEntry]:
        """Every entry, oldest first."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            path = self.directory / n
            with contextlib.suppress(FileNotFoundError):
                out.append(QuarantineEntry(path, _size(path)))
        return out

    def usage(self) -> QuarantineUsage:
        found = self.entries()
        return QuarantineUsage(len(found), sum(e.bytes for e in found))

    def names(self) -> tuple[str, ...]:
        """The entries' names: an entry never changes once it has its name, so these
        identify what `usage` would find."""
        try:
            return tuple(sorted(os.listdir(self.directory)))
        except FileNotFoundError:
            return ()

    # ---- internals -----------------------------------------------------------------------

    def _new_path(self, base: str) -> Path:
        path = self.directory / base
        n = 2
        while any(path.with_name(path.name + suffix).exists()
                  for suffix in ("", _PARTIAL, _FILLING)):
            path = self.directory / f"{base}.{n}"
            n += 1
        return path

    @staticmethod
    def _write(dest: Path, data: bytes) -> None:
        partial = dest.with_name(dest.name + _PARTIAL)
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(partial, dest)

    def _copy(self, source: Path, dest: Path) -> None:
        partial = dest.with_name(dest.name + _PARTIAL)
        if source.is_dir():
            shutil.copytree(source, partial)
        else:
            shutil.copyfile(source, partial)
            with open(partial, "rb") as f:
                os.fsync(f.fileno())
        os.rename(partial, dest)

    def _enforce(self, keep: Path) -> None:
        entries = self.entries()
        total = sum(e.bytes for e in entries)
        for entry in entries:
            if total <= self.limit and len(entries) <= self.max_entries:
                break
            if entry.path == keep:
                continue
            if entry.path.name.endswith(_PARTIAL):
                why = "an unfinished copy left by a crash (its original was not removed)"
            else:
                why = (f"the quarantine held {total} bytes in {len(entries)} entries, over "
                       f"its limit of {self.limit} bytes (data.quarantine-limit) or "
                       f"{self.max_entries} entries")
            log.warning("%s: removing the oldest quarantine entry %s (%d bytes): %s",
                        self.name, entry.path, entry.bytes, why)
            _remove(entry.path)
            total -= entry.bytes
            entries = [e for e in entries if e.path != entry.path]
        if total > self.limit:
            log.warning("%s: the quarantine holds %d bytes, over its limit of %d bytes "
                        "(data.quarantine-limit): its newest entry %s alone is that large; it "
                        "is kept until the next entry arrives, or delete it by hand",
                        self.name, total, self.limit, keep)


@dataclass(frozen=True, slots=True)
class Quarantined:
    """What one `quarantine_divergent` call moved aside."""

    files: list[Path]
    transactions: int  # TXIDs held by the moved records
    first_txid: int
    last_txid: int
    epochs: list[int]


def divergent_name(epoch: int, r: TxRange) -> str:
    if r.min_txid == r.max_txid:
        return f"{epoch}-{r.min_txid:016x}.ltx"
    return f"{epoch}-{r.min_txid:016x}-{r.max_txid:016x}.ltx"


def quarantine_divergent(db: DB, txid: int, q: Quarantine) -> Quarantined | None:
    """Move every local record holding a TXID at or after `txid` into `q` (the database's
    quarantine) and out of the log (blocking: run it in a worker thread). None if there is
    none. Each entry is durable before its record leaves the log."""
    records = [r for r in db.ltx.ranges(txid - 1) if r.max_txid >= txid]
    if not records:
        return None
    files: list[Path] = []
    epochs: list[int] = []
    for r in records:
        epoch = db.ltx.header(r).node_id
        files.append(q.keep(db.ltx.read(r), "divergent", name=divergent_name(epoch, r),
                            why=f"TXIDs {r.min_txid:016x}-{r.max_txid:016x} of epoch {epoch} "
                                "were committed here but are not in the new primary's "
                                "history"))
        if epoch not in epochs:
            epochs.append(epoch)
    for r in reversed(records):
        db.ltx.delete(r)
    first, last = records[0].min_txid, records[-1].max_txid
    return Quarantined(files, last - first + 1, first, last, epochs)


def _stamp() -> str:
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    st = path.lstat()
    if not path.is_dir() or path.is_symlink():
        return st.st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
