"""Storage errors: each names what was looked for, where, and what to do."""

from __future__ import annotations

from ..errors import ExitCode, QuietError


class StorageError(QuietError):
    """A replica operation failed. `retryable` tells the uploader whether to back off and
    try again (network, 5xx) or to stop and say so (bad credentials, no such bucket)."""

    retryable = False

    def __init__(self, message: str, code: ExitCode = ExitCode.IO) -> None:
        super().__init__(message, code)


class EndpointUnreachableError(StorageError):
    retryable = True


class TransientStorageError(StorageError):
    """5xx, throttling, timeouts: try again later."""

    retryable = True


class NoSuchBucketError(StorageError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.NOT_FOUND)


class AccessDeniedError(StorageError):
    """Bad or missing credentials, or not allowed."""


class ObjectNotFoundError(StorageError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.NOT_FOUND)


class StorageFullError(StorageError):
    """The target (a directory replica's disk) is full."""

    retryable = True


class PreconditionFailedError(StorageError):
    """A conditional write lost: the object exists (If-None-Match: *) or no longer has the
    ETag the writer named (If-Match). Not retryable as is: the writer must read the object
    again and decide (the lease code does)."""
