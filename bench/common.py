"""Helpers shared by the benchmark scripts (profile summaries, which code was measured)."""

from __future__ import annotations

import signal
import subprocess
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM and wait up to `timeout` s (a clean unmount or shutdown), else SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def log_tail(path: Path, n: int = 30) -> str:
    """The last `n` lines of a log file ("" if there is none yet)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def summarize_collapsed(path: Path, top: int = 40) -> str:
    """Inclusive and self share of samples per function from py-spy's raw (collapsed) output."""
    inclusive: dict[str, int] = defaultdict(int)
    self_: dict[str, int] = defaultdict(int)
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [short_frame(f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        self_[frames[-1]] += n
    out = [f"{total} samples (busy only)", "", "inclusive:"]
    for f, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {f}")
    out += ["", "self:"]
    for f, n in sorted(self_.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {f}")
    return "\n".join(out) + "\n"


def short_frame(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1].rstrip(")")
    return f"{name} ({file})" if file else name


def git_describe(src: Path) -> str:
    if src != REPO:
        return ""
    # Read-only git queries (--no-optional-locks: never refresh the index).
    git = ["git", "--no-optional-locks", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return ""
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "litefs_py"],
                           capture_output=True).returncode != 0
    return f" (git {head.stdout.strip()}{', litefs_py/ modified' if dirty else ''})"
