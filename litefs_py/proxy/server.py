"""The HTTP proxy in front of the application on every node (LiteFS's `proxy:`), anywhere.

    client -> proxy (this node) -> application (proxy.target)          reads, and all on the primary
    client -> proxy (replica) -> proxy (primary) -> application         writes on a replica

- Reads (GET/HEAD, unless the path is in `always-forward`) go to the local application. A
  request with the `__txid` cookie first waits until this node's copy of `proxy.db` has
  applied that TXID (bounded by `txid-timeout`: 504), so a user reads their own writes.
- Writes (every other method, and `always-forward` paths) go to the local application on the
  primary, whose proxy then sets `__txid` to the primary's TXID after the application
  answered. On a replica they are forwarded to the primary's proxy, streamed both ways, with
  the original Host, `X-Forwarded-For` and a hop header (`litefs-forwarded`) so that a
  request is never forwarded twice. Without a primary (a failover) a write waits up to
  `primary-redirect-timeout`, then gets 503 with Retry-After.
- `passthrough` paths go straight to the local application; `/litefs/health` answers for
  the proxy itself; `max-lag` makes a replica that lags more answer reads (and the health
  check) with 503; `fly-replay: true` answers writes on a replica with Fly.io's header.

Served in the litefs process under trio by http1.py (httptools parsing) with upstream.py's
pooled HTTP/1.1 client; Hypercorn + httpcore (`LITEFS_PROXY_ENGINE=hypercorn`) serve the
same handler for bench/proxy.py's comparison. docs/proxy.md has the measurements behind
that choice, and the design.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket as pysocket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from ..errors import ExitCode, QuietError
from ..replication.asgi import Receive, Scope, Send, answer_lifespan
from ..store.store import Store
from .http1 import Http1Server
from .primary import (
    Primary,
    PrimaryResolver,
    PrimaryRoute,
    PrimarySource,
    UpstreamUnreachable,
)
from .settings import COOKIE_MAX_AGE, ProxySettings
from .upstream import (
    HttpcoreUpstream,
    HttptoolsUpstream,
    Upstream,
    UpstreamConnectError,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
)

log = logging.getLogger("litefs.proxy")


TXID_COOKIE = "__txid"
HOP_HEADER = b"litefs-forwarded"
HEALTH_PATH = "/litefs/health"
TXID_POLL = 0.001  # seconds between looks at the replica's TXID (LiteFS polls every 1 ms)
TARGET_CONNECT_RETRY = 10.0  # seconds a refused connection to the app is retried (it starts)
PRIMARY_CONNECT_RETRY = 0.25  # seconds a forward retries one primary before re-asking
# An idle upstream connection is dropped before the application's server would drop it
# (Hypercorn's keep-alive timeout is 5 s, and its timer may fire late on a busy host):
# reusing one it is closing fails the request.
KEEPALIVE_EXPIRY = 2.0
# Never passed on (RFC 9110 7.6.1); framing is set per side.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authenticate",
                        b"proxy-authorization", HOP_HEADER})
READ_METHODS = frozenset({"GET", "HEAD"})


class ClientGone(Exception):
    """The client went away while its request body was being read."""


def parse_txid_cookie(headers: list[tuple[bytes, bytes]]) -> int:
    """The `__txid` cookie's TXID (16 hex digits, as LiteFS writes it); 0 if absent or bad."""
    for name, value in headers:
        if name != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            key, sep, val = part.strip().partition("=")
            if sep and key == TXID_COOKIE:
                val = val.strip().strip('"')
                try:
                    return int(val, 16) if 0 < len(val) <= 16 else 0
                except ValueError:
                    return 0
    return 0


class ProxyServer:
    def __init__(self, settings: ProxySettings, store: Store, primary: PrimarySource, *,
                 lag: Callable[[], float] = lambda: 0.0, secret: str | None = None,
                 node_name: str = "litefs") -> None:
        self.settings = settings
        self.store = store
        self.primary = primary
        self.lag = lag
        self.node_name = node_name
        self.port: int | None = None
        port = settings.addr.rpartition(":")[2]
        self.resolver = PrimaryResolver(own_proxy_port=int(port), secret=secret,
                                        override=settings.primary_url)
        thost, _, tport = settings.target.rpartition(":")
        self._target = (thost.strip("[]"), int(tport))
        self.upstream: Upstream
        self._info_client: httpx.AsyncClient | None = None
        self._log = log.info if settings.debug else log.debug
        self.forwarded = 0  # writes sent to another node's proxy (status, tests)
        self._measure_heads = False  # http1.py bounds request heads itself; Hypercorn not

    # ---- serving -------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen on `proxy.addr` until cancelled (QuietError when it cannot)."""
        s = self.settings
        host, _, port = s.addr.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        # Bound here: a port in use is one clear error, not a traceback.
        family = pysocket.AF_INET6 if ":" in host else pysocket.AF_INET
        listener = pysocket.socket(family, pysocket.SOCK_STREAM)
        try:
            listener.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_REUSEADDR, 1)
            listener.bind((host, int(port)))
            listener.listen(2048)
        except OSError as exc:
            listener.close()
            raise QuietError(f"proxy.addr: cannot listen on {s.addr}: {exc.strerror or exc}; "
                             "choose another port", ExitCode.IO) from None
        self.port = int(port)
        self._info_client = httpx.AsyncClient(trust_env=False)
        engine = os.environ.get("LITEFS_PROXY_ENGINE", "httptools")
        try:
            if engine == "hypercorn":
                self._measure_heads = True
                self.upstream = HttpcoreUpstream(keepalive_expiry=KEEPALIVE_EXPIRY)
                await self._serve_hypercorn(listener, task_status)
            else:
                self.upstream = HttptoolsUpstream(keepalive_expiry=KEEPALIVE_EXPIRY)
                server = Http1Server(self.app, header_timeout=s.header_timeout_first,
                                     idle_timeout=s.idle_timeout or math.inf,
                                     read_timeout=s.read_timeout,
                                     max_header_size=s.max_header_size)
                await server.serve(listener, task_status=task_status)
        finally:
            with trio.CancelScope(shield=True):
                await self.upstream.aclose()
                await self._info_client.aclose()

    async def _serve_hypercorn(self, listener: pysocket.socket,
                               task_status: trio.TaskStatus[Any]) -> None:
        """The same proxy served by Hypercorn (for bench/proxy.py's comparison)."""
        from hypercorn.config import Config as HypercornConfig
        from hypercorn.trio import serve

        s = self.settings
        cfg = HypercornConfig()
        cfg.bind = [f"fd://{listener.detach()}"]  # Hypercorn's socket object owns it now
        cfg.accesslog = None
        cfg.errorlog = logging.getLogger("litefs.proxy.server")
        # One timer in Hypercorn: from the connection (or the end of the previous response)
        # to a complete request head.
        cfg.keep_alive_timeout = s.header_timeout or 1e9
        cfg.read_timeout = math.ceil(s.read_timeout) if s.read_timeout else None
        cfg.h11_max_incomplete_size = s.max_header_size
        cfg.include_server_header = False
        cfg.include_date_header = False
        cfg.backlog = 2048
        cfg.graceful_timeout = 0.5

        await serve(self.app, cfg, task_status=task_status)  # type: ignore[arg-type]

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await answer_lifespan(receive, send)
            return
        if kind == "websocket":
            # Not proxied (LiteFS's proxy does not either): a close before accept is a 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        if kind != "http":
            return
        if self.settings.write_timeout:
            with trio.move_on_after(self.settings.write_timeout):
                await self.handle(scope, receive, send)
        else:
            await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        s = self.settings
        if self._measure_heads:
            # h11 bounds only a head that arrives in pieces; one that arrives whole is
            # measured here (name, value, ": " and CRLF per field, plus the request line).
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            for name, value in scope["headers"]:
                size += len(name) + len(value) + 4
            if size > s.max_header_size:
                await self.error(send, 431, f"request header fields too large ({size} "
                                            f"bytes; at most {s.max_header_size})")
                return
        if s.is_passthrough(path):
            self._log("proxy: %s %s: passthrough", method, path)
            await self.relay(scope, receive, send, route=None, set_cookie=False)
            return
        if path == HEALTH_PATH and method in READ_METHODS:
            await self.health(send)
            return
        if method in READ_METHODS and not s.is_always_forward(path):
            await self.serve_read(scope, receive, send)
        else:
            await self.serve_write(scope, receive, send)

    # ---- reads ---------------------------------------------------------------------------

    async def serve_read(self, scope: Scope, receive: Receive, send: Send) -> None:
        primary = await self.primary.current()
        if primary is None or not primary.local:
            lag = self.lag()
            if self.settings.max_lag and lag > self.settings.max_lag:
                await self.error(send, 503, f"this replica lags {lag:.1f}s behind the primary,"
                                            f" more than proxy.max-lag "
                                            f"({self.settings.max_lag:g}s)",
                                 retry_after=1)
                return
            want = parse_txid_cookie(scope["headers"])
            if want and not await self.wait_for_txid(want):
                have = self.txid()
                await self.error(send, 504, f"this replica has not caught up with your last "
                                            f"write within {self.settings.txid_timeout:g}s (it "
                                            f"is at TXID {have:016x}, your write is "
                                            f"{want:016x}); try again")
                return
        await self.relay(scope, receive, send, route=None, set_cookie=False)

    def txid(self) -> int:
        db = self.store.dbs.get(self.settings.db)
        return db.txid if db is not None else 0

    async def wait_for_txid(self, want: int) -> bool:
        """Whether this node's copy of proxy.db reached `want` within txid-timeout."""
        if self.txid() >= want:
            return True
        with trio.move_on_after(self.settings.txid_timeout):
            # Polled: the replica applies in a worker thread and announces nothing.
            while self.txid() < want:  # noqa: ASYNC110
                await trio.sleep(TXID_POLL)
            return True
        return False

    # ---- writes --------------------------------------------------------------------------

    async def serve_write(self, scope: Scope, receive: Receive, send: Send) -> None:
        s = self.settings
        forwarded = any(name == HOP_HEADER for name, _ in scope["headers"])
        deadline = trio.current_time() + s.primary_redirect_timeout
        primary = await self.primary.current()
        while True:
            if primary is not None and primary.local:
                await self.relay(scope, receive, send, route=None, set_cookie=True)
                return
            if forwarded:
                # Another node's proxy sent this here as the primary, and it is not (any
                # more): never forward twice. The client may retry at once.
                await self.error(send, 503, "this node is not the primary (the primary "
                                            "changed while the request was forwarded); retry",
                                 retry_after=1)
                return
            if primary is not None:
                try:
                    assert self._info_client is not None
                    route = await self.resolver.route(primary, self._info_client)
                    if s.fly_replay:
                        await self.fly_replay(send, route, primary)
                        return
                    self._log("proxy: %s %s: forwarding to the primary at %s",
                              scope["method"], scope["path"], route.proxy_url)
                    self.forwarded += 1
                    await self.relay(scope, receive, send, route=route, set_cookie=False,
                                     deadline=deadline)
                    return
                except UpstreamUnreachable as exc:
                    self.resolver.forget(primary.advertise_url)
                    why = f"the primary at {primary.advertise_url} is unreachable ({exc})"
            else:
                why = "no primary is known (a failover, or no primary configured)"
            if trio.current_time() >= deadline:
                self._log("proxy: %s %s: %s", scope["method"], scope["path"], why)
                await self.error(send, 503, f"cannot forward this write: {why}; waited "
                                            f"proxy.primary-redirect-timeout "
                                            f"({s.primary_redirect_timeout:g}s)",
                                 retry_after=max(1, math.ceil(s.primary_redirect_timeout)))
                return
            with trio.move_on_at(min(deadline, trio.current_time() + 0.25)):
                primary = await self.primary.wait_for_change(primary)
                continue
            primary = await self.primary.current()

    async def fly_replay(self, send: Send, route: PrimaryRoute, primary: Primary) -> None:
        if not route.hostname:
            await self.error(send, 503, f"fly-replay: the primary at {primary.advertise_url} "
                                        "did not say its hostname (set lease.hostname on it)",
                             retry_after=1)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"fly-replay", f"instance={route.hostname}".encode()),
                                (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    # ---- relaying ------------------------------------------------------------------------

    def upstream_headers(self, scope: Scope, route: PrimaryRoute | None
                         ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """Headers for the upstream request, and whether the request has a body."""
        out: list[tuple[bytes, bytes]] = []
        drop = HOP_BY_HOP
        has_body = False
        chunked = False
        xff: bytes | None = None
        proto = host = False
        for name, value in scope["headers"]:
            if name == b"connection":
                extra = {t.strip().lower().encode() for t in value.decode("latin-1").split(",")}
                drop = drop | extra
        for name, value in scope["headers"]:
            if name == b"transfer-encoding":
                chunked = True
            if name in drop:
                continue
            if name == b"content-length":
                has_body = value.strip() not in (b"0", b"")
            elif name == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
                continue
            elif name == b"x-forwarded-proto":
                proto = True
            elif name == b"host":
                host = True
            out.append((name, value))
        client = scope.get("client")
        peer = client[0].encode() if client else b"unknown"
        out.append((b"x-forwarded-for", peer if xff is None else xff + b", " + peer))
        if not proto:
            out.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
        if not host:
            out.append((b"host", self.settings.target.encode()))
        if chunked:
            out.append((b"transfer-encoding", b"chunked"))
            has_body = True
        if route is not None:
            out.append((HOP_HEADER, self.node_name.encode()))
        return out, has_body

    async def relay(self, scope: Scope, receive: Receive, send: Send, *,
                    route: PrimaryRoute | None, set_cookie: bool,
                    deadline: float | None = None) -> None:
        """Send the request to the application (route None) or the primary's proxy and
        stream the answer back. Raises UpstreamUnreachable when forwarding to the primary
        fails before any of the request was sent (the caller may try another primary)."""
        headers, has_body = self.upstream_headers(scope, route)
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        if route is None:
            host, port = self._target
        else:
            parts = urlsplit(route.proxy_url)
            host, port = parts.hostname or "localhost", parts.port or 80
        chunked = any(name == b"transfer-encoding" for name, _ in headers)

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        request = UpstreamRequest(host, port, scope["method"], target, headers,
                                  body() if has_body else None, chunked)
        # Forwarding: a short retry only, then back to serve_write, which asks again who the
        # primary is (after a failover, retrying the dead one until the deadline would hold
        # every write for the whole primary-redirect-timeout).
        retry_until = (min(deadline, trio.current_time() + PRIMARY_CONNECT_RETRY)
                       if route is not None and deadline is not None
                       else trio.current_time() + TARGET_CONNECT_RETRY if route is None
                       else None)
        where = (f"the primary at {route.proxy_url}" if route is not None
                 else f"the application at {self.settings.target}")
        while True:
            try:
                response = await self.upstream.request(request)
                break
            except ClientGone:
                return
            except UpstreamConnectError as exc:
                # Nothing was sent: try again while the app starts or the primary returns.
                if trio.current_time() < (retry_until or 0):
                    await trio.sleep(0.1)
                    continue
                if route is not None:
                    raise UpstreamUnreachable(str(exc)) from None
                await self.error(send, 502, f"proxy error: {where} is not answering ({exc})")
                return
            except UpstreamError as exc:
                if isinstance(exc.__context__, ClientGone):
                    return
                await self.error(send, 502, f"proxy error: {where} failed: {exc}")
                return
        try:
            await self.respond(receive, send, response, set_cookie)
        finally:
            release = getattr(response, "release", None)
            if release is not None:
                release()  # no await: nothing for a cancellation to interrupt
            else:
                with trio.CancelScope(shield=True):
                    await response.aclose()

    async def respond(self, receive: Receive, send: Send, response: UpstreamResponse,
                      set_cookie: bool) -> None:
        headers: list[tuple[bytes, bytes]] = []
        sized = False
        for name, value in response.headers:
            if name in HOP_BY_HOP:
                continue
            if name == b"content-length":
                sized = True
            headers.append((name, value))
        if set_cookie:
            # After the application answered: its transaction is in the primary's store.
            txid = self.txid()
            if txid:
                headers.append((b"set-cookie", f"{TXID_COOKIE}={txid:016x}; Path=/; "
                                               f"Max-Age={COOKIE_MAX_AGE}; HttpOnly; "
                                               "SameSite=Lax".encode()))
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        if sized:
            # A bounded body: read it to the end even if the client left.
            await self._pump(response, send)
            return
        # Streamed (chunked, SSE): the head goes out now, each piece as it comes, and the
        # stream stops when the client goes away, not only when the app ends it.
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await self._pump(response, send)
            nursery.cancel_scope.cancel()

    async def _pump(self, response: UpstreamResponse, send: Send) -> None:
        try:
            async for chunk in response.aiter_body():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk,
                                "more_body": True})
        except UpstreamError as exc:
            # The head went out already: all that is left is to cut the response short.
            log.warning("proxy: the upstream response broke off: %s", exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # ---- answers of the proxy's own --------------------------------------------------------

    async def health(self, send: Send) -> None:
        primary = await self.primary.current()
        role = "primary" if primary is not None and primary.local else "replica"
        lag = 0.0 if role == "primary" else self.lag()
        ready = role == "primary" or not self.settings.max_lag or lag <= self.settings.max_lag
        doc: dict[str, object] = {
            "role": role, "ready": ready, "lag_seconds": round(lag, 3),
            "max_lag_seconds": self.settings.max_lag, "db": self.settings.db,
            "txid": f"{self.txid():016x}",
            "primary": None if primary is None else
            ("self" if primary.local else primary.advertise_url),
            "time": time.time(),
        }
        body = json.dumps(doc).encode() + b"\n"
        await send({"type": "http.response.start", "status": 200 if ready else 503,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})

    async def error(self, send: Send, status: int, message: str,
                    retry_after: int | None = None) -> None:
        body = f"{message}\n".encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"),
                   (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store")]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except Exception as exc:  # the response had started: nothing more can be said
            log.debug("proxy: could not send %d: %r", status, exc)
