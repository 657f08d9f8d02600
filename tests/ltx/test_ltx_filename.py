"""LTX file names (`%016x-%016x.ltx`, docs/formats.md §2) and TXID parsing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litefs_py.ltx import (
    FilenameError,
    LTXError,
    format_filename,
    format_txid,
    is_ltx_filename,
    parse_filename,
    parse_txid,
)

LTX = settings.get_profile("ltx")
U64 = st.integers(0, 2**64 - 1)


def test_format_examples() -> None:
    assert format_filename(1, 1) == "0000000000000001-0000000000000001.ltx"
    assert format_filename(0xA, 0xC) == "000000000000000a-000000000000000c.ltx"
    assert format_filename(2**64 - 1, 2**64 - 1) == "ffffffffffffffff-ffffffffffffffff.ltx"
    assert format_txid(0xC) == "000000000000000c"


@settings(LTX, max_examples=200)
@given(U64, U64)
def test_round_trip(lo: int, hi: int) -> None:
    name = format_filename(lo, hi)
    assert len(name) == 37
    assert name == name.lower()
    assert parse_filename(name) == (lo, hi)
    assert is_ltx_filename(name)
    assert parse_txid(format_txid(lo)) == lo


BAD_NAMES = [
    "000000000000000A-000000000000000c.ltx",  # uppercase
    "000000000000000a-000000000000000C.ltx",
    "000000000000000a-000000000000000c.LTX",
    "00000000000000a-000000000000000c.ltx",  # 15 digits
    "000000000000000a-00000000000000c.ltx",
    "0000000000000000a-000000000000000c.ltx",  # 17 digits
    "000000000000000a-0000000000000000c.ltx",
    "000000000000000a-000000000000000c",  # missing .ltx
    "000000000000000a-000000000000000c.lt",
    "000000000000000a-000000000000000c.ltx.tmp",
    "000000000000000a_000000000000000c.ltx",
    "000000000000000a000000000000000c.ltx",
    "00000000000000g0-000000000000000c.ltx",  # not hex
    "0x0000000000000a-000000000000000c.ltx",
    " 000000000000000a-000000000000000c.ltx",
    "000000000000000a-000000000000000c.ltx ",
    "dir/000000000000000a-000000000000000c.ltx",
    "",
    ".ltx",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_rejects(name: str) -> None:
    assert not is_ltx_filename(name)
    with pytest.raises(FilenameError) as info:
        parse_filename(name)
    assert isinstance(info.value, LTXError)
    assert info.value.name == name
    assert info.value.message


@pytest.mark.parametrize("suffix", ["\n", "\r\n"])
def test_rejects_trailing_newline(suffix: str) -> None:
    """Go's `^...\\.ltx$` (superfly/ltx) matches only at the end of the text; Python's `$` also
    matches before a final newline, so filename.py accepts "<name>.ltx\\n" unless it uses
    fullmatch or `\\Z`."""
    name = "000000000000000a-000000000000000c.ltx" + suffix
    assert not is_ltx_filename(name)
    with pytest.raises(FilenameError):
        parse_filename(name)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("c", 0xC),
        ("0xc", 0xC),
        ("000000000000000c", 0xC),
        ("0x000000000000000c", 0xC),
        ("1", 1),
        ("ffffffffffffffff", 2**64 - 1),
        ("0000000000000001", 1),
    ],
)
def test_parse_txid_accepts(text: str, value: int) -> None:
    assert parse_txid(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "0000000000000000c",  # 17 digits
        "0x0000000000000000c",
        "10000000000000000",  # 2**64: 17 digits
        "g",
        "0xg",
        "",
        "0x",
        "-1",
        "+c",
        "c_d",
        "1 2",
        "0x0xc",
        "١",  # a non-ASCII digit
        "c.ltx",
    ],
)
def test_parse_txid_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_txid(text)
