"""Taking over a LiteFS data directory: its LTX v1 files become records of our local log.

LiteFS keeps each database the way litefs-py does (`dbs/<name>/database`, `journal`, `wal`
and `ltx/<min>-<max>.ltx`), but its LTX files are version 1 (docs/formats.md §4), which the
local log does not hold. Before a database's log is opened, every v1 file in `ltx/` is
converted to a v3 record with the same TXIDs, timestamp, WAL position and pre- and post-apply
checksums, so the database is served at the TXID LiteFS left it at, with LiteFS's history
kept, and the next commit continues the numbering. LiteFS's original files are kept, as one
quarantine entry (`quarantine/<time>-litefs-v1-ltx/`), not deleted.

Which files are v1: LiteFS's compressed files say so in their flags; otherwise the file's end
decides (a v3 file ends with a page index, `detect_version`). Only the newest records need
looking at once the log is ours: a converted log holds no v1 file, so the walk from the newest
record back stops at the first v3 one (the newest may be a torn v3 record, which the walk
passes over and recovery then deals with).

Crash safety: each file is converted into `<name>.litefs-import.tmp`, fsynced, its original
hard-linked into `litefs-import/`, and the converted file renamed over the original; a crash
leaves every file either v1 (converted again on the next start) or v3. The gathered originals
become the quarantine entry once every file is converted.

LiteFS also leaves `<name>.ltx.tmp` files when it dies while writing one (its transaction was
never committed); they are moved to the quarantine.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..ltx import (
    DecoderV1,
    Encoder,
    LTXError,
    Version,
    detect_version,
    format_filename,
    is_ltx_filename,
    parse_filename,
)
from ..types import TxRange
from .ltx_log import fsync_dir
from .paths import DBPaths
from .quarantine import Quarantine

log = logging.getLogger("litefs.store")

_TMP = ".litefs-import.tmp"  # a conversion under way


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What `import_litefs_ltx` converted, and where LiteFS's originals went."""

    converted: list[TxRange]
    originals: Path | None  # the quarantine entry holding LiteFS's files


def import_litefs_ltx(paths: DBPaths, quarantine: Quarantine) -> ImportResult | None:
    """Convert the LTX v1 files of one database directory to v3 records (see the module
    docstring); None when there were none. Blocking; runs before the database's log is
    opened."""
    ltx_dir = paths.ltx_dir
    if not ltx_dir.is_dir():
        return None
    names = os.listdir(ltx_dir)
    for name in sorted(names):
        if name.endswith(_TMP):
            # Our own conversion, interrupted: its original is still in place.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ltx_dir / name)
        elif name.endswith(".tmp"):
            quarantine.keep(ltx_dir / name, "unfinished-ltx",
                            why="an LTX file whose writing never finished (its transaction "
                                "was not committed)")
    ranges = sorted(TxRange(*parse_filename(n)) for n in names if is_ltx_filename(n))
    candidates = _v1_candidates(ltx_dir, ranges)
    staging = paths.import_staging
    if not candidates:
        if staging.is_dir():  # a crash after the last conversion, before the keep
            return ImportResult([], _keep_originals(quarantine, staging))
        return None
    log.warning("%s: importing a LiteFS data directory: converting %d LTX v1 file(s), TXIDs "
                "%016x-%016x, to LTX v3 records", paths.root.name, len(candidates),
                candidates[0].min_txid, candidates[-1].max_txid)
    converted: list[TxRange] = []
    newest = ranges[-1]
    for r in candidates:
        path = ltx_dir / format_filename(r.min_txid, r.max_txid)
        try:
            _convert(path, staging)
        except LTXError as exc:
            if r == newest:
                # Perhaps a v3 record torn by a crash (it looks like v1 without its index):
                # recovery checks the newest record and deals with it.
                log.info("%s: %s is not a readable LTX v1 file (%s); left to recovery",
                         paths.root.name, path, exc.message)
                continue
            quarantine.keep(path, "unreadable-litefs-ltx",
                            why=f"a LiteFS LTX file that cannot be read ({exc.message}); "
                                "the history has a gap there")
            continue
        converted.append(r)
    fsync_dir(ltx_dir)
    originals = _keep_originals(quarantine, staging) if staging.is_dir() else None
    if converted:
        log.info("%s: imported %d LiteFS LTX file(s) as v3 records up to TXID %016x",
                 paths.root.name, len(converted), converted[-1].max_txid)
    return ImportResult(converted, originals)


def _v1_candidates(ltx_dir: Path, ranges: list[TxRange]) -> list[TxRange]:
    """The records that look like LTX v1, oldest first: from the newest back to the first
    v3 one."""
    found: list[TxRange] = []
    for i, r in enumerate(reversed(ranges)):
        path = ltx_dir / format_filename(r.min_txid, r.max_txid)
        try:
            with open(path, "rb") as f:
                version = detect_version(f)
        except (LTXError, OSError):
            if i == 0:
                continue  # a torn newest record: recovery's
            break
        if version is Version.V3:
            break
        found.append(r)
    found.reverse()
    return found


def _convert(path: Path, staging: Path) -> None:
    """Rewrite one v1 file as v3 in place, its original hard-linked into `staging` first."""
    tmp = path.with_name(path.name + _TMP)
    try:
        with open(path, "rb") as src, open(tmp, "wb") as out:
            dec = DecoderV1(src, name=str(path))
            # v1's flag (LZ4-compressed page block) has no meaning in v3; checksums stay.
            enc = Encoder(out, dec.header.with_(flags=0), name=str(tmp))
            for pgno, page in dec.pages():  # checks the file checksum at the end
                enc.encode_page(pgno, page)
            assert dec.trailer is not None
            enc.finish(dec.trailer.post_apply_checksum)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    staging.mkdir(exist_ok=True)
    with contextlib.suppress(FileExistsError):  # linked before a crash: the same file
        os.link(path, staging / path.name)
    fsync_dir(staging)
    os.replace(tmp, path)


def _keep_originals(quarantine: Quarantine, staging: Path) -> Path:
    return quarantine.keep(staging, "litefs-v1-ltx", name="ltx",
                           why="LiteFS's original LTX v1 files; ltx/ now holds them as LTX v3 "
                               "records with the same TXIDs and checksums")
