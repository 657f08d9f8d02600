"""Fixtures for the failover tests: one real etcd for the package (each test uses a key of
its own), clusters of real mounts that are always stopped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.lease.etcd_server import EtcdCluster


@pytest.fixture(scope="package")
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def lease_key() -> str:
    return f"litefs-failover/{uuid.uuid4().hex[:10]}/primary"
