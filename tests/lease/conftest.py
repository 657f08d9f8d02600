"""Fixtures for the lease tests: a real etcd (one member for the package, or a member of
its own for a test that breaks it) and a key of its own per test. Every wait in these
tests is bounded (trio.fail_after, request timeouts, subprocess timeouts)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.lease.etcd_server import EtcdCluster


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
