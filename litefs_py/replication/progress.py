"""Progress of long restores on stderr: click's progress bar, with bytes done / total, rate
and ETA.

On a terminal the bar appears only after `delay` seconds (short restores stay silent) and is
redrawn at most every `interval` seconds. When the stream is not a terminal (logs, pipes,
CI) nothing is written while the restore runs, so no carriage returns end up in a log; a
restore that took longer than `delay` ends with one summary line instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import click

__all__ = ["NullProgress", "Progress", "format_bytes"]

BAR_WIDTH = 24


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


class _Terminal:
    """`stream`, claiming to be a terminal (`force=True`): click draws only on terminals."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


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
        self.tty = force or tty
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._pending = 0  # bytes done but not yet passed to the bar
        self._bar: Any = None  # click's ProgressBar, while shown
        self._summarized = False  # the final line (not a terminal) was written

    def add_total(self, n: int) -> None:
        self.total += n
        if self._bar is not None:
            self._bar.length = max(self.total, self.done)

    def advance(self, n: int) -> None:
        self.done += n
        self._pending += n
        if not self.tty:
            return
        now = time.monotonic()
        if now - self.start < self.delay or now - self._last_draw < self.interval:
            return
        self._last_draw = now
        self._draw(now)

    def info(self, now: float | None = None) -> str:
        """Bytes done / total, rate and ETA (the text beside the bar)."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.start, 1e-6)
        rate = self.done / elapsed
        total = max(self.total, self.done)
        eta = _format_eta((total - self.done) / rate) if rate > 0 else "?"
        return (f"{format_bytes(self.done)} / {format_bytes(total)}  {format_bytes(rate)}/s  "
                f"ETA {eta}")

    def _draw(self, now: float) -> None:
        if self._bar is None:
            stream: Any = self.stream if self.stream.isatty() else _Terminal(self.stream)
            self._bar = click.progressbar(
                length=max(self.total, self.done, 1), label=self.label, file=stream,
                width=BAR_WIDTH, show_eta=False, show_percent=True,
                bar_template="%(label)s [%(bar)s] %(info)s", fill_char="#", empty_char="-",
                item_show_func=lambda text: text)
            self._bar.__enter__()
        self._bar.update(self._pending, self.info(now))
        self._pending = 0

    def close(self) -> None:
        """Finish the bar (a terminal), or write the summary line of a long restore (not a
        terminal). Safe to call more than once."""
        now = time.monotonic()
        if self._bar is not None:
            self._draw(now)
            self._bar.__exit__(None, None, None)  # ends the line, shows the cursor again
            self._bar = None
        elif (not self.tty and not self._summarized and self.done
              and now - self.start >= self.delay):
            self._summarized = True
            elapsed = now - self.start
            self.stream.write(f"{self.label}: {format_bytes(self.done)} in {elapsed:.1f}s "
                              f"({format_bytes(self.done / elapsed)}/s)\n")
            self.stream.flush()
