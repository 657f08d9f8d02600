"""Checksums (docs/formats.md §1): CRC-64 ISO, page and database checksums, lock page."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litefs_py.ltx import (
    CHECKSUM_FLAG,
    EMPTY_DATABASE_CHECKSUM,
    combine_page_checksums,
    crc64,
    database_checksum,
    lock_pgno,
    page_checksum,
    update_checksum,
)

from .helpers import FLAG, PAGE_SIZES, py_crc64

LTX = settings.get_profile("ltx")


def test_crc_check_value() -> None:
    assert crc64(b"123456789") == 0xB90956C775A41001
    assert py_crc64(b"123456789") == 0xB90956C775A41001


def test_crc_is_not_ecma_or_xz() -> None:
    # CRC-64/XZ (ECMA-182 reflected) check value; ISO must differ.
    assert crc64(b"123456789") != 0x995DC9BBDF1939FA
    assert crc64(b"") == 0
    assert py_crc64(b"") == 0


@settings(LTX, max_examples=60)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc_matches_reference_and_chains(a: bytes, b: bytes) -> None:
    assert crc64(a) == py_crc64(a)
    assert crc64(a + b) == crc64(b, crc64(a)) == py_crc64(b, py_crc64(a))


def test_flag_constants() -> None:
    assert CHECKSUM_FLAG == 1 << 63
    assert EMPTY_DATABASE_CHECKSUM == 0x8000000000000000


def test_page_checksum_definition() -> None:
    rnd = random.Random(7)
    for pgno in (1, 2, 255, 256, 65536, 2**32 - 1):
        page = rnd.randbytes(512)
        expected = FLAG | py_crc64(pgno.to_bytes(4, "big") + page)
        assert page_checksum(pgno, page) == expected
        assert page_checksum(pgno, memoryview(page)) == expected
        assert page_checksum(pgno, page) & FLAG


def test_formats_vector_three_pages() -> None:
    pages = [bytes([v]) * 512 for v in (1, 2, 3)]
    cks = [page_checksum(i + 1, p) for i, p in enumerate(pages)]
    assert combine_page_checksums(cks) == 0xEFFFFFFFECD99000
    assert database_checksum(io.BytesIO(b"".join(pages)), 512) == 0xEFFFFFFFECD99000
    assert database_checksum(io.BytesIO(b"".join(pages)), 512, 3) == 0xEFFFFFFFECD99000


def test_formats_vector_single_page_of_ones() -> None:
    page = b"1" * 512
    assert page_checksum(1, page) == 0xEB1A999231044DDD
    assert combine_page_checksums([page_checksum(1, page)]) == 0xEB1A999231044DDD
    assert database_checksum(io.BytesIO(page), 512) == 0xEB1A999231044DDD


def test_empty_database_checksum() -> None:
    assert database_checksum(io.BytesIO(b""), 4096) == EMPTY_DATABASE_CHECKSUM
    assert database_checksum(io.BytesIO(b""), 4096, 0) == EMPTY_DATABASE_CHECKSUM
    assert combine_page_checksums([]) == EMPTY_DATABASE_CHECKSUM
    # A prefix limited by page_count ignores what follows.
    assert database_checksum(io.BytesIO(bytes(4096)), 4096, 0) == EMPTY_DATABASE_CHECKSUM


def test_database_checksum_changes_with_any_page() -> None:
    a, b = bytes([1]) * 512, bytes([2]) * 512
    base = database_checksum(io.BytesIO(a + b), 512)
    assert database_checksum(io.BytesIO(a + a), 512) != base
    assert database_checksum(io.BytesIO(b + b), 512) != base
    assert database_checksum(io.BytesIO(a + b + bytes(512)), 512) != base


def test_database_checksum_is_linear() -> None:
    # CRC is affine and the database checksum XORs an even number of equal-length inputs here,
    # so swapping two pages' contents keeps it: a property of the format, not of the codec.
    a, b = bytes([1]) * 512, bytes([2]) * 512
    assert database_checksum(io.BytesIO(a + b), 512) == database_checksum(io.BytesIO(b + a), 512)


def test_database_checksum_short_page_or_count() -> None:
    with pytest.raises(ValueError):
        database_checksum(io.BytesIO(bytes(1000)), 512)
    with pytest.raises(ValueError):
        database_checksum(io.BytesIO(bytes(1024)), 512, 3)


@pytest.mark.parametrize(
    ("page_size", "expected"),
    [(512, 2097153), (1024, 1048577), (2048, 524289), (4096, 262145), (8192, 131073),
     (16384, 65537), (32768, 32769), (65536, 16385)],
)
def test_lock_pgno(page_size: int, expected: int) -> None:
    assert lock_pgno(page_size) == expected
    # The lock page is the page holding byte offset 1 GiB (SQLite's PENDING_BYTE).
    assert (expected - 1) * page_size == 0x40000000


@settings(LTX, max_examples=40)
@given(
    page_size=st.sampled_from([512, 1024, 4096]),
    npages=st.integers(1, 12),
    seed=st.integers(0, 2**32),
    changes=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 255)), max_size=12),
)
def test_update_checksum_equals_recompute(page_size: int, npages: int, seed: int,
                                          changes: list[tuple[int, int]]) -> None:
    rnd = random.Random(seed)
    db = bytearray(rnd.randbytes(page_size * npages))
    ck = database_checksum(io.BytesIO(bytes(db)), page_size)
    assert ck == combine_page_checksums(
        page_checksum(i + 1, bytes(db[i * page_size:(i + 1) * page_size]))
        for i in range(npages))
    for idx, byte in changes:
        i = idx % npages
        old = bytes(db[i * page_size:(i + 1) * page_size])
        new = bytes([byte]) * page_size
        db[i * page_size:(i + 1) * page_size] = new
        ck = update_checksum(ck, page_checksum(i + 1, old), page_checksum(i + 1, new))
        assert ck == database_checksum(io.BytesIO(bytes(db)), page_size)
    # Growing by one page: the old checksum of an absent page is 0.
    extra = rnd.randbytes(page_size)
    grown = update_checksum(ck, 0, page_checksum(npages + 1, extra))
    assert grown == database_checksum(io.BytesIO(bytes(db) + extra), page_size)
    # Shrinking back: the new checksum is 0.
    assert update_checksum(grown, page_checksum(npages + 1, extra), 0) == ck


def test_update_checksum_keeps_flag_on_cancellation() -> None:
    ck = page_checksum(1, bytes(512))
    # Removing the only page gives the empty-database checksum, never 0.
    assert update_checksum(CHECKSUM_FLAG | ck, ck, 0) == EMPTY_DATABASE_CHECKSUM


class _ZeroDatabase:
    """A read-only 'file' of `count` pages produced on the fly (a 1 GiB database, no disk)."""

    def __init__(self, page_size: int, count: int, special: dict[int, bytes]) -> None:
        self.page_size = page_size
        self.count = count
        self.special = special
        self.zero = bytes(page_size)
        self.next = 1

    def read(self, n: int) -> bytes:
        assert n == self.page_size
        if self.next > self.count:
            return b""
        page = self.special.get(self.next, self.zero)
        self.next += 1
        return page


def test_database_checksum_skips_lock_page() -> None:
    ps = 65536
    lock = lock_pgno(ps)
    count = lock + 2
    rnd = random.Random(3)
    special = {1: rnd.randbytes(ps), lock - 1: rnd.randbytes(ps), lock: rnd.randbytes(ps),
               count: rnd.randbytes(ps)}
    got = database_checksum(_ZeroDatabase(ps, count, special), ps)  # type: ignore[arg-type]
    zero = bytes(ps)
    expected = combine_page_checksums(
        page_checksum(p, special.get(p, zero)) for p in range(1, count + 1) if p != lock)
    assert got == expected
    # Whatever the lock page holds does not matter.
    special[lock] = bytes([0xAB]) * ps
    assert database_checksum(_ZeroDatabase(ps, count, special), ps) == expected  # type: ignore[arg-type]
    # ...but every other page does.
    special[lock + 1] = bytes([1]) * ps
    assert database_checksum(_ZeroDatabase(ps, count, special), ps) != expected  # type: ignore[arg-type]


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_page_checksum_depends_on_pgno(page_size: int) -> None:
    page = bytes(page_size)
    assert len({page_checksum(p, page) for p in range(1, 50)}) == 49
