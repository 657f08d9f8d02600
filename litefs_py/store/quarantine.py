"""Set aside an old primary's transactions that the new primary's history does not have.

They are never overwritten silently: each local LTX record from the fork point on is moved to
`DATA/dbs/<name>/quarantine/<epoch>-<txid>.ltx` (`<epoch>-<min>-<max>.ltx` for a record
holding several transactions; TXIDs in hex as everywhere, the epoch in decimal) and removed
from the log. The files are ordinary LTX files: `litefs ltx dump` shows their pages, and an
operator can re-apply what matters by hand. The database itself is then replaced by a
snapshot of the new history (the caller asks for one).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..types import TxRange
from .db import DB
from .ltx_log import fsync_dir

log = logging.getLogger("litefs.store")


@dataclass(frozen=True, slots=True)
class Quarantined:
    """What one call moved aside."""

    files: list[Path]
    transactions: int  # TXIDs held by the moved records
    first_txid: int
    last_txid: int
    epochs: list[int]


def quarantine_name(epoch: int, r: TxRange) -> str:
    if r.min_txid == r.max_txid:
        return f"{epoch}-{r.min_txid:016x}.ltx"
    return f"{epoch}-{r.min_txid:016x}-{r.max_txid:016x}.ltx"


def quarantine_from(db: DB, txid: int) -> Quarantined | None:
    """Move every local record holding a TXID at or after `txid` into the quarantine
    directory (blocking: run it in a worker thread). None if there is none."""
    records = [r for r in db.ltx.ranges(txid - 1) if r.max_txid >= txid]
    if not records:
        return None
    directory = db.paths.quarantine
    directory.mkdir(exist_ok=True)
    files: list[Path] = []
    epochs: list[int] = []
    for r in records:
        data = db.ltx.read(r)
        epoch = db.ltx.header(r).node_id
        path = directory / quarantine_name(epoch, r)
        if path.exists():  # quarantined before under the same name: keep both
            path = path.with_name(f"{path.stem}.{os.urandom(3).hex()}.ltx")
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        files.append(path)
        if epoch not in epochs:
            epochs.append(epoch)
    fsync_dir(directory)
    for r in records:
        db.ltx.delete(r)
    first, last = records[0].min_txid, records[-1].max_txid
    return Quarantined(files, last - first + 1, first, last, epochs)


def quarantined_files(db: DB) -> list[Path]:
    """The quarantine directory's LTX files, oldest name first."""
    try:
        return sorted(p for p in db.paths.quarantine.iterdir() if p.suffix == ".ltx")
    except FileNotFoundError:
        return []
