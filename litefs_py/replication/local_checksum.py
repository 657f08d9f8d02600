"""The database checksum this node recorded at a TXID: what the bucket's copy of the same TXID
must match. Used by the uploader (is the replica's history ours?) and the restore drill (did
the restore rebuild what we committed?).

Sources, best first: the live database when it is at that TXID; else the trailer of the local
LTX record that ends at it (the local log keeps real checksums; retention trims old records,
so older TXIDs may have no local reference left).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import trio

from ..ltx import LTXError
from ..store.db import DB
from ..store.ltx_log import LtxLog
from ..types import TxRange

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
    record = next((r for r in db.ltx.ranges(txid - 1) if r.max_txid == txid), None)
    if record is None:
        return None
    checksum = await trio.to_thread.run_sync(_trailer_checksum, db.ltx, record)
    if checksum is None:
        return None
    return LocalChecksum(checksum, f"local LTX record {db.ltx.describe(record)}")


def _trailer_checksum(ltx: LtxLog, record: TxRange) -> int | None:
    """The post-apply checksum in a local LTX record's trailer (None: deleted meanwhile, or
    a record without one)."""
    try:
        post = ltx.info(record).trailer.post_apply_checksum
    except (OSError, LTXError, ValueError, struct.error):
        return None
    return post or None
