"""`lease.type: s3`: the lease is one object in the replica bucket, for users who have a
bucket and nothing else.

The object (JSON, under a name Litestream ignores, `litefs-lease.json` by default):

    {"format": "litefs-lease/1", "generation": 7, "holder": {...candidate_record...},
     "renewed_at_ms": 1767225600123, "ttl_ms": 10000, "released": false, "write_id": "..."}

- Taken with `If-None-Match: *` when absent, or with `If-Match: <its ETag>` when released or
  stale; every taking writes `generation + 1` (and above the candidate's known epoch): the
  generation is the epoch.
- Renewed and released (`released: true`) with `If-Match` on the ETag the holder last
  wrote; a renewal that loses the condition means someone else took the lease.
- S3 has no TTLs, so expiry is decided by each candidate, and stale means either of:
  (a) this process has seen the same ETag for ttl + lock-delay on its own clock (needs no
      clock agreement between hosts: only their rates, covered by the margin), or
  (b) the object's `renewed_at_ms` is older than ttl + lock-delay + max-clock-skew on this
      host's wall clock (lets a cold-started cluster go without waiting a TTL; safe while
      the hosts' clocks agree within max-clock-skew).
- Every write carries a random `write_id`, so a writer whose answer was lost (a reset
  connection, then a retry refused by the condition its own first try had met) can tell that
  the object it now reads is its own write.

Works on any ReplicaClient with conditional writes: S3 (AWS, R2, MinIO, ...) and a
directory shared by the nodes of one host (the file client's flock). Before the first
acquisition the provider is probed: one that ignores the condition headers (and would let
two nodes win) is refused with a message.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from ...storage.base import ReplicaClient, TaggedObject
from ...storage.errors import ObjectNotFoundError, PreconditionFailedError, StorageError
from .base import (
    RECORD_FORMAT,
    Candidate,
    Holder,
    Lease,
    LeaseConfigError,
    LeaseError,
    LeaseGrant,
    LeaseLostError,
    LeaseUnavailableError,
    candidate_record,
    encode_json,
    holder_from_record,
    lease_clock,
)

T = TypeVar("T")
DEFAULT_KEY = "litefs-lease.json"
PROBE_SUFFIX = ".probe"
# Lease calls run in their own threads, abandoned (not waited for) when the keeper's
# deadline cancels them: a hung request must not hold the deadline up.
_LIMITER = trio.CapacityLimiter(4)


@dataclass(frozen=True, slots=True)
class LeaseObject:
    """The lease object as read: its ETag and what it says."""

    etag: str
    generation: int
    holder: Holder
    renewed_at_ms: int
    ttl: float
    released: bool
    write_id: str


class BucketLease(Lease):
    def __init__(self, client: ReplicaClient, key: str = DEFAULT_KEY, *, ttl: float,
                 lock_delay: float, max_clock_skew: float, probe: bool = True,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.key = key
        self.ttl = ttl
        self.lock_delay = lock_delay
        self.max_clock_skew = max_clock_skew
        self.poll_interval = min(1.0, ttl / 4)
        self.description = f"lease object {key} in {client.description}"
        self._probe_needed = probe
        self._wall_clock = wall_clock
        self._grant: LeaseGrant | None = None
        self._etag = ""
        self._seen_etag = ""
        self._seen_at = 0.0

    # ---- storage calls -----------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs),
                                                 abandon_on_cancel=True, limiter=_LIMITER)
        except (PreconditionFailedError, ObjectNotFoundError):
            raise
        except StorageError as exc:
            raise LeaseUnavailableError(f"{self.description}: {exc}") from None

    async def _read(self) -> LeaseObject | None:
        try:
            tagged: TaggedObject = await self._call(self.client.get_object_tagged, self.key)
        except ObjectNotFoundError:
            return None
        return self._parse(tagged)

    def _parse(self, tagged: TaggedObject) -> LeaseObject:
        where = self.description
        try:
            raw = json.loads(tagged.data)
            if not isinstance(raw, dict) or raw.get("format") != RECORD_FORMAT:
                raise ValueError(f"format is not {RECORD_FORMAT}")
            generation = int(raw["generation"])
            holder = holder_from_record(raw.get("holder"), generation, where)
            return LeaseObject(etag=tagged.etag, generation=generation, holder=holder,
                               renewed_at_ms=int(raw["renewed_at_ms"]),
                               ttl=int(raw["ttl_ms"]) / 1000, released=bool(raw["released"]),
                               write_id=str(raw.get("write_id", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise LeaseError(f"{where} is not a litefs lease object ({exc}): delete it or "
                             f"point lease.s3.key elsewhere") from None

    def _record(self, candidate: Candidate | Holder, generation: int, *, released: bool,
                write_id: str, renewed_at_ms: int) -> bytes:
        holder = candidate_record(Candidate(hostname=candidate.hostname,
                                            advertise_url=candidate.advertise_url,
                                            node_id=candidate.node_id,
                                            positions=candidate.positions))
        return encode_json({"format": RECORD_FORMAT, "generation": generation,
                            "holder": holder, "renewed_at_ms": renewed_at_ms,
                            "ttl_ms": round(self.ttl * 1000), "released": released,
                            "write_id": write_id})

    async def _write(self, data: bytes, *, etag: str | None) -> str:
        if etag is None:
            return await self._call(self.client.put_object_if, self.key, data,
                                    if_none_match=True)
        return await self._call(self.client.put_object_if, self.key, data, if_match=etag)

    async def check_conditional_writes(self) -> None:
        """Refuse (LeaseConfigError) a provider that ignores If-None-Match / If-Match: with
        one, every node would win every write. Done once, before the first acquisition;
        writes a probe object next to the lease object."""
        if not self._probe_needed:
            return
        key = self.key + PROBE_SUFFIX
        data = encode_json({"probe": os.urandom(8).hex()})
        ignored = []
        for attempt in ("If-None-Match", "If-None-Match", "If-Match"):
            try:
                if attempt == "If-None-Match":
                    await self._call(self.client.put_object_if, key, data, if_none_match=True)
                else:
                    await self._call(self.client.put_object_if, key, data,
                                     if_match='"00000000000000000000000000000000"')
            except (PreconditionFailedError, ObjectNotFoundError):
                continue
            ignored.append(attempt)
        # The first If-None-Match may succeed (no probe object yet); the second must not.
        if len(ignored) > 1 or "If-Match" in ignored:
            headers = " and ".join(sorted(set(ignored)))
            raise LeaseConfigError(
                f"{self.client.description} ignores conditional writes ({headers} had no "
                f"effect), so it cannot hold a lease safely: use lease.type etcd, "
                f"or a provider that supports them (AWS S3, Cloudflare R2, MinIO)")
        self._probe_needed = False

    # ---- expiry ------------------------------------------------------------------------

    def _is_stale(self, obj: LeaseObject) -> bool:
        """(a) or (b) of the module docstring. `_seen_at` is when this process first read
        this ETag, taken AFTER the read returned: the holder sent that write before then."""
        now = lease_clock()
        if obj.etag != self._seen_etag:
            self._seen_etag, self._seen_at = obj.etag, now
        unchanged_for = now - self._seen_at
        if unchanged_for >= obj.ttl + self.lock_delay:
            return True
        age = self._wall_clock() - obj.renewed_at_ms / 1000
        return age >= obj.ttl + self.lock_delay + self.max_clock_skew

    # ---- the interface -----------------------------------------------------------------

    async def holder(self) -> Holder | None:
        obj = await self._read()
        if obj is None or obj.released or self._is_stale(obj):
            return None
        return obj.holder

    async def acquire(self, candidate: Candidate) -> LeaseGrant | None:
        if self._grant is not None:
            try:
                return await self.renew()
            except LeaseLostError:
                pass
        await self.check_conditional_writes()
        obj = await self._read()
        floor = candidate.known_epoch
        if obj is None:
            return await self._take(candidate, floor + 1, etag=None)
        if obj.released or self._is_stale(obj):
            return await self._take(candidate, max(obj.generation, floor) + 1, etag=obj.etag)
        return None

    async def _take(self, candidate: Candidate, generation: int,
                    etag: str | None) -> LeaseGrant | None:
        write_id = os.urandom(8).hex()
        sent_at = lease_clock()
        data = self._record(candidate, generation, released=False, write_id=write_id,
                            renewed_at_ms=round(self._wall_clock() * 1000))
        try:
            new_etag = await self._write(data, etag=etag)
        except (PreconditionFailedError, ObjectNotFoundError):
            now = await self._read()
            if now is None or now.write_id != write_id:
                return None  # another candidate won
            new_etag = now.etag  # our write landed; its answer was lost
        holder = Holder(hostname=candidate.hostname, advertise_url=candidate.advertise_url,
                        node_id=candidate.node_id, epoch=generation,
                        positions=candidate.positions)
        self._etag = new_etag
        self._grant = self.grant_for(holder, sent_at, self.ttl)
        return self._grant

    async def renew(self) -> LeaseGrant:
        grant = self._grant
        if grant is None:
            raise LeaseLostError(f"no lease is held in {self.description}")
        for _attempt in range(2):
            sent_at = lease_clock()
            data = self._record(grant.holder, grant.epoch, released=False,
                                write_id=os.urandom(8).hex(),
                                renewed_at_ms=round(self._wall_clock() * 1000))
            try:
                self._etag = await self._write(data, etag=self._etag)
            except (PreconditionFailedError, ObjectNotFoundError):
                if not await self._adopt_own_write(grant):
                    break
                continue  # renew again from the ETag we adopted
            self._grant = self.grant_for(grant.holder, sent_at, self.ttl)
            return self._grant
        self._grant = None
        now = await self._read_or_none()
        why = ("deleted" if now is None else "released" if now.released else
               f"taken by {now.holder.hostname} in epoch {now.generation}")
        raise LeaseLostError(f"{self.description} (epoch {grant.epoch}) was {why}")

    async def _adopt_own_write(self, grant: LeaseGrant) -> bool:
        """After a lost condition: is the object still our term (one of our writes landed
        without our learning its ETag)? If so, take its ETag and say True."""
        now = await self._read_or_none()
        if (now is not None and now.generation == grant.epoch and not now.released
                and now.holder.node_id == grant.holder.node_id):
            self._etag = now.etag
            return True
        return False

    async def _read_or_none(self) -> LeaseObject | None:
        try:
            return await self._read()
        except LeaseError:
            return None

    async def release(self) -> None:
        grant = self._grant
        if grant is None:
            return
        self._grant = None
        for _attempt in range(2):
            data = self._record(grant.holder, grant.epoch, released=True,
                                write_id=os.urandom(8).hex(),
                                renewed_at_ms=round(self._wall_clock() * 1000))
            try:
                await self._write(data, etag=self._etag)
                return
            except (PreconditionFailedError, ObjectNotFoundError):
                if not await self._adopt_own_write(grant):
                    return  # not ours any more: nothing to release
