"""The `lease:` section of litefs.yml, parsed into frozen settings, and the backend they make.

    lease:
      type: etcd                # static (default) | etcd | s3; consul is refused
      candidate: true           # may this node become primary
      advertise-url: http://node1:20202
      hostname: node1           # shown in .primary on replicas; default: the host name
      promote: false            # take the lease once caught up (else only on failover)
      demote-delay: 10s         # after losing the lease, wait this long before trying again
      reconnect-delay: 1s
      etcd:
        endpoints: [http://10.0.0.5:2379, http://10.0.0.6:2379, http://10.0.0.7:2379]
        key: litefs/primary
        ttl: 10s                # 2s at least
        lock-delay: 1s
      s3:                       # the lease object lives in the default replica's location
        key: litefs-lease.json
        ttl: 10s
        lock-delay: 1s
        max-clock-skew: 1s

`parse_lease_settings` takes the section as a plain mapping (what YAML gives) and the
configuration's duration parser, and raises LeaseConfigError naming the key and the fix.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from ...storage.base import ReplicaClient
from .base import MIN_TTL, Holder, Lease, LeaseConfigError, check_ttl
from .bucket import DEFAULT_KEY as S3_DEFAULT_KEY
from .bucket import BucketLease
from .etcd import EtcdLease, normalize_etcd_endpoint
from .static import STATIC_EPOCH, StaticLease

LeaseType = Literal["static", "etcd", "s3"]
DEFAULT_TTL = 10.0
DEFAULT_LOCK_DELAY = 1.0
DEFAULT_DEMOTE_DELAY = 10.0  # LiteFS's defaults
DEFAULT_RECONNECT_DELAY = 1.0
DEFAULT_MAX_CLOCK_SKEW = 1.0
ETCD_DEFAULT_KEY = "litefs/primary"

_CONSUL_REFUSED = ("Consul is not supported by litefs-py (there is no Consul server to test "
                   "it against); use lease.type etcd (lease.etcd.endpoints: your etcd "
                   "cluster) or lease.type s3 (a lease object in the replica bucket)")


@dataclass(frozen=True, slots=True)
class EtcdLeaseSettings:
    endpoints: tuple[str, ...]
    key: str = ETCD_DEFAULT_KEY
    ttl: float = DEFAULT_TTL
    lock_delay: float = DEFAULT_LOCK_DELAY


@dataclass(frozen=True, slots=True)
class S3LeaseSettings:
    key: str = S3_DEFAULT_KEY
    ttl: float = DEFAULT_TTL
    lock_delay: float = DEFAULT_LOCK_DELAY
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW

    @property
    def request_timeout(self) -> float:
        """Connect/read timeout for the lease's own S3 client (S3ReplicaClient's
        connect_timeout/read_timeout, with max_attempts=2): a renewal must fail well within
        the TTL so that it can be retried."""
        return min(5.0, max(0.5, self.ttl / 4))


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    type: LeaseType = "static"
    candidate: bool = True
    advertise_url: str | None = None
    hostname: str | None = None
    promote: bool = False
    demote_delay: float = DEFAULT_DEMOTE_DELAY
    reconnect_delay: float = DEFAULT_RECONNECT_DELAY
    etcd: EtcdLeaseSettings | None = None
    s3: S3LeaseSettings | None = None


_TOP_KEYS = ("type", "candidate", "advertise-url", "hostname", "promote", "demote-delay",
             "reconnect-delay", "etcd", "s3", "consul")
_ETCD_KEYS = ("endpoints", "key", "ttl", "lock-delay")
_S3_KEYS = ("key", "ttl", "lock-delay", "max-clock-skew")


class _Parser:
    def __init__(self, parse_duration: Callable[[Any], float]) -> None:
        self.parse_duration = parse_duration

    def mapping(self, value: Any, key: str, allowed: Sequence[str]) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise LeaseConfigError(f"{key}: expected a mapping, got {value!r}")
        for k in value:
            if k not in allowed:
                close = difflib.get_close_matches(str(k), allowed, n=1)
                hint = f"; did you mean {key}.{close[0]}?" if close else \
                    f"; known keys: {', '.join(allowed)}"
                raise LeaseConfigError(f"{key}.{k}: unknown key{hint}")
        return value

    def boolean(self, m: Mapping[str, Any], name: str, key: str, default: bool) -> bool:
        value = m.get(name, default)
        if not isinstance(value, bool):
            raise LeaseConfigError(f"{key}.{name}: expected true or false, got {value!r}")
        return value

    def string(self, m: Mapping[str, Any], name: str, key: str, default: str | None
               ) -> str | None:
        value = m.get(name, default)
        if value is None or value == "":
            return default
        if not isinstance(value, str):
            raise LeaseConfigError(f"{key}.{name}: expected a string, got {value!r}")
        return value

    def duration(self, m: Mapping[str, Any], name: str, key: str, default: float, *,
                 minimum: float = 0.0) -> float:
        if name not in m or m[name] is None:
            return default
        try:
            seconds = float(self.parse_duration(m[name]))
        except ValueError as exc:
            raise LeaseConfigError(f"{key}.{name}: invalid duration {m[name]!r}: {exc}") from None
        if not math.isfinite(seconds) or seconds < minimum:
            raise LeaseConfigError(f"{key}.{name}: must be at least {minimum:g}s, got "
                                   f"{m[name]!r}")
        return seconds


def parse_lease_settings(raw: Mapping[str, Any] | None, *,
                         parse_duration: Callable[[Any], float]) -> LeaseSettings:
    """The `lease:` mapping → LeaseSettings. `parse_duration` turns `10s`/`500ms`/a number
    into seconds (litefs_py.config.parse_duration), raising ValueError."""
    p = _Parser(parse_duration)
    top = p.mapping(raw, "lease", _TOP_KEYS)
    kind = p.string(top, "type", "lease", "static")
    if kind == "consul" or "consul" in top:
        raise LeaseConfigError(f"lease.{'type' if kind == 'consul' else 'consul'}: "
                               f"{_CONSUL_REFUSED}")
    if kind not in ("static", "etcd", "s3"):
        raise LeaseConfigError(f"lease.type: {kind!r} is not a lease type; use static, etcd "
                               f"or s3")
    for section in ("etcd", "s3"):
        if section in top and top[section] is not None and kind != section:
            raise LeaseConfigError(f"lease.{section} is set but lease.type is {kind}: set "
                                   f"lease.type: {section}, or remove lease.{section}")
    advertise_url = p.string(top, "advertise-url", "lease", None)
    if advertise_url is not None:
        parts = urlsplit(advertise_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LeaseConfigError(f"lease.advertise-url: {advertise_url!r} is not an http(s) "
                                   f"URL; write e.g. http://node1:20202")
        advertise_url = advertise_url.rstrip("/")
    candidate = p.boolean(top, "candidate", "lease", True)
    if kind != "static" and candidate and advertise_url is None:
        raise LeaseConfigError(f"lease.advertise-url: a candidate with lease.type {kind} "
                               f"must say where the other nodes reach it once it is primary "
                               f"(e.g. http://node1:20202)")
    settings = LeaseSettings(
        type=cast(LeaseType, kind),
        candidate=candidate,
        advertise_url=advertise_url,
        hostname=p.string(top, "hostname", "lease", None),
        promote=p.boolean(top, "promote", "lease", False),
        demote_delay=p.duration(top, "demote-delay", "lease", DEFAULT_DEMOTE_DELAY),
        reconnect_delay=p.duration(top, "reconnect-delay", "lease", DEFAULT_RECONNECT_DELAY),
    )
    if kind == "etcd":
        m = p.mapping(top.get("etcd"), "lease.etcd", _ETCD_KEYS)
        endpoints = m.get("endpoints")
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints or not isinstance(endpoints, list) \
                or not all(isinstance(e, str) for e in endpoints):
            raise LeaseConfigError("lease.etcd.endpoints: list the etcd cluster's client URLs, "
                                   "e.g. [http://10.0.0.5:2379, http://10.0.0.6:2379]")
        settings = replace(settings, etcd=EtcdLeaseSettings(
            endpoints=tuple(normalize_etcd_endpoint(e) for e in endpoints),
            key=p.string(m, "key", "lease.etcd", ETCD_DEFAULT_KEY) or ETCD_DEFAULT_KEY,
            ttl=check_ttl(p.duration(m, "ttl", "lease.etcd", DEFAULT_TTL), "lease.etcd.ttl"),
            lock_delay=p.duration(m, "lock-delay", "lease.etcd", DEFAULT_LOCK_DELAY),
        ))
    elif kind == "s3":
        m = p.mapping(top.get("s3"), "lease.s3", _S3_KEYS)
        key = p.string(m, "key", "lease.s3", S3_DEFAULT_KEY) or S3_DEFAULT_KEY
        if key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
            raise LeaseConfigError(f"lease.s3.key: {key!r} must be a relative object name "
                                   f"like {S3_DEFAULT_KEY}")
        settings = replace(settings, s3=S3LeaseSettings(
            key=key,
            ttl=check_ttl(p.duration(m, "ttl", "lease.s3", DEFAULT_TTL), "lease.s3.ttl"),
            lock_delay=p.duration(m, "lock-delay", "lease.s3", DEFAULT_LOCK_DELAY),
            max_clock_skew=p.duration(m, "max-clock-skew", "lease.s3",
                                      DEFAULT_MAX_CLOCK_SKEW),
        ))
    return settings


def open_lease(settings: LeaseSettings, *, bucket: ReplicaClient | None = None,
               hostname: str | None = None) -> Lease:
    """The backend `settings` describe. `bucket` is the client of the default replica's
    location (needed by `s3`; build it with `S3LeaseSettings.request_timeout`); `hostname`
    names the static primary when the settings do not."""
    if settings.type == "etcd":
        assert settings.etcd is not None
        e = settings.etcd
        return EtcdLease(e.endpoints, e.key, ttl=e.ttl, lock_delay=e.lock_delay)
    if settings.type == "s3":
        assert settings.s3 is not None
        if bucket is None:
            raise LeaseConfigError("lease.type s3 keeps the lease in the replica bucket, but "
                                   "no replica is configured: set replica.url (or use "
                                   "lease.type etcd)")
        s = settings.s3
        return BucketLease(bucket, s.key, ttl=s.ttl, lock_delay=s.lock_delay,
                           max_clock_skew=s.max_clock_skew)
    primary = None
    if not settings.candidate and settings.advertise_url is not None:
        primary = Holder(hostname=settings.hostname or hostname or
                         (urlsplit(settings.advertise_url).hostname or "?"),
                         advertise_url=settings.advertise_url, node_id="static",
                         epoch=STATIC_EPOCH)
    return StaticLease(is_primary=settings.candidate, primary=primary)


__all__ = ["MIN_TTL", "EtcdLeaseSettings", "LeaseSettings", "S3LeaseSettings", "open_lease",
           "parse_lease_settings"]
