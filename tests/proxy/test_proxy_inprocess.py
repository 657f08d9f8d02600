"""The proxy's HTTP behaviour with real sockets, in one trio process: a replica's proxy and a
primary's proxy (ProxyServer over real Stores, no FUSE) in front of an echo application that
reports what it received. What needs SQLite, mounts and replication is in test_cluster.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from litefs_py.config import ProxyConfig, load_config
from litefs_py.errors import QuietError
from litefs_py.proxy import ProxyServer, StaticPrimary
from litefs_py.proxy.primary import LeasePrimary
from litefs_py.proxy.server import HOP_HEADER, parse_txid_cookie
from litefs_py.proxy.settings import ProxySettings, compile_path_pattern
from litefs_py.replication.lease.base import Holder
from litefs_py.replication.lease.static import StaticLease
from litefs_py.store.store import Store
from tests.s3_server import free_port

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """What it received, as JSON; /stream sends `n` chunks as they are asked for."""
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                m = await receive()
                if m["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif m["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        return
    size = chunks = 0
    while True:
        m = await receive()
        if m["type"] == "http.disconnect":
            return
        if m.get("body"):
            size += len(m["body"])
            chunks += 1
        if not m.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        n = int(scope["query_string"].decode().partition("=")[2] or 3)
        for i in range(n):
            await send({"type": "http.response.body", "body": f"data: {i}\n\n".encode(),
                        "more_body": True})
            await trio.sleep(0.05)
        await send({"type": "http.response.body", "body": b""})
        return
    doc = {"method": scope["method"], "path": scope["path"],
           "query": scope["query_string"].decode(),
           "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
           "bytes": size, "chunks": chunks}
    body = json.dumps(doc).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"x-app", b"echo")]})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Pair:
    replica: ProxyServer
    primary: ProxyServer
    replica_url: str
    primary_url: str
    app_port: int

    def header(self, doc: dict[str, Any], name: str) -> list[str]:
        return [v for k, v in doc["headers"] if k == name]


async def start_app(nursery: trio.Nursery, port: int) -> None:
    cfg = HypercornConfig()
    cfg.bind = [f"127.0.0.1:{port}"]
    cfg.accesslog = None
    await nursery.start(serve, echo_app, cfg)  # type: ignore[arg-type]


@asynccontextmanager
async def proxies(tmp: Path, **replica_kwargs: Any) -> AsyncIterator[Pair]:
    app_port, primary_port, replica_port = free_port(), free_port(), free_port()
    primary_settings = ProxySettings(addr=f"127.0.0.1:{primary_port}",
                                     target=f"127.0.0.1:{app_port}", db="store.db")
    lag = replica_kwargs.pop("lag", lambda: 0.0)
    replica_settings = replace(primary_settings, **{
        "addr": f"127.0.0.1:{replica_port}", "primary_url": f"http://127.0.0.1:{primary_port}",
        "primary_redirect_timeout": 1.0, **replica_kwargs})
    primary = ProxyServer(primary_settings, Store(tmp / "p"),
                          StaticPrimary(is_primary=True, advertise_url=None), node_name="p")
    # The primary's replication API is never asked: proxy.primary-url says where it is.
    replica = ProxyServer(replica_settings, Store(tmp / "r"),
                          StaticPrimary(is_primary=False, advertise_url="http://127.0.0.1:9",
                                        hostname="primary-host"),
                          lag=lag, node_name="r")
    async with trio.open_nursery() as nursery:
        await start_app(nursery, app_port)
        await nursery.start(primary.serve)
        await nursery.start(replica.serve)
        yield Pair(replica, primary, f"http://127.0.0.1:{replica_port}",
                   f"http://127.0.0.1:{primary_port}", app_port)
        nursery.cancel_scope.cancel()


def client(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, trust_env=False, timeout=30.0)


@pytest.mark.trio
async def test_read_stays_local_write_is_forwarded_once(tmp_path: Path) -> None:
    async with proxies(tmp_path) as pair, client(pair.replica_url) as c:
        r = await c.get("/notes?x=1", headers={"host": "app.example", "x-forwarded-for": "1.2.3.4"})
        doc = r.json()
        assert r.status_code == 200 and r.headers["x-app"] == "echo"
        assert doc["path"] == "/notes" and doc["query"] == "x=1"
        assert pair.header(doc, "host") == ["app.example"]
        assert pair.header(doc, "x-forwarded-for") == ["1.2.3.4, 127.0.0.1"]
        assert pair.header(doc, "litefs-forwarded") == []
        assert pair.replica.forwarded == 0

        r = await c.post("/notes", content=b"x" * 1000, headers={"host": "app.example"})
        doc = r.json()
        assert r.status_code == 200 and doc["method"] == "POST" and doc["bytes"] == 1000
        assert pair.replica.forwarded == 1
        # The original Host, the client and then the replica in X-Forwarded-For, the hop
        # header from the replica (the primary's proxy passes it to nobody).
        assert pair.header(doc, "host") == ["app.example"]
        assert pair.header(doc, "x-forwarded-for") == ["127.0.0.1, 127.0.0.1"]
        assert pair.header(doc, HOP_HEADER.decode()) == []

        head = await c.head("/notes")  # HEAD: the app's length, no body, connection reused
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) > 0
        r = await c.post("/notes", content=b"abc", headers={"expect": "100-continue"})
        assert r.status_code == 200 and r.json()["bytes"] == 3
        assert pair.header(r.json(), "expect") == []  # answered by the proxy, not passed on

        # always-forward is off here; DELETE and PUT are writes too.
        for method in ("PUT", "DELETE", "PATCH"):
            r = await c.request(method, "/x")
            assert r.status_code == 200 and r.json()["method"] == method
        assert pair.replica.forwarded == 5


@pytest.mark.trio
async def test_a_forwarded_request_is_never_forwarded_again(tmp_path: Path) -> None:
    async with proxies(tmp_path) as pair, client(pair.replica_url) as c:
        r = await c.post("/notes", headers={HOP_HEADER.decode(): "other-node"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "not the primary" in r.text
        assert pair.replica.forwarded == 0


@pytest.mark.trio
async def test_passthrough_and_always_forward(tmp_path: Path) -> None:
    async with proxies(tmp_path, passthrough=("*.png", "/static/*"),
                       always_forward=("/login",)) as pair, client(pair.replica_url) as c:
        r = await c.post("/static/upload")  # passthrough: even a write stays local
        assert r.status_code == 200 and pair.replica.forwarded == 0
        r = await c.get("/img/logo.png", headers={"cookie": "__txid=00000000000000ff"})
        assert r.status_code == 200  # no read-your-writes wait on a passthrough path
        r = await c.get("/login")
        assert r.status_code == 200 and pair.replica.forwarded == 1
        r = await c.get("/login/other")  # the whole path must match
        assert r.status_code == 200 and pair.replica.forwarded == 1


@pytest.mark.trio
async def test_streaming_both_ways(tmp_path: Path) -> None:
    async with proxies(tmp_path) as pair, client(pair.replica_url) as c:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(64):
                yield b"y" * 65536
                await trio.lowlevel.checkpoint()

        r = await c.post("/upload", content=body())
        doc = r.json()
        assert doc["bytes"] == 64 * 65536 and doc["chunks"] > 1
        assert pair.header(doc, "transfer-encoding") == ["chunked"]

        # A chunked event stream arrives event by event, before the app has finished.
        async with c.stream("GET", "/stream?n=4") as resp:
            assert resp.headers["content-type"] == "text/event-stream"
            seen = []
            async for line in resp.aiter_lines():
                if line:
                    seen.append(line)
            assert seen == [f"data: {i}" for i in range(4)]
        async with c.stream("POST", "/stream?n=2") as resp:  # forwarded, still streamed
            assert [x async for x in resp.aiter_lines() if x] == ["data: 0", "data: 1"]


@pytest.mark.trio
async def test_health_and_max_lag(tmp_path: Path) -> None:
    lag = [0.0]
    async with proxies(tmp_path, lag=lambda: lag[0], max_lag=5.0) as pair, \
            client(pair.replica_url) as c:
        h = await c.get("/litefs/health")
        assert h.status_code == 200
        assert h.json()["role"] == "replica" and h.json()["ready"] is True
        lag[0] = 6.5
        h = await c.get("/litefs/health")
        assert h.status_code == 503 and h.json()["ready"] is False
        assert h.json()["lag_seconds"] == 6.5
        r = await c.get("/anything")
        assert r.status_code == 503 and "max-lag" in r.text and r.headers["retry-after"]
        r = await c.post("/anything")  # writes go to the primary whatever the lag
        assert r.status_code == 200
        async with client(pair.primary_url) as p:
            h = await p.get("/litefs/health")
            assert h.status_code == 200 and h.json()["role"] == "primary"


@pytest.mark.trio
async def test_txid_cookie_waits_then_504(tmp_path: Path) -> None:
    async with proxies(tmp_path, txid_timeout=0.3) as pair, client(pair.replica_url) as c:
        pair.replica.store.create("store.db")  # at TXID 0: never reaches the cookie's TXID
        r = await c.get("/x", headers={"cookie": "__txid=0000000000000005"})
        assert r.status_code == 504 and "0000000000000005" in r.text
        r = await c.get("/x", headers={"cookie": "__txid=not-hex"})  # ignored, like LiteFS
        assert r.status_code == 200


@pytest.mark.trio
async def test_no_primary_then_503_with_retry_after(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there
    async with proxies(tmp_path, primary_url=f"http://127.0.0.1:{dead}",
                       primary_redirect_timeout=0.5) as pair, client(pair.replica_url) as c:
        started = trio.current_time()
        r = await c.post("/notes", content=b"abc")
        waited = trio.current_time() - started
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "primary-redirect-timeout" in r.text
        assert waited >= 0.5  # it waited for a primary first
        assert (await c.get("/notes")).status_code == 200  # reads are still served


@pytest.mark.trio
async def test_fly_replay_mode(tmp_path: Path) -> None:
    async with proxies(tmp_path, fly_replay=True) as pair, client(pair.replica_url) as c:
        r = await c.post("/notes")
        assert r.status_code == 200 and r.headers["fly-replay"] == "instance=primary-host"
        assert r.content == b"" and pair.replica.forwarded == 0


async def raw_exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.move_on_after(30):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                out += chunk
        return out


@pytest.mark.trio
async def test_hostile_requests_get_4xx_and_do_not_stall_others(tmp_path: Path) -> None:
    async with proxies(tmp_path, read_header_timeout=1.0) as pair, \
            client(pair.replica_url) as c:
        port = int(pair.replica_url.rsplit(":", 1)[1])
        garbage = await raw_exchange(port, b"\x16\x03\x01 not http at all\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400")
        bad_line = await raw_exchange(port, b"GET /x HTTP/9.9 extra\r\nHost: a\r\n\r\n")
        assert bad_line.split(b" ", 2)[1] in (b"400", b"505")
        huge = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
        assert (await raw_exchange(port, huge)).startswith(b"HTTP/1.1 431")

        # Slowloris: connections that trickle a request head byte by byte. They are cut
        # when proxy.read-header-timeout runs out; meanwhile every other client is served.
        cut_after: list[float] = []

        async def slowloris() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            start = trio.current_time()
            async with stream:
                try:
                    for b in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"z" * 1000:
                        await stream.send_all(bytes([b]))
                        await trio.sleep(0.2)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                else:
                    raise AssertionError("the slow client was never cut off")
                cut_after.append(trio.current_time() - start)

        served = 0
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(slowloris)
            await trio.sleep(0.3)
            for _ in range(30):
                r = await c.get("/ok")
                assert r.status_code == 200
                served += 1
        assert served == 30 and len(cut_after) == 20
        # Cut by the header timeout (1 s), not by the end of the trickle (~200 s).
        assert max(cut_after) < 100


@pytest.mark.trio
async def test_connection_refused_by_app_is_502(tmp_path: Path) -> None:
    app_port = free_port()
    settings = ProxySettings(addr=f"127.0.0.1:{free_port()}", target=f"127.0.0.1:{app_port}",
                             db="store.db")
    server = ProxyServer(settings, Store(tmp_path / "p"),
                         StaticPrimary(is_primary=True, advertise_url=None))
    import litefs_py.proxy.server as mod

    old, mod.TARGET_CONNECT_RETRY = mod.TARGET_CONNECT_RETRY, 0.3  # type: ignore[misc]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            async with client(f"http://{settings.addr}") as c:
                r = await c.get("/")
                assert r.status_code == 502 and settings.target in r.text
            nursery.cancel_scope.cancel()
    finally:
        mod.TARGET_CONNECT_RETRY = old  # type: ignore[misc]


@pytest.mark.trio
async def test_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        settings = ProxySettings(addr=f"127.0.0.1:{port}", target="127.0.0.1:1", db="x.db")
        server = ProxyServer(settings, Store(tmp_path / "p"),
                             StaticPrimary(is_primary=True, advertise_url=None))
        with pytest.raises(QuietError, match=r"proxy\.addr: cannot listen"):
            await server.serve()


@pytest.mark.trio
async def test_lease_primary_source() -> None:
    holder = Holder(hostname="n1", advertise_url="http://n1:20202", node_id="abc", epoch=1)
    mine = LeasePrimary(StaticLease(is_primary=False, primary=holder), node_id="abc")
    other = LeasePrimary(StaticLease(is_primary=False, primary=holder), node_id="zzz")
    assert (await mine.current()).local is True  # type: ignore[union-attr]
    p = await other.current()
    assert p is not None and not p.local and p.advertise_url == "http://n1:20202"
    assert p.hostname == "n1"
    assert await LeasePrimary(StaticLease(is_primary=False), "x").current() is None


class MovingLease(StaticLease):
    """A lease whose holder the test moves (as an election would), counting backend reads."""

    def __init__(self, holder: Holder | None) -> None:
        super().__init__(is_primary=False, primary=holder)
        self.reads = 0
        self.moved = trio.Event()

    async def holder(self) -> Holder | None:
        self.reads += 1
        return await super().holder()

    async def wait_for_change(self, known: Holder | None) -> Holder | None:
        await self.moved.wait()
        self.moved = trio.Event()
        return await super().holder()

    def move(self, holder: Holder | None) -> None:
        self._primary = holder
        self.moved.set()


@pytest.mark.trio
async def test_lease_primary_follows_the_lease_without_asking_it_per_request() -> None:
    """What the election work plugs in: LeasePrimary(lease, node_id). Run by start_proxy, it
    follows the holder with the lease's wait_for_change; requests never wait for the backend."""
    n1 = Holder(hostname="n1", advertise_url="http://n1:20202", node_id="n1", epoch=1)
    n2 = Holder(hostname="n2", advertise_url="http://n2:20202", node_id="n2", epoch=2)
    lease = MovingLease(n1)
    source = LeasePrimary(lease, node_id="n2")
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        reads = lease.reads
        for _ in range(100):
            p = await source.current()
            assert p is not None and not p.local and p.advertise_url == "http://n1:20202"
        assert lease.reads == reads  # answered from what run() saw
        with trio.fail_after(5):
            lease.move(None)  # the primary is gone: writes wait
            assert await source.wait_for_change(p) is None
            lease.move(n2)  # this node won the election
            now = await source.wait_for_change(None)
        assert now is not None and now.local
        nursery.cancel_scope.cancel()


def test_cookie_parsing() -> None:
    assert parse_txid_cookie([(b"cookie", b"a=1; __txid=000000000000001f; b=2")]) == 31
    assert parse_txid_cookie([(b"cookie", b"__txid=")]) == 0
    assert parse_txid_cookie([(b"cookie", b"__txid=zz")]) == 0
    assert parse_txid_cookie([(b"cookie", b"__txid=" + b"f" * 17)]) == 0
    assert parse_txid_cookie([]) == 0


def test_path_patterns_match_like_litefs() -> None:
    assert compile_path_pattern("*.png").match("/a/b.png")
    assert not compile_path_pattern("*.png").match("/a/b.png.txt")
    assert compile_path_pattern("/static/*").match("/static/x/y")
    assert not compile_path_pattern("/static/*").match("/other/static/x")
    assert compile_path_pattern("/a.b").match("/a.b")
    assert not compile_path_pattern("/a.b").match("/axb")


def load_proxy(tmp_path: Path, proxy: dict[str, object]) -> ProxySettings | None:
    """The settings `litefs mount` runs the proxy with, from a litefs.yml with `proxy:`."""
    path = tmp_path / "litefs.yml"
    path.write_text(yaml.safe_dump({"proxy": proxy}))
    return ProxySettings.from_config(load_config(path, env={}).proxy)


def test_settings_from_litefs_keys(tmp_path: Path) -> None:
    s = load_proxy(tmp_path, {"addr": ":8080", "target": "localhost:8081", "db": "my.db",
                              "max-lag": "3s", "passthrough": ["*.ico"],
                              "always-forward": "/login", "primary-redirect-timeout": "10s",
                              "read-header-timeout": "2s", "debug": True,
                              "max-header-size": "32KiB", "primary-url": "p:9"})
    assert s is not None
    assert (s.addr, s.target, s.db, s.max_lag) == (":8080", "localhost:8081", "my.db", 3.0)
    assert s.passthrough == ("*.ico",) and s.always_forward == ("/login",)
    assert s.primary_redirect_timeout == 10.0 and s.debug is True
    assert s.header_timeout == 2.0 and math.isclose(s.txid_timeout, 5.0)
    assert s.max_header_size == 32 * 1024 and s.primary_url == "http://p:9"
    assert s.is_always_forward("/login") and s.is_passthrough("/a/b.ico")
    bare = load_proxy(tmp_path, {"addr": ":8080", "target": ":8081", "db": "d"})
    assert bare is not None and bare.target == "localhost:8081"  # a host to connect to
    assert ProxySettings.from_config(None) is None
    assert load_proxy(tmp_path, {"addr": ":8080"}) is None  # no target: no proxy (LiteFS)


def test_settings_are_the_config_sections_fields() -> None:
    """One owner of the keys: ProxySettings has exactly ProxyConfig's fields and defaults
    (from_config copies them by name)."""
    ours = {f.name: f.default for f in fields(ProxySettings) if not f.name.startswith("_")}
    theirs = {f.name: f.default for f in fields(ProxyConfig)}
    assert ours.keys() == theirs.keys()
    required = {"addr", "target", "db"}
    assert {k: v for k, v in ours.items() if k not in required} == \
        {k: v for k, v in theirs.items() if k not in required}


@pytest.mark.parametrize(("mapping", "message"), [
    ({"addr": ":8080", "target": "x:1", "db": "d", "max_lag": "1s"},
     r"unknown key proxy\.max_lag in .*; did you mean proxy\.max-lag\?"),
    ({"target": "x:1", "db": "d"}, r"proxy\.addr in .*: is required when proxy\.target"),
    ({"addr": ":8080", "target": "x:1"}, r"proxy\.db in .*: is required"),
    ({"addr": 8080, "target": "x:1", "db": "d"}, "proxy.addr in .*write ':8080'"),
    ({"addr": ":8080", "target": "x", "db": "d"}, r"proxy\.target in .*: invalid address"),
    ({"addr": ":8080", "target": "x:1", "db": "d", "max-lag": 5},
     r"proxy\.max-lag in .*needs a unit"),
    ({"addr": ":8080", "target": "x:1", "db": "d", "passthrough": 1},
     r"proxy\.passthrough in .*: expected a list of path patterns"),
    ({"addr": ":8080", "target": "x:1", "db": "d", "passthrough": [1]},
     r"proxy\.passthrough\[0\] in .*: expected a string"),
    ({"addr": ":8080", "target": "x:1", "db": "a/b"}, r"proxy\.db in .*: invalid database"),
    ({"addr": ":8080", "target": "https://x:1", "db": "d"}, "proxy.target in .*plain HTTP"),
    ({"addr": ":8080", "target": "x:1", "db": "d", "max-header-size": 100},
     r"proxy\.max-header-size in .*>= 1024"),
    ({"addr": ":8080", "target": "x:1", "db": "d", "fly-replay": "yes"},
     r"proxy\.fly-replay in .*true or false"),
])
def test_settings_errors_name_the_key(tmp_path: Path, mapping: dict[str, object],
                                      message: str) -> None:
    with pytest.raises(QuietError, match=message) as info:
        load_proxy(tmp_path, mapping)
    assert info.value.code == 3
