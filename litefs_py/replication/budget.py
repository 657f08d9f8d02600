"""How many L0 uploads a database may make: a token bucket per database (`replica.upload-rate`
per second sustained, `replica.upload-burst` at once).

Each L0 upload is one PUT, and S3-style stores bill per request: uploading every commit as it
comes gives the lowest lag but, at a steady 20 commits/s, ten times Litestream's requests
(docs/config.md has the dollars). With a budget:

- a sporadic commit finds a token and is uploaded at once (no window, no timer);
- a steady stream empties the bucket, after which uploads go out at `rate` per second, each
  carrying every commit made since the previous one: requests stay bounded whatever the
  commit rate, and the lag stays about half an upload period;
- when a token frees up while commits keep coming, the upload waits for the next commit, up
  to half a period (`grace`): the object then ends with the newest commit instead of leaving
  it for the next period, which lowers the lag of a steady stream by half a commit gap for
  the same number of requests.

The Uploader asks `delay()` before an upload and calls `spend()` for each PUT it sends; the
bucket owns nothing else. `rate` 0 switches the budget off (every upload goes at once).
The defaults live with the configuration (config: replica.upload-rate, upload-burst).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RequestBudget:
    """A token bucket of L0 uploads. Not thread-safe: the uploader's trio task owns it."""

    def __init__(self, rate: float, burst: int = 1, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0:
            raise ValueError(f"upload rate must be >= 0, got {rate}")
        if burst < 1:
            raise ValueError(f"upload burst must be >= 1, got {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)  # a fresh database may upload at once
        self._at = clock()
        self.spent = 0  # uploads charged
        self.deferred = 0  # uploads that waited for a token (steady load batched)

    @property
    def limited(self) -> bool:
        return self.rate > 0

    @property
    def grace(self) -> float:
        """How long a freed token waits for one more commit (half an upload period)."""
        return 0.5 / self.rate if self.rate > 0 else 0.0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now

    def tokens(self) -> float:
        """Uploads that may go out now (fractional while one is refilling)."""
        if not self.limited:
            return float(self.burst)
        self._refill()
        return self._tokens

    def delay(self) -> float:
        """Seconds until an upload may go out (0: now)."""
        if not self.limited:
            return 0.0
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def spend(self) -> None:
        """One upload (PUT) is being sent, whether it will succeed or not (S3 bills both)."""
        self.spent += 1
        if self.limited:
            self._refill()
            self._tokens -= 1

    def to_json(self) -> dict[str, object]:
        """For `litefs status`: the limit and how often steady load was batched by it."""
        return {"rate_per_second": self.rate, "burst": self.burst, "spent": self.spent,
                "deferred": self.deferred}
