"""What a read replica knows about its primary, shown in the mount as `.primary` and `.lag`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class ReplicaState:
    #: The primary's advertise URL (`.primary`); None while following the bucket only.
    primary_url: str | None = None
    #: The primary's hostname (`.primary` with an etcd or s3 lease, LiteFS's contract).
    primary_hostname: str | None = None
    #: Where transactions come from now: "primary", "bucket" or "none" (not connected).
    source: str = "none"
    #: The primary's newest TXID per database, from its last message.
    primary_txids: dict[str, int] = field(default_factory=dict)
    #: Monotonic time since which the replica has been behind (None: caught up).
    behind_since: float | None = None
    #: Monotonic time of the last message from the source.
    last_contact: float | None = None

    def lag_seconds(self) -> float:
        """How long the replica has been behind its source; 0 when caught up. While not
        connected, the time since the last contact (the replica cannot know more)."""
        now = time.monotonic()
        if self.source == "none":
            return now - self.last_contact if self.last_contact is not None else 0.0
        if self.behind_since is None:
            return 0.0
        return now - self.behind_since

    def note_position(self, caught_up: bool) -> None:
        self.last_contact = time.monotonic()
        if caught_up:
            self.behind_since = None
        elif self.behind_since is None:
            self.behind_since = self.last_contact
