"""#14 item 2: hostile clients of the replication API. Wrong or missing secrets, malformed,
replayed and truncated stream requests, absurd positions, huge headers and slow clients get
the right 4xx or a timeout, while a healthy replica keeps receiving and no database on the
primary changes. The property test drives every endpoint with malformed input (hypothesis)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litefs_py.replication.stream_protocol import FrameReader
from litefs_py.replication.stream_server import (
    IDLE_TIMEOUT,
    MAX_HEADERS,
    REQUEST_TIMEOUT,
    SEND_TIMEOUT,
)
from tests.mount.harness import LitefsMount
from tests.replica.harness import Cluster, read_pos, wait_for, wait_same_pos
from tests.replica.test_replica_recovery import DB, commit_rows, make_table, rows

SECRET = "hostile-secret"
AUTH = {"Authorization": f"Bearer {SECRET}"}
STREAM = "/litefs/v1/stream"
INFO = "/litefs/v1/info"
OTHER = "other.db"  # a database nobody writes during the attacks: it must not change


def raw(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send `data` on a fresh connection and return what comes back until close/timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and b"content-length" in out.lower():
                    head, _, body = out.partition(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(body) >= length:
                        break
        except TimeoutError:
            pass
        return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def post_stream(port: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    hdrs = {"Host": "x", "Content-Length": str(len(body)), **AUTH, **(headers or {})}
    head = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    return raw(port, f"POST {STREAM} HTTP/1.1\r\n{head}\r\n".encode() + body)


def first_frames(url: str, body: dict[str, object], n: int = 2,
                 timeout: float = 10.0) -> list[dict[str, object]]:
    """The headers of the first `n` frames of a stream opened with `body`."""
    reader = FrameReader()
    frames: list[dict[str, object]] = []
    with httpx.stream("POST", url + STREAM, json=body, headers=AUTH, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        for chunk in r.iter_raw():
            frames.extend(f.header for f in reader.feed(chunk))
            if len(frames) >= n:
                break
    return frames[:n]


def snapshot_of(m: LitefsMount) -> dict[str, object]:
    """What must not change on the primary: the other database's position and bytes, and
    the list of databases."""
    return {"pos": read_pos(m, OTHER), "bytes": (m.mount_dir / OTHER).read_bytes(),
            "dbs": sorted(p for p in os.listdir(m.mount_dir) if not p.startswith("."))}


@contextmanager
def steady_writer(m: LitefsMount, every: float = 0.05) -> Iterator[list[int]]:
    """Commits one row to DB every `every` s in a thread; yields the list of ids written."""
    written: list[int] = []
    stop = threading.Event()

    def run() -> None:
        con = sqlite3.connect(m.db(DB), isolation_level=None, timeout=10)
        while not stop.is_set():
            cur = con.execute("INSERT INTO t (v) VALUES ('steady')")
            written.append(int(cur.lastrowid or 0))
            time.sleep(every)
        con.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield written
    finally:
        stop.set()
        thread.join(10)


def setup(cluster: Cluster) -> tuple[LitefsMount, LitefsMount]:
    primary = cluster.primary(secret=SECRET)
    replica = cluster.replica(secret=SECRET)
    make_table(primary, 5)
    con = sqlite3.connect(primary.db(OTHER), isolation_level=None)
    con.execute("CREATE TABLE o (x)")
    con.execute("INSERT INTO o VALUES (1)")
    con.close()
    wait_same_pos(primary, replica, DB)
    wait_same_pos(primary, replica, OTHER)
    return primary, replica


def test_malformed_and_hostile_requests_get_the_right_answer(cluster: Cluster) -> None:
    primary, replica = setup(cluster)
    port, url = cluster.port, cluster.url
    before = snapshot_of(primary)
    pos = read_pos(primary, DB)
    assert pos is not None

    def stream(body: object, **kw: str) -> int:
        return status_of(post_stream(port, json.dumps(body).encode(), kw))

    with steady_writer(primary):
        # Secrets: missing, wrong, a prefix, a longer one, twice, wrong scheme.
        bad_auth = [None, "Bearer nope", f"Bearer {SECRET[:-1]}", f"Bearer {SECRET}x",
                    SECRET, f"bearer {SECRET}", "Bearer " + "A" * 8000]
        for value in bad_auth:
            headers = {} if value is None else {"Authorization": value}
            assert httpx.get(url + INFO, headers=headers, timeout=5).status_code == 401, value
        twice = raw(port, f"GET {INFO} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}"
                          f"\r\nAuthorization: Bearer {SECRET}\r\n\r\n".encode())
        assert status_of(twice) == 401
        # Wrong methods and paths.
        assert httpx.post(url + INFO, headers=AUTH, timeout=5).status_code == 405
        r = httpx.get(url + STREAM, headers=AUTH, timeout=5)
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert httpx.get(url + "/litefs/v1/nope", headers=AUTH, timeout=5).status_code == 404
        # Malformed stream requests and absurd positions: 400 naming the problem.
        hexpos = {"txid": f"{pos[0]:016x}", "checksum": f"{pos[1]:016x}"}
        for body in ([], "x", {"protocol": 2}, {"dbs": []}, {"dbs": {DB: 5}},
                     {"dbs": {DB: {"txid": "-1"}}}, {"dbs": {DB: {"txid": "1" * 17}}},
                     {"dbs": {DB: {"txid": "0x10"}}}, {"dbs": {DB: {"txid": 16}}},
                     {"dbs": {DB: {"txid": "zz"}}}, {"dbs": {"../etc": hexpos}},
                     {"dbs": {"": hexpos}}, {"dbs": {DB: {**hexpos, "checksum": " 1"}}}):
            assert stream(body) == 400, body
        assert status_of(post_stream(port, b"{not json")) == 400
        assert status_of(post_stream(port, b"\xff\xfe")) == 400
        assert status_of(post_stream(port, b" " * (1 << 20 + 1))) == 413
        # Huge headers: the connection gets an error answer (or is closed), never a stall.
        huge = raw(port, f"GET {INFO} HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 2 * MAX_HEADERS}"
                         "\r\n\r\n".encode())
        assert status_of(huge) == 431, huge[:200]
        many = "".join(f"X-{i}: {i}\r\n" for i in range(4000))
        assert status_of(raw(port, f"GET {INFO} HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())) \
            in (0, 400, 431)

        # Absurd but well-formed positions are answered, not obeyed: a replica "ahead" of
        # the primary, or at a checksum it never had, is sent a snapshot.
        frames = first_frames(url, {"dbs": {DB: {"txid": "ffffffffffffffff",
                                                 "checksum": "0"}}})
        assert frames[0]["type"] == "hello" and frames[1]["snapshot"] is True
        assert "ahead of the primary" in str(frames[1]["reason"])
        frames = first_frames(url, {"dbs": {DB: {**hexpos, "checksum": "1"}}})
        assert frames[1]["snapshot"] is True and "differs" in str(frames[1]["reason"])
        # A replayed request (an old position, sent twice) gets the same catch-up each time.
        old = {"dbs": {DB: {"txid": "0000000000000002", "checksum": "0"}}}
        assert first_frames(url, old)[1]["type"] == first_frames(url, old)[1]["type"] == "ltx"

    assert snapshot_of(primary) == before
    wait_same_pos(primary, replica, DB)
    assert rows(replica) == rows(primary)
    log = primary.log()
    assert "Traceback" not in log
    # Refusals are logged once per address per minute, not once per request.
    assert log.count("refused a replication request from 127.0.0.1") == 1


def test_slow_and_stalled_clients_are_cut_off_without_stalling_others(
        cluster: Cluster) -> None:
    """Headers that never end, a body that never arrives and a subscriber that stops
    reading each cost one connection until their timeout; a healthy replica keeps up."""
    primary, replica = setup(cluster)
    port = cluster.port
    # A database big enough that its snapshot fills the socket buffers of a client that
    # does not read (random bytes: LZ4 cannot shrink them).
    con = sqlite3.connect(primary.db("big.db"), isolation_level=None)
    con.execute("CREATE TABLE b (x BLOB)")
    for _ in range(40):
        con.execute("INSERT INTO b VALUES (randomblob(1000000))")
    con.close()
    wait_same_pos(primary, replica, "big.db", timeout=60)

    slowloris = socket.create_connection(("127.0.0.1", port))
    slowloris.sendall(b"GET /litefs/v1/info HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    truncated = socket.create_connection(("127.0.0.1", port))
    truncated.sendall(f"POST {STREAM} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}"
                      "\r\nContent-Length: 100\r\n\r\n{\"dbs\":".encode())
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = b"{}"
    stalled.sendall(f"POST {STREAM} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    started = time.monotonic()
    lags: list[float] = []
    try:
        with steady_writer(primary, every=0.1):
            # While they hang on, the healthy replica follows every commit.
            while time.monotonic() - started < SEND_TIMEOUT + 5:
                t0 = time.monotonic()
                want = read_pos(primary, DB)
                wait_for(lambda want=want: (read_pos(replica, DB) or (0, 0))[0] >= want[0],
                         10, "the healthy replica to keep up")
                lags.append(time.monotonic() - t0)
                time.sleep(0.5)
        # The slow ones were answered or cut: 408 for the body, a close for the headers.
        truncated.settimeout(1)
        assert status_of(truncated.recv(4096)) == 408
        slowloris.settimeout(1)
        assert slowloris.recv(4096) == b""  # closed after IDLE_TIMEOUT
        wait_for(lambda: "accepted no data for" in primary.log(), 15,
                 "the primary to cut off the stalled subscriber")
    finally:
        for s in (slowloris, truncated, stalled):
            s.close()
    assert max(lags) < 5, lags
    assert IDLE_TIMEOUT < SEND_TIMEOUT and REQUEST_TIMEOUT < SEND_TIMEOUT
    wait_same_pos(primary, replica, DB)
    assert rows(replica) == rows(primary)
    assert "Traceback" not in primary.log()


# ---- the property test -------------------------------------------------------------------

_text = st.text(max_size=40)
_json = st.recursive(st.none() | st.booleans() | st.integers() | _text,
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_text, inner, max_size=4), max_leaves=12)
_hexish = st.one_of(st.from_regex(r"[0-9a-f]{0,20}", fullmatch=True), _text,
                    st.integers(min_value=-2**70, max_value=2**70), st.none())
_position = st.fixed_dictionaries({}, optional={"txid": _hexish, "checksum": _hexish,
                                                "extra": _json})
_names = st.sampled_from([DB, OTHER, "new.db", "..", ".", "", "a/b", "x\x00y", "é.db"]) | _text
_stream_body = st.one_of(
    st.fixed_dictionaries({}, optional={"protocol": st.one_of(st.just(1), _json),
                                        "node": _json,
                                        "dbs": st.dictionaries(_names, _position, max_size=3)
                                        | _json}),
    _json)
_request = st.fixed_dictionaries({
    # Half the requests are well-addressed stream requests with the right secret, so the
    # body's parsing gets most of the attention.
    "method": st.just("POST") | st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD",
                                                 "OPTIONS", "PATCH"]),
    "path": st.just(STREAM) | st.sampled_from([STREAM, INFO, "/", "/litefs/v1/",
                                               "/litefs/v1/stream/x", "/litefs/v1/info?x=1",
                                               "/%2e%2e/etc"]),
    "auth": st.just("right") | st.sampled_from(["right", "none", "wrong", "twice"]),
    "body": st.one_of(_stream_body.map(lambda v: json.dumps(v).encode()),
                      st.binary(max_size=200)),
    "extra_header": st.sampled_from(["", "Transfer-Encoding: chunked\r\n",
                                     "Content-Type: text/plain\r\n", "Expect: 100-continue\r\n",
                                     "Connection: close\r\n"]),
})


def _send(port: int, req: dict[str, object]) -> int:
    auth = {"right": f"Authorization: Bearer {SECRET}\r\n", "none": "",
            "wrong": "Authorization: Bearer x\r\n",
            "twice": f"Authorization: Bearer {SECRET}\r\n" * 2}[str(req["auth"])]
    body = req["body"]
    assert isinstance(body, bytes)
    head = (f"{req['method']} {req['path']} HTTP/1.1\r\nHost: x\r\n{auth}{req['extra_header']}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head.encode() + body)
        s.settimeout(1)  # a body the server still waits for (e.g. "chunked") is left there
        got = b""
        try:  # past an interim "100 Continue" to the final status line
            while chunk := s.recv(4096):
                got += chunk
                lines = [x for x in got.split(b"\r\n") if x.startswith(b"HTTP/1.1 ")]
                if any(status_of(x) != 100 for x in lines):
                    break
        except TimeoutError:
            pass
    finals = [status_of(x) for x in got.split(b"\r\n") if x.startswith(b"HTTP/1.1 ")]
    return next((c for c in finals if c != 100), 0)


def test_property_malformed_requests_never_hurt_the_server(cluster: Cluster) -> None:
    primary, replica = setup(cluster)
    port = cluster.port
    before = snapshot_of(primary)
    answers: dict[int, int] = {}

    @settings(max_examples=int(os.environ.get("LITEFS_FUZZ_EXAMPLES", "200")), deadline=None,
              suppress_health_check=list(HealthCheck), database=None)
    @given(_request)
    def drive(req: dict[str, object]) -> None:
        code = _send(port, req)
        answers[code] = answers.get(code, 0) + 1
        # Every answer is a known one: a stream (200), or a 4xx naming the problem.
        assert code in (200, 400, 401, 404, 405, 408, 411, 413, 431, 0), (code, req)
        if req["auth"] != "right":
            assert code in (400, 401, 0), (code, req)

    with steady_writer(primary):
        drive()
        # The server still serves: a fresh request works and the replica kept receiving.
        assert httpx.get(cluster.url + INFO, headers=AUTH, timeout=5).status_code == 200
    wait_same_pos(primary, replica, DB)
    assert rows(replica) == rows(primary)
    assert snapshot_of(primary) == before, "a request changed a database on the primary"
    assert "Traceback" not in primary.log()
    assert answers.get(400, 0) and answers.get(401, 0) and answers.get(200, 0), answers
    print(f"fuzz answers by status: {dict(sorted(answers.items()))}")
    commit_rows(primary, 1)
    wait_same_pos(primary, replica, DB)
