"""`lease.type: etcd`: the lease is a key in etcd, attached to an etcd lease (TTL).

Spoken over etcd's v3 JSON gateway (the gRPC gateway every etcd ≥ 3.4 serves on its client
port) with httpx, which the project already uses on trio. etcd3gw talks the same gateway
but is synchronous (requests, so a worker thread per call and no trio cancellation of a
hung request), takes one host rather than a cluster's endpoints, and its `create` answers
only True/False where we need the holder's record and the create revision. The gateway is
small: six POSTs and a streaming watch, below.

Layout, for `key: K`:
- `K`: the holder's record (JSON, base/candidate_record), attached to the holder's etcd
  lease so that it disappears when the lease expires. Its create revision is the epoch:
  every new creation of `K` gets a higher store revision.
- `K.released`: written (without a lease) by a holder that releases, deleted by every
  acquisition. When `K` is absent and `K.released` is present, the last term ended by a
  planned release and the next candidate need not wait lock-delay.

Taking the lease: grant an etcd lease, then one transaction "if K's create revision is 0
(absent): put K with the lease and delete K.released, else read K". Keeping it: one
keep-alive per renewal, and a read of `K` to check that it still carries our lease and
epoch. Every request is tried on each endpoint in turn (the last one that answered first),
so the lease keeps working while a member of the cluster is down.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from .base import (
    Candidate,
    Holder,
    Lease,
    LeaseConfigError,
    LeaseEpochError,
    LeaseError,
    LeaseGrant,
    LeaseLostError,
    LeaseUnavailableError,
    candidate_record,
    encode_json,
    holder_from_record,
    lease_clock,
    same_term,
)

RELEASED_SUFFIX = ".released"
# gRPC status codes etcd puts in a gateway error: worth trying another member for these.
_UNAVAILABLE = 14
_DEADLINE_EXCEEDED = 4
_CANCELLED = 1
_NOT_FOUND = 5
_TRY_ELSEWHERE = frozenset({_UNAVAILABLE, _DEADLINE_EXCEEDED, _CANCELLED})


def normalize_etcd_endpoint(endpoint: str, key: str = "lease.etcd.endpoints") -> str:
    """`host:port` or `http(s)://host:port` → a base URL. No scheme means http://, as with
    etcdctl."""
    text = endpoint.strip()
    url = text if "://" in text else f"http://{text}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        parts = None
    if (not text or parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise LeaseConfigError(f"{key}: {endpoint!r} is not an etcd client URL; write "
                               f"host:port or http://host:port (e.g. 10.0.0.5:2379)")
    return url.rstrip("/")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


class EtcdRequestError(LeaseError):
    """etcd answered, with an error (`grpc_code` is the gRPC status code)."""

    def __init__(self, message: str, grpc_code: int) -> None:
        super().__init__(message)
        self.grpc_code = grpc_code


class EtcdGateway:
    """POSTs to the v3 JSON gateway of a cluster, failing over between its endpoints."""

    def __init__(self, endpoints: Sequence[str], *, request_timeout: float) -> None:
        if not endpoints:
            raise LeaseConfigError("lease.etcd.endpoints: at least one endpoint is needed, "
                                   "e.g. [http://10.0.0.5:2379]")
        self.endpoints = [normalize_etcd_endpoint(e) for e in endpoints]
        self.request_timeout = request_timeout
        self._preferred = 0
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(request_timeout))

    async def aclose(self) -> None:
        await self._client.aclose()

    def _order(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._preferred + i) % n for i in range(n)]

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """The decoded answer of the first endpoint that gives one. EtcdRequestError for an
        answer that is an error only etcd's logic can give (e.g. no such lease);
        LeaseUnavailableError, naming every endpoint's failure, when none answered."""
        failures = []
        for i in self._order():
            base = self.endpoints[i]
            try:
                resp = await self._client.post(base + path, json=body)
                data = resp.json()
            except httpx.TimeoutException:
                failures.append(f"{base}: no answer within {self.request_timeout:g}s")
                continue
            except httpx.HTTPError as exc:
                failures.append(f"{base}: {exc or type(exc).__name__}")
                continue
            except ValueError:
                failures.append(f"{base}: HTTP {resp.status_code}, not JSON: is this an etcd "
                                f"client URL (port 2379)?")
                continue
            if not isinstance(data, dict):
                failures.append(f"{base}: unexpected answer {str(data)[:80]}")
                continue
            if "error" in data or resp.status_code != 200:
                code = int(data.get("code", 0) or 0)
                message = str(data.get("message") or data.get("error") or
                              f"HTTP {resp.status_code}")
                if code in _TRY_ELSEWHERE or resp.status_code >= 500 or code == 0:
                    failures.append(f"{base}: {message}")
                    continue
                self._preferred = i
                raise EtcdRequestError(f"etcd at {base} refused {path}: {message}", code)
            self._preferred = i
            return data
        raise LeaseUnavailableError(f"no etcd endpoint answered {path}: " + "; ".join(failures))

    async def watch_key(self, key: bytes, start_revision: int,
                        send: trio.MemorySendChannel[dict[str, Any]]) -> None:
        """Stream the watch events of `key` from `start_revision` into `send` (one dict per
        event, as etcd gives them) until the stream ends; LeaseUnavailableError if no
        endpoint could open it. The `hasleader` metadata makes a member that loses its
        leader cancel the stream rather than fall silent."""
        body = {"create_request": {"key": _b64(key), "start_revision": str(start_revision)}}
        failures = []
        timeout = httpx.Timeout(self.request_timeout, read=None)
        for i in self._order():
            base = self.endpoints[i]
            try:
                async with self._client.stream(
                        "POST", base + "/v3/watch", json=body, timeout=timeout,
                        headers={"Grpc-Metadata-hasleader": "true"}) as resp:
                    if resp.status_code != 200:
                        failures.append(f"{base}: HTTP {resp.status_code}")
                        continue
                    async for line in resp.aiter_lines():
                        if not line.strip():
                            continue
                        result = json.loads(line).get("result") or {}
                        if result.get("canceled"):
                            return  # compacted, or the member lost its leader: re-read
                        for event in result.get("events") or []:
                            await send.send(event)
                    return
            except (httpx.HTTPError, ValueError) as exc:
                failures.append(f"{base}: {exc or type(exc).__name__}")
                continue
        raise LeaseUnavailableError("no etcd endpoint would watch: " + "; ".join(failures))


@dataclass(frozen=True, slots=True)
class _Observation:
    holder: Holder | None
    lease_id: int  # of the holder's key, 0 when absent
    released: bool  # K.released exists
    revision: int  # the store revision the read saw


class EtcdLease(Lease):
    pushes_changes = True

    def __init__(self, endpoints: Sequence[str], key: str, *, ttl: float, lock_delay: float,
                 request_timeout: float | None = None) -> None:
        if not key:
            raise LeaseConfigError("lease.etcd.key: must not be empty (e.g. litefs/primary)")
        # etcd TTLs are whole seconds: ask for the next whole second at least.
        self.ttl = float(math.ceil(ttl))
        self.lock_delay = lock_delay
        self.key = key.encode()
        self.marker_key = (key + RELEASED_SUFFIX).encode()
        if request_timeout is None:
            request_timeout = min(2.0, max(0.5, self.ttl / 4))
        self.gateway = EtcdGateway(endpoints, request_timeout=request_timeout)
        self.description = f"etcd key {key} at {', '.join(self.gateway.endpoints)}"
        # Candidates look at least twice per lock-delay, so that an absence they time is
        # one they kept seeing.
        self.poll_interval = min(1.0, self.ttl / 4, lock_delay / 2 if lock_delay > 0 else 1.0)
        self._grant: LeaseGrant | None = None
        self._lease_id = 0
        self._absent_since: float | None = None

    async def aclose(self) -> None:
        await self.gateway.aclose()

    # ---- reading ---------------------------------------------------------------------

    def _holder_of(self, kv: dict[str, Any]) -> Holder:
        try:
            raw = json.loads(_unb64(str(kv.get("value", ""))))
        except ValueError:
            raw = None
        return holder_from_record(raw, int(kv["create_revision"]),
                                  f"etcd key {self.key.decode()}")

    async def _observe(self) -> _Observation:
        data = await self.gateway.post("/v3/kv/txn", {"success": [
            {"request_range": {"key": _b64(self.key)}},
            {"request_range": {"key": _b64(self.marker_key)}},
        ]})
        responses = data.get("responses") or []
        kvs = [(r.get("response_range") or {}).get("kvs") or [] for r in responses]
        while len(kvs) < 2:
            kvs.append([])
        revision = int(data.get("header", {}).get("revision", 0))
        if kvs[0]:
            kv = kvs[0][0]
            return _Observation(self._holder_of(kv), int(kv.get("lease", 0) or 0),
                                bool(kvs[1]), revision)
        return _Observation(None, 0, bool(kvs[1]), revision)

    async def holder(self) -> Holder | None:
        return (await self._observe()).holder

    # ---- taking and keeping ----------------------------------------------------------

    def _ready_after_absence(self, released: bool) -> bool:
        """Whether the key, seen absent now, may be taken: at once after a release, else
        once this handle has seen it absent for lock-delay (every sighting of the key resets
        that). A term that began and ended between two looks is not noticed, but its
        holder's validity ended before its key expired, so lock-delay is a buffer on top of
        the margin, not the safety itself."""
        now = lease_clock()
        if self._absent_since is None:
            self._absent_since = now
        return released or now - self._absent_since >= self.lock_delay

    async def acquire(self, candidate: Candidate) -> LeaseGrant | None:
        if self._grant is not None:
            try:
                return await self.renew()
            except LeaseLostError:
                pass
        seen = await self._observe()
        if seen.holder is not None:
            self._absent_since = None
            return None
        if not self._ready_after_absence(seen.released):
            return None
        sent_at = lease_clock()
        granted = await self.gateway.post("/v3/lease/grant", {"TTL": str(int(self.ttl))})
        lease_id = int(granted["ID"])
        granted_ttl = float(granted.get("TTL", self.ttl))
        value = encode_json(candidate_record(candidate))
        try:
            data = await self.gateway.post("/v3/kv/txn", {
                "compare": [{"key": _b64(self.key), "target": "CREATE",
                             "create_revision": "0"}],
                "success": [
                    {"request_put": {"key": _b64(self.key), "value": _b64(value),
                                     "lease": str(lease_id)}},
                    {"request_delete_range": {"key": _b64(self.marker_key)}},
                ],
                "failure": [{"request_range": {"key": _b64(self.key)}}],
            })
        except BaseException:
            # Unknown whether the put happened: revoking the etcd lease deletes the key if
            # it did, so nobody waits a TTL for a term that never started.
            with trio.move_on_after(self.gateway.request_timeout, shield=True):
                await self._revoke(lease_id)
            raise
        if not data.get("succeeded"):
            await self._revoke(lease_id)
            self._absent_since = None
            return None
        epoch = int(data["header"]["revision"])
        holder = Holder(hostname=candidate.hostname, advertise_url=candidate.advertise_url,
                        node_id=candidate.node_id, epoch=epoch, positions=candidate.positions)
        self._lease_id = lease_id
        self._grant = self.grant_for(holder, sent_at, granted_ttl)
        self._absent_since = None
        if epoch <= candidate.known_epoch:
            await self.release()
            raise LeaseEpochError(
                f"etcd would make this node primary in epoch {epoch}, but epoch "
                f"{candidate.known_epoch} was seen already: was the etcd cluster behind "
                f"{self.description} wiped? Use a fresh key prefix only with a fresh bucket, "
                f"or restore etcd from its backup")
        return self._grant

    async def renew(self) -> LeaseGrant:
        grant = self._grant
        if grant is None:
            raise LeaseLostError("no etcd lease is held")
        sent_at = lease_clock()
        try:
            data = await self.gateway.post("/v3/lease/keepalive", {"ID": str(self._lease_id)})
        except EtcdRequestError as exc:
            self._forget()
            raise LeaseLostError(f"etcd refused to renew the lease: {exc}") from None
        ttl = float((data.get("result") or {}).get("TTL", 0) or 0)
        if ttl <= 0:
            self._forget()
            raise LeaseLostError(f"the etcd lease of epoch {grant.epoch} expired in etcd")
        seen = await self._observe()
        if seen.holder is None or seen.holder.epoch != grant.epoch \
                or seen.lease_id != self._lease_id:
            self._forget()
            now = ("deleted" if seen.holder is None else
                   f"held by {seen.holder.hostname} in epoch {seen.holder.epoch}")
            raise LeaseLostError(f"etcd key {self.key.decode()} of epoch {grant.epoch} was "
                                 f"{now}")
        self._grant = self.grant_for(grant.holder, sent_at, ttl)
        return self._grant

    def _forget(self) -> None:
        self._grant = None
        self._lease_id = 0

    async def _revoke(self, lease_id: int) -> None:
        try:
            await self.gateway.post("/v3/lease/revoke", {"ID": str(lease_id)})
        except EtcdRequestError as exc:
            if exc.grpc_code != _NOT_FOUND:
                raise

    async def release(self) -> None:
        grant, lease_id = self._grant, self._lease_id
        if grant is None:
            return
        self._forget()
        marker = encode_json({"epoch": grant.epoch, "node_id": grant.holder.node_id,
                              "hostname": grant.holder.hostname})
        try:
            await self.gateway.post("/v3/kv/txn", {
                "compare": [{"key": _b64(self.key), "target": "CREATE",
                             "create_revision": str(grant.epoch)}],
                "success": [
                    {"request_delete_range": {"key": _b64(self.key)}},
                    {"request_put": {"key": _b64(self.marker_key), "value": _b64(marker)}},
                ],
            })
        finally:
            # Also deletes the key if the transaction did not get through (then without the
            # marker: the next holder waits lock-delay).
            with trio.move_on_after(self.gateway.request_timeout, shield=True), \
                    contextlib.suppress(LeaseError):
                await self._revoke(lease_id)

    # ---- watching --------------------------------------------------------------------

    async def wait_for_change(self, known: Holder | None) -> Holder | None:
        """A watch stream on the key from the revision last read: wakes on the change
        itself, not on the next poll. A broken stream is reopened (on another member if
        need be) from the current state."""
        while True:
            seen = await self._observe()
            if not same_term(seen.holder, known):
                return seen.holder
            send, receive = trio.open_memory_channel[dict[str, Any]](16)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_into, seen.revision + 1, send)
                async with receive:
                    async for event in receive:
                        current = (None if event.get("type") == "DELETE" else
                                   self._holder_of(event.get("kv") or {}))
                        if not same_term(current, known):
                            nursery.cancel_scope.cancel()
                            return current
            await trio.sleep(min(0.2, self.poll_interval))  # the stream ended: re-read

    async def _watch_into(self, start_revision: int,
                          send: trio.MemorySendChannel[dict[str, Any]]) -> None:
        async with send:
            try:
                await self.gateway.watch_key(self.key, start_revision, send)
            except LeaseUnavailableError:
                await trio.sleep(self.poll_interval)

