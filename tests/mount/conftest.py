"""Fixtures that run a real `litefs mount` in a subprocess on a temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mount.harness import LitefsMount


@pytest.fixture
def litefs(tmp_path: Path) -> Iterator[LitefsMount]:
    """A started mount: `litefs.mount_dir` for databases, `litefs.data_dir` for backing data."""
    m = LitefsMount(tmp_path / "mnt", tmp_path / "data", tmp_path / "litefs.log")
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def litefs_factory(tmp_path: Path) -> Iterator[type[LitefsMount]]:
    """For tests that stop, kill and restart mounts themselves; all are torn down at the end."""
    created: list[LitefsMount] = []

    class Tracked(LitefsMount):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            created.append(self)

    yield Tracked
    for m in created:
        m.stop()
