"""The primary's replication API: streams LTX files to replicas over HTTP (hypercorn on trio).

Each subscriber gets what it lacks per database, in TXID order, straight from the local LTX
log; a snapshot of the database instead when it is new, when the files it needs are no
longer in the local log, when it is ahead of the primary or when its checksum shows it
diverged (the frame says which). Then every new transaction as it commits, and a heartbeat
every second of silence. The wire format is in stream_protocol.py.

Authentication: `Authorization: Bearer <secret>`, compared in constant time (`_authorized`,
the one check), and/or a client certificate when TLS asks for one (http_tls.py). Without
either the server binds to loopback only. With `http.tls` it serves HTTPS (http_tls.py builds
the context; `serve` hands it to hypercorn).

With an etcd or s3 lease (docs/leases.md) every node runs this server: `serving()` says
whether this node is the primary now (a replica answers the stream with 503 and where the
primary is), `epoch()` is stamped on every frame (replicas refuse a stream from an older
term), the hello carries each database's epoch history and the peers connected, and
`routes` adds the cluster's own endpoints (acknowledgements, handoff).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket as pysocket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..ltx import TRAILER_SIZE, Header, Trailer
from ..store.db import DB
from ..store.snapshot import take_snapshot
from ..store.store import Store
from ..types import ZERO_POS, Pos
from .asgi import Receive, Scope, Send, answer_lifespan
from .stream_protocol import (
    CONTENT_TYPE,
    INFO_PATH,
    MAX_REQUEST,
    PROTOCOL_VERSION,
    STREAM_PATH,
    ProtocolError,
    encode_frame,
    format_positions,
    parse_positions,
)

log = logging.getLogger("litefs.http")

HEARTBEAT_INTERVAL = 1.0
# Hostile or broken clients (#14): each is bounded so it costs one connection, never a stall
# of other streams.
REQUEST_TIMEOUT = 10.0  # a stream request's body must arrive within this (else 408)
IDLE_TIMEOUT = 10.0  # a connection with no request under way (incl. unfinished headers)
TLS_HANDSHAKE_TIMEOUT = 10.0
MAX_HEADERS = 16 * 1024  # bytes of request line + headers; more gets the connection closed
SEND_TIMEOUT = 30.0  # a subscriber that accepts no bytes for this long is cut off
REFUSAL_LOG_INTERVAL = 60.0  # at most one "refused" line per client address per this long

Route = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Another endpoint on this server (e.g. /metrics): called with whether the request carried
#: the secret, it decides itself whether it needs it.
Endpoint = Callable[[Scope, Send, bool], Awaitable[None]]


class ChangeFeed:
    """Wakes every subscriber when any database commits (or appears)."""

    def __init__(self) -> None:
        self.version = 0
        self._event = trio.Event()

    def notify(self, *_args: object) -> None:
        self.version += 1
        self._event.set()
        self._event = trio.Event()

    async def wait_past(self, version: int) -> None:
        if self.version == version:
            await self._event.wait()


def bind_address(addr: str, secret: str | None, client_certs: bool = False) -> tuple[str, bool]:
    """(host:port to bind, whether it is loopback-only because nothing authenticates
    clients: no secret and no required client certificate)."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if secret or client_certs:
        return f"{host or '0.0.0.0'}:{port}", False
    try:
        if host and ipaddress.ip_address(host).is_loopback:
            return f"{host}:{port}", True
    except ValueError:
        pass
    return f"127.0.0.1:{port}", True


class StreamServer:
    def __init__(self, store: Store, *, secret: str | None, advertise_url: str | None = None,
                 heartbeat: float = HEARTBEAT_INTERVAL,
                 tls: ssl.SSLContext | None = None) -> None:
        self.store = store
        self.secret = secret
        # The secret as a digest: compared with the digest of what a client sends, so the
        # comparison takes the same time whatever the length of either.
        self._secret_digest = _digest(b"Bearer " + secret.encode()) if secret else None
        self.tls = tls
        self.advertise_url = advertise_url
        self.heartbeat = heartbeat
        self.feed = ChangeFeed()
        self.subscribers = 0
        self.port: int | None = None
        # Fixed fields of the /info answer, set by the layers above (e.g. where this node's
        # HTTP proxy listens, so that replicas' proxies can forward writes to it).
        self.info_fields: dict[str, object] = {}
        # Set by the cluster (app layer) with an etcd or s3 lease; the defaults are a static
        # primary's: always serving, epoch 0, nothing more in the hello.
        self.serving: Callable[[], str | None] = lambda: None  # why not serving, or None
        self.epoch: Callable[[], int] = lambda: 0
        self.hello_extra: Callable[[], dict[str, Any]] = dict
        self.info_extra: Callable[[], dict[str, Any]] = dict
        self.routes: dict[tuple[str, str], Route] = {}
        self.identities: dict[str, dict[str, Any]] = {}  # subscriber -> what it said it is
        self._streams: set[trio.CancelScope] = set()
        self._refusals: dict[str, tuple[float, int]] = {}  # address -> (last logged, since)
        self.endpoints: dict[str, Endpoint] = {}  # path -> endpoint, added by app.py
        for db in store.dbs.values():
            self._watch(db)
        store.add_db_listener(self._watch)

    def _watch(self, db: DB) -> None:
        db.add_commit_listener(self.feed.notify)
        self.feed.notify()

    def positions(self) -> dict[str, Pos]:
        return {name: db.pos for name, db in self.store.dbs.items() if db.txid}

    # ---- serving -------------------------------------------------------------------------

    async def serve(self, addr: str, *, task_status: trio.TaskStatus[str | None]
                    = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on `addr` ("[host]:port") until cancelled. A port in use is logged, not
        fatal: the mount keeps serving its applications."""
        from hypercorn.config import Config as HypercornConfig
        from hypercorn.trio import serve

        client_certs = self.tls is not None and self.tls.verify_mode == ssl.CERT_REQUIRED
        bind, narrowed = bind_address(addr, self.secret, client_certs)
        if narrowed:
            log.info("http.secret is not set: the replication API listens on %s only "
                        "(set http.secret, or LITEFS_SECRET, to serve other hosts)", bind)
        elif self.tls is None and self.secret:
            log.warning("the replication API serves plain HTTP on %s: replicas send "
                        "http.secret in clear text; set http.tls.cert/key to serve HTTPS", bind)
        cfg = _hypercorn_config(HypercornConfig, self.tls)
        cfg.bind = [bind]
        cfg.accesslog = None
        cfg.errorlog = logging.getLogger("litefs.http.server")
        cfg.keep_alive_timeout = IDLE_TIMEOUT
        cfg.ssl_handshake_timeout = TLS_HANDSHAKE_TIMEOUT
        cfg.h11_max_incomplete_size = MAX_HEADERS
        cfg.graceful_timeout = 0.5
        try:
            listener = trio.socket.socket()
            host, _, port = bind.rpartition(":")
            listener.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            await listener.bind((host, int(port)))
            listener.close()
        except OSError as exc:
            log.warning("cannot listen on %s for replicas: %s; replicas cannot connect until "
                      "http.addr is changed", bind, exc.strerror or exc)
            task_status.started(None)
            return
        self.port = int(port)
        log.info("replication API on %s://%s (protocol %d%s)", "https" if self.tls else "http",
                 bind, PROTOCOL_VERSION, ", client certificates required" if client_certs
                 else "")
        task_status.started(bind)
        try:
            await serve(self.app, cfg)  # type: ignore[arg-type]
        except* OSError as group:
            # Another process took the port between the check above and hypercorn's bind.
            log.warning("cannot listen on %s for replicas: %s; replicas cannot connect until "
                        "http.addr is changed", bind, group.exceptions[0])
            self.port = None

    def end_streams(self) -> int:
        """End every replica's stream (this node stops being the primary); they reconnect
        to whoever is. Returns how many were ended."""
        scopes, self._streams = list(self._streams), set()
        for scope in scopes:
            scope.cancel()
        return len(scopes)

    def abort_connections(self, peer: tuple[str, int] | None = None) -> int:
        """At shutdown: shut down every accepted connection's socket (or only the one from
        `peer`). hypercorn sends in a shielded cancel scope with no timeout, so a replica that
        stopped reading (paused, partitioned) would otherwise keep the primary from ever
        exiting, or hold its stream's task forever. Returns how many connections were cut."""
        if self.port is None:
            return 0
        cut = 0
        for entry in os.scandir("/proc/self/fd"):
            try:
                if not os.readlink(entry.path).startswith("socket:"):
                    continue
                fd = os.dup(int(entry.name))
            except OSError:
                continue
            try:
                sock = pysocket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                continue
            with sock:
                try:
                    if (sock.family not in (pysocket.AF_INET, pysocket.AF_INET6)
                            or sock.type != pysocket.SOCK_STREAM
                            or sock.getsockname()[1] != self.port):
                        continue
                    got = sock.getpeername()  # accepted connections only, not the listener
                    if peer is not None and (got[0], got[1]) != tuple(peer):
                        continue
                    sock.shutdown(pysocket.SHUT_RDWR)
                    cut += 1
                except OSError:
                    continue
        return cut

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._handle(scope, receive, send)
        except (trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError,
                OSError) as exc:
            # The client went away (or broke the connection) while it was answered: its
            # problem, not an error of the server's.
            log.debug("a client connection ended while it was answered: %r", exc)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope.get("headers", [])
        if len(headers) > 100 or sum(len(k) + len(v) for k, v in headers) > MAX_HEADERS:
            # hypercorn bounds only headers that arrive in pieces; whole ones are bounded here.
            await _reply(send, 431, {"error": f"request headers larger than {MAX_HEADERS} "
                                              "bytes or more than 100 of them"})
            return
        endpoint = self.endpoints.get(scope["path"])
        if endpoint is not None:
            await endpoint(scope, send, self._authorized(scope))
            return
        if not self._authorized(scope):
            await _reply(send, 401, {"error": "wrong or missing secret: send 'Authorization: "
                                              "Bearer <http.secret>'"})
            self._log_refusal(scope)
            return
        path, method = scope["path"], scope["method"]
        route = self.routes.get((method, path))
        if path == INFO_PATH and method == "GET":
            await _reply(send, 200, {**self.info_fields, "protocol": PROTOCOL_VERSION,
                                     "primary": self.advertise_url,
                                     "dbs": format_positions(self.positions()),
                                     **self.info_extra()})
        elif path == STREAM_PATH and method == "POST":
            refusal = self.serving()
            if refusal is not None:
                await _reply(send, 503, {"error": refusal, **self.info_extra()})
                return
            await self._stream(scope, receive, send)
        elif route is not None:
            await route(scope, receive, send)
        elif path in (INFO_PATH, STREAM_PATH):
            allow = "GET" if path == INFO_PATH else "POST"
            await _reply(send, 405, {"error": f"{_printable(method)} is not allowed on {path}; "
                                              f"use {allow}"}, [(b"allow", allow.encode())])
        else:
            await _reply(send, 404, {"error": f"no such endpoint {_printable(method)} "
                                              f"{_printable(path)}"})

    def _log_refusal(self, scope: Scope) -> None:
        """One warning per client address per REFUSAL_LOG_INTERVAL: a client hammering the
        API with wrong secrets cannot flood the log."""
        address = str((scope.get("client") or ("?", 0))[0])
        now = time.monotonic()
        last, since = self._refusals.get(address, (-REFUSAL_LOG_INTERVAL, 0))
        if now - last < REFUSAL_LOG_INTERVAL:
            self._refusals[address] = (last, since + 1)
            return
        more = f" ({since} more since the last such line)" if since else ""
        log.warning("refused a replication request from %s: wrong or missing secret%s",
                    address, more)
        if len(self._refusals) > 1024:  # many addresses: forget the old ones
            self._refusals.clear()
        self._refusals[address] = (now, 0)

    def _authorized(self, scope: Scope) -> bool:
        """The one authentication check (a client certificate, when required, was checked
        by TLS before any request was read)."""
        if self._secret_digest is None:
            return True
        sent = [bytes(v) for k, v in scope.get("headers", []) if k.lower() == b"authorization"]
        # Exactly one header; its digest compared in constant time (no early exit on the
        # first differing byte, and no hint of the secret's length).
        got = _digest(sent[0]) if len(sent) == 1 else b""
        return hmac.compare_digest(got, self._secret_digest) and len(sent) == 1

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytearray()
        with trio.move_on_after(REQUEST_TIMEOUT) as reading:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > MAX_REQUEST:
                    await _reply(send, 413, {"error": f"request larger than {MAX_REQUEST} "
                                                      "bytes"})
                    return
                if not message.get("more_body"):
                    break
        if reading.cancelled_caught:
            await _reply(send, 408, {"error": f"the request body did not arrive within "
                                              f"{REQUEST_TIMEOUT:g} s"})
            return
        try:
            request = json.loads(bytes(body) or b"{}")
            if not isinstance(request, dict):
                raise ProtocolError("request must be a JSON object")
            version = request.get("protocol", PROTOCOL_VERSION)
            if version != PROTOCOL_VERSION:
                raise ProtocolError(f"protocol {version!r} is not supported; this primary "
                                    f"speaks protocol {PROTOCOL_VERSION}")
            positions = parse_positions(request.get("dbs", {}))
        except (ValueError, ProtocolError) as exc:
            await _reply(send, 400, {"error": str(exc)})
            return
        client = scope.get("client") or ("?", 0)
        who = _printable(str(request.get("node") or client[0]))
        identity = request.get("identity")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE.encode()),
                                (b"cache-control", b"no-store")]})
        self.subscribers += 1
        log.info("replica %s connected", who)
        key = f"{who}/{id(request)}"
        if isinstance(identity, dict):
            self.identities[key] = identity
        stream_scope: trio.CancelScope | None = None
        try:
            async with trio.open_nursery() as nursery:
                stream_scope = nursery.cancel_scope
                self._streams.add(stream_scope)
                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch_disconnect)
                subscription = Subscription(self, positions, send, who)
                peer = scope.get("client")
                if peer is not None:
                    nursery.start_soon(self._watch_stalls, subscription, tuple(peer))
                await subscription.run()
                nursery.cancel_scope.cancel()
        except Exception as exc:  # the replica went away mid-send: it reconnects
            log.debug("stream to %s ended: %r", who, exc)
        finally:
            self.subscribers -= 1
            self.identities.pop(key, None)
            if stream_scope is not None:
                self._streams.discard(stream_scope)
            log.info("replica %s disconnected", who)


    async def _watch_stalls(self, subscription: Subscription, peer: tuple[str, int]) -> None:
        """Cut off a subscriber that has accepted no bytes for SEND_TIMEOUT: hypercorn's
        send cannot be cancelled, so its socket is shut down. Others are never held up."""
        while True:
            await trio.sleep(1.0)
            started = subscription.sending_since
            if started is not None and time.monotonic() - started > SEND_TIMEOUT:
                log.warning("replica %s accepted no data for %.0f s; closing its stream (it "
                            "reconnects when it reads again)", subscription.who, SEND_TIMEOUT)
                self.abort_connections(peer)
                return


class Subscription:
    """One replica's stream: brings each database from the replica's position to the
    primary's, then follows commits."""

    def __init__(self, server: StreamServer, positions: dict[str, Pos],
                 send: Send, who: str) -> None:
        self.server = server
        self.sent = dict(positions)
        self._send = send
        self.who = who
        self.sending_since: float | None = None  # when the send under way started

    async def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        epoch = self.server.epoch()
        if epoch:
            header["epoch"] = epoch
        self.sending_since = time.monotonic()
        try:
            await self._send({"type": "http.response.body",
                              "body": encode_frame(header, payload), "more_body": True})
        finally:
            self.sending_since = None

    async def run(self) -> None:
        server = self.server
        await self.send({"type": "hello", "protocol": PROTOCOL_VERSION,
                         "primary": server.advertise_url,
                         "dbs": format_positions(server.positions()),
                         **server.hello_extra()})
        while True:
            version = server.feed.version
            for name, db in list(server.store.dbs.items()):
                await self.catch_up(name, db)
            if server.feed.version != version:
                continue
            with trio.move_on_after(server.heartbeat) as scope:
                await server.feed.wait_past(version)
            if scope.cancelled_caught:
                await self.send({"type": "heartbeat", "time": int(time.time() * 1000),
                                 "dbs": format_positions(server.positions()),
                                 **server.hello_extra()})

    async def catch_up(self, name: str, db: DB) -> None:
        rtxid, rchecksum = self.sent.get(name, ZERO_POS)
        if db.txid == 0 or (db.deleted and rtxid == 0):
            return  # nothing committed yet, or deleted before this replica saw it
        if rtxid == db.txid and (rchecksum == db.checksum or db.deleted):
            return
        reason = self._needs_snapshot(db, rtxid, rchecksum)
        if reason is None:
            for r in db.ltx.ranges(rtxid):
                try:
                    data = await trio.to_thread.run_sync(db.ltx.read, r)
                except FileNotFoundError:
                    reason = f"TXIDs {r.min_txid:016x}-{r.max_txid:016x} left the local log " \
                             "while sending"
                    break
                post = Trailer.decode(data[-TRAILER_SIZE:]).post_apply_checksum
                await self.send({"type": "ltx", "db": name, "min_txid": f"{r.min_txid:016x}",
                                 "max_txid": f"{r.max_txid:016x}", "checksum": f"{post:016x}",
                                 "primary_txid": f"{db.txid:016x}"}, data)
                self.sent[name] = Pos(r.max_txid, post)
            if reason is None:
                return
        if db.deleted:
            # The replica has an older database that is gone here: send the deletion.
            last = db.ltx.last_range()
            if last is None:
                return
            data = await trio.to_thread.run_sync(db.ltx.read, last)
            header = Header.decode(data[:100])
            await self.send({"type": "ltx", "db": name, "min_txid": f"{header.min_txid:016x}",
                             "max_txid": f"{header.max_txid:016x}", "deletion": True,
                             "primary_txid": f"{db.txid:016x}"}, data)
            self.sent[name] = Pos(header.max_txid, db.checksum)
            return
        log.info("%s: sending a snapshot to replica %s: %s", name, self.who, reason)
        # Read and encoded in a worker thread: the mount keeps serving meanwhile.
        try:
            snap = await take_snapshot(db)
        except ValueError:
            return  # deleted meanwhile: the next round sends the deletion
        if db.deleted:
            return
        await self.send({"type": "ltx", "db": name, "min_txid": f"{1:016x}",
                         "max_txid": f"{snap.max_txid:016x}", "checksum": f"{snap.checksum:016x}",
                         "snapshot": True, "reason": reason,
                         "primary_txid": f"{db.txid:016x}"}, snap.data)
        self.sent[name] = snap.pos

    @staticmethod
    def _needs_snapshot(db: DB, rtxid: int, rchecksum: int) -> str | None:
        if rtxid == 0:
            return "the replica has no copy of it yet"
        if rtxid > db.txid:
            return (f"the replica is at TXID {rtxid:016x}, ahead of the primary's "
                    f"{db.txid:016x} (a different history)")
        if rtxid == db.txid:
            return (f"at TXID {rtxid:016x} the replica's checksum {rchecksum:016x} differs "
                    f"from the primary's {db.checksum:016x}")
        records = db.ltx.ranges(rtxid)
        if not records or records[0].min_txid != rtxid + 1:
            return (f"TXID {rtxid + 1:016x}, the next one the replica needs, is no longer in "
                    "the primary's local log")
        pre = db.ltx.header(records[0]).pre_apply_checksum
        if pre != rchecksum:
            return (f"at TXID {rtxid:016x} the replica's checksum {rchecksum:016x} differs "
                    f"from the primary's {pre:016x}")
        return None


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _hypercorn_config(config_class: type[Any], tls: ssl.SSLContext | None) -> Any:
    """hypercorn's Config serving `tls` (http_tls.server_context), the only TLS set-up."""

    class Config(config_class):  # type: ignore[misc]
        def create_ssl_context(self) -> ssl.SSLContext | None:
            return tls

        @property
        def ssl_enabled(self) -> bool:
            return tls is not None

    return Config()


def _printable(text: str, limit: int = 80) -> str:
    """A client-chosen string fit for a log line or an error: no control characters."""
    text = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return text + ("..." if len(text) == limit else "")


async def _reply(send: Send, status: int, doc: dict[str, Any],
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(doc).encode() + b"\n"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
