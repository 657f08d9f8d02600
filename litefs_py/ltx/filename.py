"""LTX file names: `%016x-%016x.ltx` (min TXID, max TXID), lowercase hex."""

from __future__ import annotations

import re

from .errors import FilenameError

_FILENAME = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})\.ltx")


def format_filename(min_txid: int, max_txid: int) -> str:
    return f"{min_txid:016x}-{max_txid:016x}.ltx"


def parse_filename(name: str) -> tuple[int, int]:
    """Return (min TXID, max TXID) of a base name; FilenameError if it is not an LTX name."""
    m = _FILENAME.fullmatch(name)
    if m is None:
        raise FilenameError(
            "not an LTX file name (expected 16 hex digits, '-', 16 hex digits, '.ltx')", name=name
        )
    return int(m.group(1), 16), int(m.group(2), 16)


def is_ltx_filename(name: str) -> bool:
    return _FILENAME.fullmatch(name) is not None


def format_txid(txid: int) -> str:
    return f"{txid:016x}"


def parse_txid(text: str) -> int:
    """Parse a TXID in hex of any width (`c`, `0xc`, `000000000000000c`)."""
    s = text.strip().lower()
    if s.startswith("0x"):
        s = s[2:]
    if not s or len(s) > 16 or any(c not in "0123456789abcdef" for c in s):
        raise ValueError(f"invalid TXID {text!r}: expected up to 16 hex digits")
    return int(s, 16)
