"""The commit gate: whether this node may still accept a commit, and the epoch it stamps.

The store cannot import the lease layer; the mount hands every database an object with this
shape (the lease keeper behind it, replication/role.py). `DB.record` asks it right before an
LTX record is written, which is right before the FUSE request that completes the commit
returns: a refusal fails that request with EIO, nothing is recorded and nothing changes, so
the application sees an I/O error instead of an acknowledgement the next primary would not
honour.
"""

from __future__ import annotations

import errno
from typing import Protocol


class CommitGate(Protocol):
    @property
    def epoch(self) -> int:
        """The term whose LTX records this node writes (the header's node-ID field); 0 when
        there is no lease (static)."""
        ...

    def can_commit(self) -> bool:
        """Read on every commit: must not block, must be cheap."""
        ...

    def refusal(self) -> str:
        """Why commits are refused now (for the log and the error)."""
        ...


class OpenGate:
    """No lease (static): every commit is accepted, records carry epoch 0."""

    epoch = 0

    def can_commit(self) -> bool:
        return True

    def refusal(self) -> str:
        return "commits are accepted"


OPEN_GATE = OpenGate()


class FencedError(OSError):
    """A commit refused because this node cannot prove it holds the lease (EIO)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)
