"""The write-forwarding HTTP proxy (LiteFS's `proxy:`) and `litefs run`'s remote side.

`start_proxy` is what the mount calls (app.py `_start_proxy`, from litefs.yml's `proxy:`): it
is given the primary source (today `StaticPrimary`; with elections `LeasePrimary(lease,
node_id)`, or any `PrimarySource`), tells the replication API where this proxy listens
(`announce_proxy`), and serves until the mount stops.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import trio

from ..errors import QuietError
from ..replication.stream_server import StreamServer
from ..store.store import Store
from .primary import LeasePrimary, Primary, PrimarySource, StaticPrimary
from .server import ProxyServer
from .settings import ProxySettings

log = logging.getLogger("litefs.proxy")

__all__ = ["LeasePrimary", "Primary", "PrimarySource", "ProxyServer", "ProxySettings",
           "StaticPrimary", "advertised_proxy_url", "announce_proxy", "start_proxy"]


def advertised_proxy_url(settings: ProxySettings, advertise_url: str | None) -> str:
    """Where other nodes reach this proxy: the host it binds to if that is a real address,
    else the host of this node's advertise URL (else its hostname), with the proxy's port."""
    bound, _, port = settings.addr.rpartition(":")
    host = bound.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = (urlsplit(advertise_url).hostname if advertise_url else None) or \
            socket.gethostname()
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def announce_proxy(stream_server: StreamServer, settings: ProxySettings, *,
                   advertise_url: str | None, hostname: str | None) -> None:
    """Make the primary's replication API say where its proxy is (`/litefs/v1/info`:
    `proxy`, `hostname`), which is how replicas' proxies find it. Call it for every
    StreamServer this node starts as primary (at start, and after a promotion)."""
    stream_server.info_fields["proxy"] = advertised_proxy_url(settings, advertise_url)
    stream_server.info_fields["hostname"] = hostname or socket.gethostname()


async def start_proxy(nursery: trio.Nursery, settings: ProxySettings, store: Store, *,
                      primary: PrimarySource, lag: Callable[[], float],
                      secret: str | None, advertise_url: str | None, hostname: str | None,
                      stream_server: StreamServer | None) -> ProxyServer | None:
    """Start the proxy in `nursery`; returns once it listens. On a node that serves the
    replication API (the primary), /info then says where this proxy is. None (logged) when
    it cannot listen."""
    server = ProxyServer(settings, store, primary, lag=lag, secret=secret,
                         node_name=hostname or socket.gethostname())
    if stream_server is not None:
        announce_proxy(stream_server, settings, advertise_url=advertise_url, hostname=hostname)
    await nursery.start(primary.run)  # e.g. LeasePrimary follows the lease from here on
    try:
        await nursery.start(server.serve)
    except QuietError as exc:
        # As with the replication API: the mount keeps serving its applications.
        log.error("%s; the HTTP proxy is not running", exc)
        return None
    return server
