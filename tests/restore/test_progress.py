"""The restore progress bar (click's): what a terminal shows, and that logs and pipes get no
carriage returns — at most one summary line for a long restore."""

from __future__ import annotations

import io

from litefs_py.replication.progress import Progress


def test_terminal_shows_bar_bytes_rate_and_eta() -> None:
    stream = io.StringIO()
    p = Progress(0, stream=stream, delay=0.0, interval=0.0, force=True)
    p.add_total(1000)
    p.advance(500)
    mid = stream.getvalue()
    assert mid.startswith("\r") and "restore [" in mid
    assert "50%" in mid and "500 B / 1000 B" in mid and "B/s" in mid and "ETA" in mid
    assert "#" * 12 + "-" * 12 in mid  # half of the 24-character bar
    p.advance(500)
    p.close()
    text = stream.getvalue()
    assert "100%" in text and "1000 B / 1000 B" in text
    assert text.endswith("\n")  # the line is finished, the cursor shown again
    p.close()  # a second close (restore's error path) writes nothing more
    assert stream.getvalue() == text


def test_terminal_stays_silent_for_a_short_restore() -> None:
    stream = io.StringIO()
    p = Progress(1000, stream=stream, delay=60.0, interval=0.0, force=True)
    p.advance(1000)
    p.close()
    assert stream.getvalue() == ""


def test_not_a_terminal_gets_no_bar() -> None:
    short = io.StringIO()
    q = Progress(1000, stream=short, delay=60.0, interval=0.0)
    q.advance(1000)
    q.close()
    assert short.getvalue() == ""  # a short restore: nothing at all
    long = io.StringIO()
    r = Progress(1000, stream=long, delay=0.0, interval=0.0)
    for _ in range(10):
        r.advance(100)
    assert long.getvalue() == ""  # nothing while it runs
    r.close()
    r.close()
    lines = long.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("restore: 1000 B in "), lines
    assert "\r" not in long.getvalue()
