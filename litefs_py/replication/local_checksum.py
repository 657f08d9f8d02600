"""The database checksum this node recorded at a TXID: what the bucket's copy of the same TXID
must match. Used by the uploader (is the replica's history ours?) and the restore drill (did
the restore rebuild what we committed?).

Sources, best first: the live database when it is at that TXID; else the trailer of the local
LTX file that ends at it (the local log keeps real checksums; retention deletes old files, so
older TXIDs may have no local reference left).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import trio

from ..ltx import TRAILER_SIZE, Trailer
from ..store.db import DB

__all__ = ["LocalChecksum", "local_checksum_at"]


@dataclass(frozen=True, slots=True)
class LocalChecksum:
    checksum: int
    source: str  # for messages: "the local database", "local LTX file <name>"


async def local_checksum_at(db: DB, txid: int) -> LocalChecksum | None:
    """The checksum `db` recorded at `txid`, or None when nothing local holds it any more.
    Call from the trio thread (the store's index lives there); the file is read in a worker
    thread."""
    if txid <= 0:
        return None
    if db.txid == txid:
        return LocalChecksum(db.checksum, "the local database")
    path = next((p for _lo, hi, p in db.ltx.paths() if hi == txid), None)
    if path is None:
        return None
    checksum = await trio.to_thread.run_sync(_trailer_checksum, path)
    if checksum is None:
        return None
    return LocalChecksum(checksum, f"local LTX file {path.name}")


def _trailer_checksum(path: Path) -> int | None:
    """The post-apply checksum in a local LTX file's trailer (None: deleted meanwhile, or a
    file without one)."""
    try:
        with open(path, "rb") as f:
            f.seek(-TRAILER_SIZE, os.SEEK_END)
            post = Trailer.decode(f.read(TRAILER_SIZE)).post_apply_checksum
    except (OSError, ValueError, struct.error):
        return None
    return post or None
