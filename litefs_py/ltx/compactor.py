"""Merge N contiguous LTX v3 files into one.

Streams a k-way merge by page number, so memory stays at one page per input. Applying the
output must give exactly what applying the inputs one by one gives, including when the database
shrank in between: a page written before a shrink below it and not rewritten after is gone,
and if the database later grew past it again, that page reads as zeros (the file was truncated
and extended), so the output carries an explicit zero page there.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from .checksum import lock_pgno
from .decoder import Decoder
from .encoder import Encoder
from .errors import CompactionError
from .header import FLAG_V3_NO_CHECKSUM, Header, Trailer
from .page_encoding import PageEncoding


def _tagged(dec: Decoder, order: int) -> Iterator[tuple[int, int, bytes]]:
    # Newer inputs sort first for the same page: key (pgno, -order).
    for pgno, data in dec.pages():
        yield pgno, -order, data


def compact(
    inputs: Sequence[BinaryIO],
    out: BinaryIO,
    *,
    names: Sequence[str] | None = None,
    page_encoding: PageEncoding = PageEncoding.LZ4_BLOCK,
    no_checksum: bool | None = None,
    timestamp: int | None = None,
    keep_wal_position: bool = False,
    allow_overlap: bool = False,
) -> tuple[Header, Trailer]:
    """Compact `inputs` (given in TXID order) into `out`; return the output header and trailer.

    The output keeps checksums only if every input has them (or `no_checksum` forces it).
    Its timestamp is the last input's, as Litestream 0.5 writes it, unless given. With
    `keep_wal_position` the output spans the inputs' WAL ranges (same salts required), as a
    local log needs to tell which WAL transactions it holds. With `allow_overlap` an input may
    start inside the previous one (a restore plan such as snapshot 1-4 then 4-6): each input
    holds the state after its own last TXID, so newest-wins still gives the right pages.
    """
    if not inputs:
        raise CompactionError("at least one input file is required")
    if names is None:
        names = [f"<input {i}>" for i in range(len(inputs))]
    decs = [Decoder(f, name=n) for f, n in zip(inputs, names, strict=True)]
    hdrs = [d.header for d in decs]
    for prev, cur, name in zip(hdrs, hdrs[1:], names[1:], strict=False):
        if cur.page_size != prev.page_size:
            raise CompactionError(f"page size {cur.page_size} differs from the previous input's "
                                  f"{prev.page_size}", name=name)
        contiguous = cur.min_txid == prev.max_txid + 1 or (
            allow_overlap and cur.min_txid <= prev.max_txid + 1 and cur.max_txid > prev.max_txid)
        if not contiguous:
            raise CompactionError(
                f"TXIDs not contiguous: previous input ends at {prev.max_txid:016x}, this one "
                f"starts at {cur.min_txid:016x}", name=name)
    first, last = hdrs[0], hdrs[-1]
    if no_checksum is None:
        no_checksum = any(h.no_checksum for h in hdrs)
    page_size = first.page_size
    final_commit = last.commit
    header = Header(
        page_size=page_size,
        commit=final_commit,
        min_txid=first.min_txid,
        max_txid=last.max_txid,
        timestamp=last.timestamp if timestamp is None else timestamp,
        pre_apply_checksum=0 if (no_checksum or first.is_snapshot) else first.pre_apply_checksum,
        flags=FLAG_V3_NO_CHECKSUM if no_checksum else 0,
        node_id=last.node_id,
    )
    if keep_wal_position and last.wal_offset:
        start = min((h.wal_offset for h in hdrs
                     if h.wal_offset and (h.wal_salt1, h.wal_salt2) ==
                     (last.wal_salt1, last.wal_salt2)), default=last.wal_offset)
        header = header._replace(wal_offset=start,
                                 wal_size=last.wal_offset + last.wal_size - start,
                                 wal_salt1=last.wal_salt1, wal_salt2=last.wal_salt2)
    # A page from input i survives only if no later input truncated the database below it.
    n = len(hdrs)
    survive_limit = [0] * n
    limit = 1 << 32
    for i in range(n - 1, -1, -1):
        survive_limit[i] = limit
        limit = min(limit, hdrs[i].commit)
    lowest_commit = limit  # pages above this were truncated at some point and must be emitted
    lock = lock_pgno(page_size)
    zero = bytes(page_size)
    enc = Encoder(out, header, page_encoding=page_encoding)
    next_fill = lowest_commit + 1

    def fill_zeros(upto: int) -> None:
        # Emit zero pages for truncated-then-regrown pages below `upto` that nobody rewrote.
        nonlocal next_fill
        while next_fill < upto:
            if next_fill != lock:
                enc.encode_page(next_fill, zero)
            next_fill += 1

    prev_pgno = 0
    merged = heapq.merge(*(_tagged(d, i) for i, d in enumerate(decs)), key=lambda t: (t[0], t[1]))
    for pgno, neg_order, data in merged:
        if pgno == prev_pgno:
            continue  # an older version of a page already written
        prev_pgno = pgno
        if pgno > survive_limit[-neg_order]:
            continue  # truncated by a later input; fill_zeros covers it if regrown
        if pgno > final_commit:
            continue
        if pgno > lowest_commit:
            fill_zeros(pgno)
            next_fill = pgno + 1
        enc.encode_page(pgno, data)
    fill_zeros(final_commit + 1)
    post = 0 if no_checksum else decs[-1].trailer.post_apply_checksum if decs[-1].trailer else 0
    trailer = enc.finish(post)
    return header, trailer
