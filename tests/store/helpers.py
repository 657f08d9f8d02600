"""Checks on what the store recorded, through its public API only."""

from __future__ import annotations

import io
from dataclasses import dataclass

from litefs_py.ltx import EMPTY_DATABASE_CHECKSUM, Decoder, apply_pages, database_checksum
from litefs_py.store.db import DB
from litefs_py.types import FileKind, TxRange


@dataclass
class Replayed:
    data: bytes  # the database the log replays to
    txid: int
    checksum: int
    records: list[TxRange]


def replay(db: DB, *, upto: int | None = None) -> Replayed:
    """Apply every record of `db`'s log in order (up to TXID `upto`) to an empty database,
    checking the chain: contiguous TXIDs, each pre-apply checksum the previous post-apply one,
    each post-apply checksum the replayed database's."""
    out = io.BytesIO()
    txid, checksum = 0, 0
    records = []
    for r in db.ltx:
        if upto is not None and r.max_txid > upto:
            break
        with db.ltx.open(r) as f:
            dec = Decoder(f, name=db.ltx.describe(r))
            h = dec.header
            if h.min_txid != 1:
                assert h.min_txid == txid + 1, f"gap before {r} (at TXID {txid})"
                assert h.pre_apply_checksum == checksum, f"{r}: pre-apply checksum"
            trailer = apply_pages(out, dec)
        txid, checksum = h.max_txid, trailer.post_apply_checksum
        records.append(r)
        if h.commit:
            out.seek(0)
            assert database_checksum(out, h.page_size, h.commit) == checksum, f"{r}: checksum"
        else:
            assert checksum == EMPTY_DATABASE_CHECKSUM
    return Replayed(out.getvalue(), txid, checksum, records)


def database_file(db: DB) -> bytes:
    """The database file as SQLite left it, cut to the size the last record says (SQLite
    truncates a shrunk database after the commit)."""
    data = db.path(FileKind.DATABASE).read_bytes()
    table = db.table
    assert table is not None
    return data[:table.page_count * table.page_size]


def assert_captured(db: DB) -> Replayed:
    """The log replays to exactly the database file, at the database's position."""
    got = replay(db)
    assert (got.txid, got.checksum) == db.pos
    assert got.data == database_file(db)
    return got
