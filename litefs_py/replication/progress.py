"""A one-line progress bar on stderr for long restores: bytes done / total, rate, ETA.

It shows nothing for the first `delay` seconds (short restores stay silent) and nothing at all
unless the stream is a terminal, so logs and pipes never get carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["NullProgress", "Progress", "format_bytes"]


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _format_eta(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}:{s % 60:02d}"


class NullProgress:
    """Progress that shows nothing (the default for library callers)."""

    def add_total(self, n: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class Progress(NullProgress):
    def __init__(self, total: int, *, label: str = "restore", stream: TextIO | None = None,
                 delay: float = 2.0, interval: float = 0.2, force: bool = False) -> None:
        self.total = total
        self.done = 0
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.delay = delay
        self.interval = interval
        try:
            tty = self.stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        self.enabled = force or tty
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def add_total(self, n: int) -> None:
        self.total += n

    def advance(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.start < self.delay or now - self._last_draw < self.interval:
            return
        self._last_draw = now
        self._draw(now)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.start, 1e-6)
        rate = self.done / elapsed
        total = max(self.total, self.done)
        pct = 100.0 * self.done / total if total else 100.0
        width = 24
        filled = int(width * pct / 100)
        bar = "#" * filled + "-" * (width - filled)
        eta = _format_eta((total - self.done) / rate) if rate > 0 else "?"
        return (f"{self.label} [{bar}] {pct:5.1f}% {format_bytes(self.done)} / "
                f"{format_bytes(total)}  {format_bytes(rate)}/s  ETA {eta}")

    def _draw(self, now: float) -> None:
        self.stream.write("\r" + self.line(now) + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
