from __future__ import annotations

import pickle
import sqlite3
import struct
from pathlib import Path

import pytest

from litefs_py.sqlite import (
    DatabaseHeaderError,
    SQLiteFormatError,
    page_size_from_header,
    parse_database_header,
)
from tests.vectors_path import VECTORS as ALL_VECTORS

VECTORS = ALL_VECTORS / "litefs"
STORE = VECTORS / "store"



def test_valid_fixture_database() -> None:
    path = STORE / "open-and-write-snapshot/dbs/sqlite.db/database"
    data = path.read_bytes()
    header = parse_database_header(data, name=str(path))
    assert header.page_size == 4096
    assert not header.is_wal
    assert (header.write_version, header.read_version) == (1, 1)
    assert header.page_count == 10 == len(data) // 4096
    assert header.page_count_valid
    assert header.file_change_counter == 10
    assert header.schema_cookie == 6
    assert header.schema_format == 4
    assert header.text_encoding == 1
    assert header.sqlite_version_number == 3035004
    assert header.freelist_page_count == 0
    assert page_size_from_header(data) == 4096


def test_short_fixture_database() -> None:
    path = STORE / "open-short-database/dbs/test.db/database"
    data = path.read_bytes()
    assert len(data) == 10
    assert page_size_from_header(data) is None
    with pytest.raises(DatabaseHeaderError) as info:
        parse_database_header(data, name="test.db")
    assert info.value.offset == 0
    assert str(info.value) == "test.db: offset 0: header length: expected 100 bytes, found 10 bytes"


def test_invalid_header_fixture_database() -> None:
    path = STORE / "open-invalid-database-header/dbs/test.db/database"
    data = path.read_bytes()
    assert data == bytes(100)
    assert page_size_from_header(data) is None
    with pytest.raises(DatabaseHeaderError, match=r"^test\.db: offset 0: magic: expected"):
        parse_database_header(data, name="test.db")


def _real_database(tmp_path: Path, *pragmas: str) -> bytes:
    path = tmp_path / "real.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in pragmas:
        conn.execute(pragma)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (randomblob(20000))")
    conn.close()
    return path.read_bytes()


def test_real_sqlite_header(tmp_path: Path) -> None:
    data = _real_database(
        tmp_path,
        "PRAGMA page_size=8192",
        "PRAGMA user_version=42",
        "PRAGMA application_id=1234567",
    )
    header = parse_database_header(data)
    assert header.page_size == 8192
    assert header.page_count == len(data) // 8192
    assert header.page_count_valid
    assert header.user_version == 42
    assert header.application_id == 1234567
    assert header.sqlite_version_number == sqlite3.sqlite_version_info[0] * 1_000_000 + (
        sqlite3.sqlite_version_info[1] * 1000 + sqlite3.sqlite_version_info[2]
    )
    assert not header.is_wal


def test_real_sqlite_wal_and_64k_pages(tmp_path: Path) -> None:
    data = _real_database(tmp_path, "PRAGMA page_size=65536", "PRAGMA journal_mode=WAL")
    assert struct.unpack_from(">H", data, 16) == (1,)
    header = parse_database_header(data)
    assert header.raw_page_size == 1
    assert header.page_size == 65536
    assert page_size_from_header(data[:18]) == 65536
    assert header.is_wal


def _valid_header() -> bytearray:
    header = bytearray(100)
    header[:16] = b"SQLite format 3\x00"
    struct.pack_into(">H6B", header, 16, 4096, 1, 1, 0, 64, 32, 32)
    struct.pack_into(">I", header, 56, 1)
    return header


@pytest.mark.parametrize(
    ("patches", "offset", "what"),
    [
        ([(16, b"\x03\xe8")], 16, "page size"),  # 1000: not a power of two
        ([(16, b"\x01\x00")], 16, "page size"),  # 256: too small
        ([(16, b"\x00\x00")], 16, "page size"),
        ([(18, b"\x03")], 18, "file format version"),
        ([(19, b"\x00")], 19, "file format version"),
        # Usable size must stay >= 480: 512-byte pages with 33 reserved bytes leave 479.
        ([(16, b"\x02\x00"), (20, b"\x21")], 20, "reserved bytes per page"),
        ([(21, b"\x40\x20\x21")], 21, "payload fractions"),
        ([(44, b"\x00\x00\x00\x05")], 44, "schema format"),
        ([(56, b"\x00\x00\x00\x04")], 56, "text encoding"),
    ],
)
def test_invalid_fields(patches: list[tuple[int, bytes]], offset: int, what: str) -> None:
    header = _valid_header()
    parse_database_header(header)
    for at, value in patches:
        header[at : at + len(value)] = value
    with pytest.raises(DatabaseHeaderError) as info:
        parse_database_header(header, name="x.db")
    assert info.value.offset == offset
    assert info.value.what == what
    assert str(info.value).startswith(f"x.db: offset {offset}: {what}: expected ")


def test_reserved_bytes_within_limit_are_fine() -> None:
    header = _valid_header()
    header[16:18] = b"\x02\x00"
    header[20] = 32
    assert parse_database_header(header).reserved_bytes == 32


def test_page_size_from_header_edges() -> None:
    header = _valid_header()
    assert page_size_from_header(b"") is None
    assert page_size_from_header(header[:17]) is None
    assert page_size_from_header(header[:18]) == 4096
    header[16:18] = b"\x03\xe8"
    with pytest.raises(DatabaseHeaderError, match="offset 16: page size"):
        page_size_from_header(header, name="x.db")


def test_errors_are_value_errors_and_picklable() -> None:
    try:
        parse_database_header(b"short", name="a.db")
    except SQLiteFormatError as err:
        assert isinstance(err, ValueError)
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is DatabaseHeaderError
        assert str(copy) == str(err)
        assert (copy.name, copy.offset) == ("a.db", 0)
    else:
        pytest.fail("no error raised")
