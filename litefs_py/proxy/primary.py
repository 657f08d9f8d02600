"""Where the primary is, for the proxy: one small interface, so that the election work can
plug the lease holder in without touching the proxy.

`PrimarySource.current()` says who the primary is now (this node, another node's advertise
URL, or nobody during a failover); `wait_for_change()` returns when that changes. Two
implementations: `StaticPrimary` (today's `lease: {type: static}`: the configured candidate is
the primary, replicas know its `advertise-url`) and `LeasePrimary` (any `Lease` backend:
the holder, compared with this node's id).

The primary's *proxy* URL (where writes go) is learnt from the primary's replication API:
its `/litefs/v1/info` answer carries `proxy` when the primary runs one. `PrimaryResolver`
caches that per advertise URL; `proxy.primary-url` overrides it, and without either the
primary's host with this node's proxy port is assumed (the same config on every node).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import trio

from ..replication.lease.base import Holder, Lease, LeaseError
from ..replication.stream_protocol import INFO_PATH

log = logging.getLogger("litefs.proxy")

INFO_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Primary:
    """Who the primary is. `local`: this node. Otherwise its replication API's URL (the
    lease's advertise URL) and, when known, its hostname (for `fly-replay`)."""

    local: bool
    advertise_url: str | None = None
    hostname: str | None = None


class PrimarySource(ABC):
    """Who the primary is, for the proxy. Implement `current()` (called on every request that
    needs it: keep it cheap, no network), optionally `wait_for_change()` and `run()`."""

    @abstractmethod
    async def current(self) -> Primary | None:
        """The primary now; None when there is none (during a failover, or a replica given
        no primary to follow)."""

    async def wait_for_change(self, known: Primary | None) -> Primary | None:
        """Return the primary once it differs from `known`. Bound it with a trio timeout.
        The default polls `current()` every 100 ms."""
        while True:
            now = await self.current()
            if now != known:
                return now
            await trio.sleep(0.1)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """What the source needs running beside the proxy (start_proxy starts it before the
        proxy listens); returns at once by default."""
        task_status.started()


class StaticPrimary(PrimarySource):
    """`lease.type: static`: fixed for the life of the mount."""

    def __init__(self, *, is_primary: bool, advertise_url: str | None,
                 hostname: str | None = None) -> None:
        self._primary = (Primary(local=True, advertise_url=advertise_url, hostname=hostname)
                         if is_primary else
                         Primary(local=False, advertise_url=advertise_url, hostname=hostname)
                         if advertise_url else None)

    async def current(self) -> Primary | None:
        return self._primary

    async def wait_for_change(self, known: Primary | None) -> Primary | None:
        if known != self._primary:
            return self._primary
        await trio.sleep_forever()
        raise AssertionError("unreachable")


class LeasePrimary(PrimarySource):
    """Any lease backend: the holder is the primary; it is this node when its node id is
    ours (the hook for elections: the mount passes its Lease and node id).

    While `run()` follows the lease (`Lease.wait_for_change`: an etcd watch, a bucket poll),
    `current()` answers from what it last saw, so no request waits for the backend; when
    the backend cannot be reached, `current()` asks it directly until following works again."""

    RETRY = 1.0  # seconds between attempts to follow an unreachable backend

    def __init__(self, lease: Lease, node_id: str) -> None:
        self.lease = lease
        self.node_id = node_id
        self._holder: Holder | None = None
        self._following = False
        self._changed = trio.Event()

    def _primary(self, holder: Holder | None) -> Primary | None:
        if holder is None:
            return None
        return Primary(local=holder.node_id == self.node_id,
                       advertise_url=holder.advertise_url, hostname=holder.hostname)

    def _seen(self, holder: Holder | None) -> None:
        if holder != self._holder:
            self._holder = holder
            self._changed.set()
            self._changed = trio.Event()

    async def current(self) -> Primary | None:
        if not self._following:
            self._seen(await self.lease.holder())
        return self._primary(self._holder)

    async def wait_for_change(self, known: Primary | None) -> Primary | None:
        while True:
            primary = await self.current()
            if primary != known:
                return primary
            if self._following:
                await self._changed.wait()
            else:
                self._seen(await self.lease.wait_for_change(self._holder))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        started = False
        while True:
            try:
                self._seen(await self.lease.holder())
                self._following = True
                if not started:
                    task_status.started()
                    started = True
                while True:
                    self._seen(await self.lease.wait_for_change(self._holder))
            except LeaseError as exc:
                log.warning("proxy: cannot follow the lease (%s); asking it per request until "
                            "it answers again", exc)
            finally:
                self._following = False
            if not started:
                task_status.started()
                started = True
            await trio.sleep(self.RETRY)


@dataclass(frozen=True, slots=True)
class PrimaryRoute:
    """Where to send writes: the primary's proxy, and its hostname for `fly-replay`."""

    proxy_url: str
    hostname: str | None


class UpstreamUnreachable(Exception):
    """No connection to the application or the primary (nothing of the request was sent)."""


class PrimaryResolver:
    """The primary's proxy URL from its advertise URL (cached; forgotten on failure)."""

    def __init__(self, *, own_proxy_port: int, secret: str | None,
                 override: str | None = None) -> None:
        self.own_proxy_port = own_proxy_port
        self.secret = secret
        self.override = override
        self._cache: dict[str, PrimaryRoute] = {}

    def forget(self, advertise_url: str | None) -> None:
        if advertise_url is not None:
            self._cache.pop(advertise_url, None)

    async def route(self, primary: Primary, client: httpx.AsyncClient) -> PrimaryRoute:
        url = primary.advertise_url or ""
        cached = self._cache.get(url)
        if cached is not None:
            return cached
        proxy_url, hostname = self.override, primary.hostname
        info: dict[str, object] | None = None
        if url and self.override is None:
            info = await self._info(url, client)
        if info:
            told_proxy, told_host = info.get("proxy"), info.get("hostname")
            if proxy_url is None and isinstance(told_proxy, str):
                proxy_url = told_proxy
            if hostname is None and isinstance(told_host, str):
                hostname = told_host
        if url and info is None and proxy_url is None:
            # The primary does not answer: it is down (or moving). Guessing its proxy from
            # this node's port could even name this very proxy (nodes sharing a host).
            raise UpstreamUnreachable(f"its replication API at {url} does not answer")
        if proxy_url is None:
            host = urlsplit(url).hostname or "localhost"
            host = f"[{host}]" if ":" in host else host
            proxy_url = f"http://{host}:{self.own_proxy_port}"
            log.info("the primary at %s does not say where its proxy listens; assuming %s "
                     "(set proxy.primary-url if that is wrong)", url, proxy_url)
        route = PrimaryRoute(proxy_url.rstrip("/"), hostname)
        if url and (info is not None or self.override is not None):
            # (not learnt from an unreachable primary: ask again next time)
            self._cache[url] = route
        return route

    async def _info(self, advertise_url: str,
                    client: httpx.AsyncClient) -> dict[str, object] | None:
        """The primary's /info document ({} if it has none to give); None if unreachable."""
        headers = {"authorization": f"Bearer {self.secret}"} if self.secret else {}
        try:
            resp = await client.get(advertise_url.rstrip("/") + INFO_PATH, headers=headers,
                                    timeout=INFO_TIMEOUT)
            doc = resp.json() if resp.status_code == 200 else {}
        except httpx.TransportError as exc:
            log.debug("cannot ask %s where its proxy is: %r", advertise_url, exc)
            return None
        except (httpx.HTTPError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}
