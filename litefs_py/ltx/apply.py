"""Apply LTX files to a database file, and encode a database file as a snapshot."""

from __future__ import annotations

import os
from typing import BinaryIO

from .checksum import lock_pgno
from .decoder import Decoder
from .encoder import Encoder
from .header import FLAG_V3_NO_CHECKSUM, Header, Trailer
from .page_encoding import PageEncoding
from .v1 import DecoderV1


def apply_pages(db: BinaryIO, decoder: Decoder | DecoderV1) -> Trailer:
    """Write every page of `decoder` into `db` and truncate it to the commit size.

    The decoder validates the whole file only after its last page, so callers that must not
    end up with a half-applied file write into a temporary copy and rename on success.
    """
    ps = decoder.header.page_size
    for pgno, data in decoder.pages():
        db.seek((pgno - 1) * ps)
        db.write(data)
    db.truncate(decoder.header.commit * ps)
    assert decoder.trailer is not None
    return decoder.trailer


def apply_ltx(db: BinaryIO, ltx: BinaryIO, *, name: str = "<ltx>") -> Trailer:
    return apply_pages(db, Decoder(ltx, name=name))


_SNAPSHOT_BATCH = 64  # pages per read and per Encoder.encode_pages call


def encode_snapshot(
    db: BinaryIO,
    out: BinaryIO,
    *,
    page_size: int,
    txid: int = 1,
    timestamp: int = 0,
    page_count: int | None = None,
    no_checksum: bool = False,
    page_encoding: PageEncoding = PageEncoding.LZ4_BLOCK,
    name: str = "<ltx>",
) -> tuple[Header, Trailer, int]:
    """Encode the database in `db` as a snapshot covering TXIDs 1..txid.

    Returns (header, trailer, database checksum). The database checksum is returned even when
    the file carries no checksums (flags 0x2), so callers can keep it elsewhere.
    """
    if page_count is None:
        size = db.seek(0, os.SEEK_END)
        if size % page_size:
            raise ValueError(f"database size {size} is not a multiple of page size {page_size}")
        page_count = size // page_size
    db.seek(0)
    header = Header(page_size=page_size, commit=page_count, min_txid=1, max_txid=txid,
                    timestamp=timestamp, flags=FLAG_V3_NO_CHECKSUM if no_checksum else 0)
    enc = Encoder(out, header, page_encoding=page_encoding, track_checksum=True, name=name)
    lock = lock_pgno(page_size)
    # Pages go to the encoder in batches (its page loop runs in C), read into one reused
    # buffer: fresh memory for every read costs page faults, and slices would be copies.
    buf = bytearray(_SNAPSHOT_BATCH * page_size)
    view = memoryview(buf)
    for first in range(1, page_count + 1, _SNAPSHOT_BATCH):
        count = min(_SNAPSHOT_BATCH, page_count + 1 - first)
        got = db.readinto(view[:count * page_size])  # type: ignore[attr-defined]
        if got != count * page_size:
            raise ValueError(f"database ends inside page {first + (got or 0) // page_size}")
        enc.encode_pages([(pgno, view[i * page_size:(i + 1) * page_size])
                          for i, pgno in enumerate(range(first, first + count)) if pgno != lock])
    db_checksum = enc.pages_checksum
    trailer = enc.finish(0 if no_checksum else db_checksum)
    return header, trailer, db_checksum


__all__ = ["apply_ltx", "apply_pages", "encode_snapshot"]
