"""Fixtures for read-replica tests: a cluster of real mounts, always torn down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.replica.harness import Cluster
from tests.replica.workloads import Procs


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def procs() -> Iterator[Procs]:
    """SQLite client processes (tests/replica/workloads.py), all closed at the end."""
    p = Procs()
    try:
        yield p
    finally:
        p.close()
