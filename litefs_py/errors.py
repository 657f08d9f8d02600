"""Domain errors that reach the user, with the exit code each one maps to.

A user mistake or a bad input ends in one line on stderr and a documented exit code, never a
traceback. The table here is the single source for docs/cli.md's exit codes.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the operation ran and found a problem (e.g. `ltx verify` found a bad file)
    USAGE = 2  # bad flags or arguments (click uses 2 as well)
    CONFIG = 3  # invalid configuration file or values
    NOT_FOUND = 4  # a named file, database or replica does not exist
    IO = 5  # the filesystem or the network failed
    INTERNAL = 70  # a bug: the log has the traceback


class QuietError(Exception):
    """An error for the user: printed as one line, no traceback, process exits with `code`."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message
