"""The one retry policy of the loops that talk to storage (the uploader, the bucket follower)
and of a replica's stream from its primary: how long to wait after a failure, which failures
waiting can fix, and the counters `litefs status` shows.

- A retryable failure (endpoint unreachable, 5xx or throttling, a timeout, a full disk, a local
  I/O error) backs off exponentially from `initial` to `cap`; each delay is scaled by a random
  factor in [1 - jitter, 1], so databases and replicas that failed together retry apart.
- A failure that needs someone to fix something (credentials rejected, no such bucket,
  permission denied, a wrong region: `StorageError.retryable` is False) is reported at once,
  by the caller, with the fix its message names, and is tried again only every `slow`
  seconds (30-60 s), so a fixed credential or a created bucket is picked up without a
  restart and without hammering the provider meanwhile.

The environment variable LITEFS_SLOW_RETRY (seconds) shortens the slow pace to between half of
it and it, for tests and for an operator who is fixing a bucket right now.

This is a small helper rather than tenacity or stamina: both retry one call until it succeeds
or gives up, while these loops never give up, do other work between failures (spool
accounting, polls, serving a stream), reset the back-off when a connection was healthy for a
while, and keep per-database state for `litefs status`; stamina's logging and Prometheus hooks
are moreover process-global. Wrapping each loop would take custom wait and callback code on
top of the library — more than this file.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import StorageError

__all__ = ["SLOW_RETRY_ENV", "Failure", "RetryPolicy", "RetryState", "error_kind",
           "is_retryable"]

SLOW_RETRY_ENV = "LITEFS_SLOW_RETRY"
SLOW_RETRY = (30.0, 60.0)  # seconds between attempts while a failure needs a fix


def _slow_pace() -> tuple[float, float]:
    value = os.environ.get(SLOW_RETRY_ENV)
    try:
        seconds = float(value) if value else 0.0
    except ValueError:
        seconds = 0.0
    return (seconds / 2, seconds) if seconds > 0 else SLOW_RETRY


def is_retryable(exc: BaseException) -> bool:
    """Whether waiting a little can fix `exc`. Storage errors say so themselves; anything
    else a retrying loop catches (local I/O, a plan the bucket cannot give yet) is retried
    with back-off, as the loops always did."""
    return exc.retryable if isinstance(exc, StorageError) else True


def error_kind(exc: BaseException) -> str:
    """The counter a failure is counted under: the storage error's kind ("credentials",
    "no_bucket", "unreachable", ...), "local_io" for an OSError, else the class name."""
    if isinstance(exc, StorageError):
        return exc.kind
    if isinstance(exc, OSError):
        return "local_io"
    return type(exc).__name__


@dataclass(frozen=True)
class RetryPolicy:
    initial: float = 0.25  # seconds before the first retry of a retryable failure
    cap: float = 30.0  # the longest back-off
    jitter: float = 0.2  # each back-off is scaled by uniform(1 - jitter, 1)
    slow: tuple[float, float] = field(default_factory=_slow_pace)  # failures that need a fix

    def delay(self, failures: int, retryable: bool = True) -> float:
        """Seconds to wait after the `failures`-th failure in a row."""
        if not retryable:
            return random.uniform(*self.slow)
        base = min(self.cap, self.initial * 2.0 ** min(max(failures - 1, 0), 30))
        return base * random.uniform(1.0 - self.jitter, 1.0)


@dataclass(frozen=True)
class Failure:
    """One failure as the policy sees it."""

    message: str
    kind: str
    retryable: bool
    delay: float  # seconds until the next attempt
    new: bool  # not the same message as the failure before it: log it


@dataclass
class RetryState:
    """The failures of one retrying loop: the current run of failures, the last error, and
    counters per kind since the start (for `litefs status` and, later, metrics)."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    failures: int = 0  # failures in a row; 0 after a success
    last_error: str | None = None
    kind: str | None = None
    retryable: bool = True
    errors: dict[str, int] = field(default_factory=dict)  # kind -> failures since start
    next_attempt_at: float | None = None  # time.monotonic() of the next attempt

    def failed(self, exc: BaseException, message: str | None = None) -> Failure:
        """Count `exc` (described by `message`, default str(exc)); return how long to wait."""
        return self.failed_with(str(exc) if message is None else message, error_kind(exc),
                                is_retryable(exc))

    def failed_with(self, message: str, kind: str, retryable: bool) -> Failure:
        new = message != self.last_error
        self.failures += 1
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.last_error, self.kind, self.retryable = message, kind, retryable
        delay = self.policy.delay(self.failures, retryable)
        self.next_attempt_at = time.monotonic() + delay
        return Failure(message, kind, retryable, delay, new)

    def succeeded(self) -> str | None:
        """Reset the back-off; return the error this success ended, if any (log it)."""
        ended = self.last_error
        self.failures = 0
        self.last_error = self.kind = self.next_attempt_at = None
        self.retryable = True
        return ended

    def slow_pace(self) -> str:
        """`every 30-60 s`: how often a failure that needs a fix is tried again."""
        lo, hi = self.policy.slow
        return f"every {lo:.0f}-{hi:.0f} s" if round(lo) != round(hi) else f"every {hi:.0f} s"

    def to_json(self) -> dict[str, Any]:
        """The status document's view: the last error, whether it needs a fix, when the next
        attempt is, and the per-kind counters."""
        wait = None if self.next_attempt_at is None else \
            round(max(0.0, self.next_attempt_at - time.monotonic()), 1)
        return {
            "last_error": self.last_error,
            "error_kind": self.kind,
            "needs_fix": None if self.last_error is None else not self.retryable,
            "failed_attempts": self.failures,
            "next_attempt_in": wait,
            "errors": dict(sorted(self.errors.items())),
        }
