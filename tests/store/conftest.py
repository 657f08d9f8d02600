"""A store on a temporary data directory, and real SQLite driving it through its verbs."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from litefs_py.store.store import Store

if importlib.util.find_spec("apsw") is None:  # pragma: no cover - set-up installs it
    raise RuntimeError("tests/store needs apsw (a dev dependency): run scripts/setup.sh, or "
                       "pip install apsw")

from tests.store.sqlite_vfs import StoreVFS


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def vfs(store: Store) -> Iterator[StoreVFS]:
    v = StoreVFS(store)
    try:
        yield v
    finally:
        v.unregister()
