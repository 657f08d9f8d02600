"""The `lease:` section: LiteFS-shaped keys parsed into frozen settings, every mistake named
with its key and fix, Consul refused naming etcd and s3, and the backend each type makes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from litefs_py.config import parse_duration
from litefs_py.replication.lease import (
    BucketLease,
    EtcdLease,
    LeaseConfigError,
    LeaseSettings,
    StaticLease,
    open_lease,
    parse_lease_settings,
)
from litefs_py.storage.file import FileReplicaClient


def parse(text: str) -> LeaseSettings:
    raw: dict[str, Any] = yaml.safe_load(text)
    return parse_lease_settings(raw.get("lease"), parse_duration=parse_duration)


def test_defaults_are_todays_static_lease() -> None:
    s = parse_lease_settings(None, parse_duration=parse_duration)
    assert s == LeaseSettings(type="static", candidate=True, promote=False, demote_delay=10.0,
                              reconnect_delay=1.0)
    assert isinstance(open_lease(s), StaticLease)


def test_etcd_section() -> None:
    s = parse("""
lease:
  type: etcd
  advertise-url: http://node1:20202/
  hostname: node1
  promote: true
  demote-delay: 5s
  etcd:
    endpoints: [10.0.0.5:2379, "https://etcd.example.com:2379"]
    key: myapp/primary
    ttl: 2s
    lock-delay: 500ms
""")
    assert s.type == "etcd" and s.promote and s.demote_delay == 5.0
    assert s.advertise_url == "http://node1:20202" and s.hostname == "node1"
    assert s.etcd is not None
    assert s.etcd.endpoints == ("http://10.0.0.5:2379", "https://etcd.example.com:2379")
    assert (s.etcd.key, s.etcd.ttl, s.etcd.lock_delay) == ("myapp/primary", 2.0, 0.5)
    lease = open_lease(s)
    assert isinstance(lease, EtcdLease) and lease.ttl == 2.0


def test_etcd_endpoints_as_one_string_and_defaults() -> None:
    s = parse("""
lease:
  type: etcd
  advertise-url: http://node1:20202
  etcd: {endpoints: "a:2379,b:2379"}
""")
    assert s.etcd is not None and s.etcd.endpoints == ("http://a:2379", "http://b:2379")
    assert (s.etcd.key, s.etcd.ttl, s.etcd.lock_delay) == ("litefs/primary", 10.0, 1.0)


def test_s3_section_and_backend(tmp_path: Path) -> None:
    s = parse("""
lease:
  type: s3
  advertise-url: http://node1:20202
  s3: {ttl: 3s, max-clock-skew: 250ms}
""")
    assert s.s3 is not None
    assert (s.s3.key, s.s3.ttl, s.s3.lock_delay, s.s3.max_clock_skew) == (
        "litefs-lease.json", 3.0, 1.0, 0.25)
    assert s.s3.request_timeout == 0.75
    lease = open_lease(s, bucket=FileReplicaClient(tmp_path))
    assert isinstance(lease, BucketLease) and lease.key == "litefs-lease.json"
    with pytest.raises(LeaseConfigError, match="no replica is configured"):
        open_lease(s)


@pytest.mark.parametrize(("text", "message"), [
    ("lease: {type: consul}", r"lease\.type: Consul is not supported.*etcd.*s3"),
    ("lease: {type: static, consul: {url: x}}", r"lease\.consul: Consul is not supported"),
    ("lease: {type: zookeeper}", r"lease\.type: 'zookeeper' is not a lease type"),
    ("lease: {type: etcd, advertise-url: 'http://a:1', etcd: {endpoints: [x:1], ttl: 1s}}",
     r"lease\.etcd\.ttl: 1s is too short; use 2s or more"),
    ("lease: {type: s3, advertise-url: 'http://a:1', s3: {ttl: 1500ms}}",
     r"lease\.s3\.ttl: 1\.5s is too short"),
    ("lease: {type: etcd, advertise-url: 'http://a:1', etcd: {endpoints: [x:1], tll: 5s}}",
     r"lease\.etcd\.tll: unknown key; did you mean lease\.etcd\.ttl\?"),
    ("lease: {type: etcd, advertise-url: 'http://a:1'}", r"lease\.etcd\.endpoints: list"),
    ("lease: {type: etcd, advertise-url: 'http://a:1', etcd: {endpoints: ['ftp://x:1']}}",
     r"lease\.etcd\.endpoints: 'ftp://x:1' is not an etcd client URL"),
    ("lease: {type: etcd, etcd: {endpoints: [x:1]}}",
     r"lease\.advertise-url: a candidate with lease\.type etcd must say"),
    ("lease: {type: static, etcd: {endpoints: [x:1]}}",
     r"lease\.etcd is set but lease\.type is static: set lease\.type: etcd"),
    ("lease: {candidate: yes-please}", r"lease\.candidate: expected true or false"),
    ("lease: {advertise-url: 'node1:20202'}", r"lease\.advertise-url: 'node1:20202' is not"),
    ("lease: {demote-delay: soon}", r"lease\.demote-delay: invalid duration 'soon'"),
    ("lease: {type: s3, advertise-url: 'http://a:1', s3: {key: ../lease}}",
     r"lease\.s3\.key: '\.\./lease' must be a relative object name"),
    ("lease: {type: s3, advertise-url: 'http://a:1', s3: {lock-delay: -1s}}",
     r"lease\.s3\.lock-delay"),
    ("lease: {typo: etcd}", r"lease\.typo: unknown key; did you mean lease\.type\?"),
])
def test_mistakes_are_named(text: str, message: str) -> None:
    with pytest.raises(LeaseConfigError, match=message) as info:
        parse(text)
    assert info.value.code == 3  # ExitCode.CONFIG


def test_a_replica_of_a_static_primary_knows_where_it_is() -> None:
    s = parse("lease: {candidate: false, advertise-url: 'http://primary:20202'}")
    lease = open_lease(s)
    assert isinstance(lease, StaticLease)
    holder = trio.run(lease.holder)
    assert holder is not None and holder.advertise_url == "http://primary:20202"
    assert holder.hostname == "primary" and holder.epoch == 1
