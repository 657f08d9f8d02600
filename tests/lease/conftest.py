"""Fixtures for the lease tests: a real etcd (one member for the package, or a fresh
cluster per test that breaks it), a key of its own per test, and a hard time limit."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from types import FrameType

import pytest

from tests.lease.etcd_server import EtcdCluster

TIME_LIMIT = 90  # seconds per test


@pytest.fixture(autouse=True)
def time_limit(request: pytest.FixtureRequest) -> Iterator[None]:
    def expired(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError(f"{request.node.nodeid} ran longer than {TIME_LIMIT}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TIME_LIMIT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="package")
def etcd() -> Iterator[EtcdCluster]:
    """One etcd member shared by the tests that do not break it."""
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def own_etcd() -> Iterator[EtcdCluster]:
    """A member of the test's own, to kill or freeze."""
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def etcd_key() -> str:
    return f"litefs-test/{uuid.uuid4().hex[:12]}/primary"
