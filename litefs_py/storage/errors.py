"""Storage errors: each names what was looked for, where, and what to do.

Every class says whether retrying can fix it (`retryable`) and which `kind` of failure it is
(the key of the per-kind error counters in `litefs status`); storage/retry.py turns both into
the one retry policy of the uploader, the bucket follower and the replica's stream.
"""

from __future__ import annotations

from ..errors import ExitCode, QuietError


class StorageError(QuietError):
    """A replica operation failed. `retryable`: whether trying again soon can succeed
    (network, 5xx, throttling) or needs someone to fix something first (credentials, bucket,
    permissions, region), in which case it is reported at once and retried only slowly."""

    retryable = False
    kind = "storage"

    def __init__(self, message: str, code: ExitCode = ExitCode.IO) -> None:
        super().__init__(message, code)


class EndpointUnreachableError(StorageError):
    retryable = True
    kind = "unreachable"


class TransientStorageError(StorageError):
    """5xx, throttling, timeouts: try again later."""

    retryable = True
    kind = "transient"


class NoSuchBucketError(StorageError):
    kind = "no_bucket"

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.NOT_FOUND)


class AccessDeniedError(StorageError):
    """Not allowed: the credentials may not do this, or a directory is not writable."""

    kind = "access_denied"


class InvalidCredentialsError(AccessDeniedError):
    """The credentials themselves are missing, unknown, expired or do not sign correctly."""

    kind = "credentials"


class ObjectNotFoundError(StorageError):
    """The object is gone, usually compacted away or deleted by retention after a listing:
    listing again finds what replaced it."""

    retryable = True
    kind = "not_found"

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.NOT_FOUND)


class StorageFullError(StorageError):
    """The target (a directory replica's disk) is full."""

    retryable = True
    kind = "storage_full"


class PreconditionFailedError(StorageError):
    """A conditional write lost: the object exists (If-None-Match: *) or no longer has the
    ETag the writer named (If-Match). Not retryable as is: the writer must read the object
    again and decide (the lease code does)."""

    kind = "precondition_failed"
