"""Small value types shared across the layers (the bottom layer: imports nothing of litefs_py).

`Pos` and `TxRange` are NamedTuples on purpose: they are ordered and hashable, the LTX log
keys its index by `TxRange`, and a position read from the wire compares equal to the same
position read from a database.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple


class Pos(NamedTuple):
    """A database's replication position: its last TXID and the rolling checksum of the
    database after that transaction (LiteFS's `Pos`)."""

    txid: int
    checksum: int


ZERO_POS = Pos(0, 0)


class TxRange(NamedTuple):
    """The TXIDs one LTX record holds, `min_txid..max_txid` inclusive."""

    min_txid: int
    max_txid: int


class FileKind(Enum):
    """What a name under the mount is, by its suffix: the database, one of SQLite's
    companion files, or the read-only virtual `-pos` file (no backing file)."""

    DATABASE = "database"
    JOURNAL = "journal"
    WAL = "wal"
    SHM = "shm"
    POS = "pos"

    @property
    def suffix(self) -> str:
        """The suffix after the database name under the mount ("" for the database)."""
        return _SUFFIX[self]

    @property
    def backed(self) -> bool:
        """Whether the kind has a backing file in the data directory (all but `-pos`)."""
        return self is not FileKind.POS


_SUFFIX = {FileKind.DATABASE: "", FileKind.JOURNAL: "-journal", FileKind.WAL: "-wal",
           FileKind.SHM: "-shm", FileKind.POS: "-pos"}
#: The companion files SQLite creates, in listing order.
COMPANIONS = (FileKind.JOURNAL, FileKind.WAL, FileKind.SHM)


def parse_name(name: str) -> tuple[str, FileKind]:
    """Split a name under the mount into (database name, kind)."""
    for kind in (FileKind.JOURNAL, FileKind.WAL, FileKind.SHM, FileKind.POS):
        suffix = kind.suffix
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], kind
    return name, FileKind.DATABASE


class WalRange(NamedTuple):
    """Where an LTX record's transactions sit in the WAL: byte offset and size of their
    frames and the WAL header's salts (LTX header fields wal_offset/size/salt1/salt2). All
    zero for a transaction captured in rollback-journal mode."""

    offset: int
    size: int
    salt1: int
    salt2: int


NO_WAL = WalRange(0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class EncodedLtx:
    """One encoded LTX file held in memory: a snapshot, or local records merged for one
    upload, with what the receiver needs without decoding it."""

    data: bytes
    min_txid: int
    max_txid: int
    checksum: int  # the database checksum after max_txid (0: not known)
    timestamp: int  # milliseconds since the epoch (the LTX header's)

    @property
    def pos(self) -> Pos:
        return Pos(self.max_txid, self.checksum)
