"""Errors raised by the SQLite file codecs.

Every error names the file, the byte offset, what was checked, what was expected and what was
found, because these errors end up in logs read by someone trying to recover a database.
"""

from __future__ import annotations


class SQLiteFormatError(ValueError):
    """A SQLite database, WAL or journal file is not in the expected format."""

    def __init__(self, name: str, offset: int, what: str, expected: object, found: object) -> None:
        self.name = name
        self.offset = offset
        self.what = what
        self.expected = expected
        self.found = found
        super().__init__(f"{name}: offset {offset}: {what}: expected {expected}, found {found}")

    def __reduce__(self) -> tuple[type[SQLiteFormatError], tuple[str, int, str, object, object]]:
        # The default reduce passes only the message to __init__; keep errors picklable.
        return (type(self), (self.name, self.offset, self.what, self.expected, self.found))


class DatabaseHeaderError(SQLiteFormatError):
    """The 100-byte database header is missing or invalid."""


class WALFormatError(SQLiteFormatError):
    """The WAL header or a frame is malformed."""


class WALChecksumError(WALFormatError):
    """A WAL header or frame checksum does not match."""


class WALSaltMismatchError(WALFormatError):
    """A WAL frame's salts differ from the WAL header's salts."""


class JournalFormatError(SQLiteFormatError):
    """A rollback journal header or record is malformed."""


class JournalChecksumError(JournalFormatError):
    """A rollback journal record's checksum does not match its page."""
