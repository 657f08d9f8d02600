"""Typed errors for the LTX codec.

Every error carries the file name (or a description of the source), the byte offset where the
problem was found when one applies, and a message that says what was expected and what was
found, so a CLI can print one line per bad file.
"""

from __future__ import annotations


class LTXError(Exception):
    """Base class for every problem with an LTX file."""

    def __init__(self, message: str, *, name: str = "<ltx>", offset: int | None = None) -> None:
        self.message = message
        self.name = name
        self.offset = offset
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.name if self.offset is None else f"{self.name} at offset {self.offset}"
        return f"{where}: {self.message}"


class FilenameError(LTXError):
    """A name that is not `%016x-%016x.ltx`."""


class TruncatedError(LTXError):
    """The file ended before a complete header, page frame, index or trailer."""


class HeaderError(LTXError):
    """The 100-byte header is malformed or violates a header rule."""


class PageFrameError(LTXError):
    """A page frame is malformed: bad page number, order, flags, size or compression."""


class PageIndexError(LTXError):
    """The v3 page index does not match the page frames."""


class TrailerError(LTXError):
    """The trailer violates a rule (checksum presence or format)."""


class ChecksumMismatchError(LTXError):
    """A file checksum or database checksum does not match the data."""


class CompactionError(LTXError):
    """Inputs to the compactor cannot be merged (not contiguous, mixed page sizes)."""
