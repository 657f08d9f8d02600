"""Whether a path is a mount point, read from /proc/self/mounts (the bottom layer: the app,
the tests and the benchmarks all use this one copy)."""

from __future__ import annotations

import os
import re


def _unescape(field: str) -> str:
    # /proc/self/mounts escapes space, tab, newline and backslash as octal (\040 ...).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def is_mounted(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a mount point.

    `path` must already be absolute and resolved: this never stats it, because a stat of a
    FUSE mount whose server is this process (or a dead one) waits forever.
    """
    target = os.fspath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1 and _unescape(fields[1]) == target:
                return True
    return False
