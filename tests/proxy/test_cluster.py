"""The example web app on a primary and two replicas, each behind its own proxy (separate
`litefs mount` processes, mounts, apps and proxies on loopback), driven by a real HTTP
client through the replicas' proxies."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.needs import need_tool
from tests.proxy.harness import Node, ProxyCluster, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyCluster]:
    c = ProxyCluster(tmp_path_factory.mktemp("proxy-cluster"))
    try:
        c.node("primary", primary=True).start()
        c.node("replica1").start()
        c.node("replica2").start()
        yield c
    finally:
        c.close()


def nodes(c: ProxyCluster) -> tuple[Node, Node, Node]:
    primary, r1, r2 = c.nodes
    return primary, r1, r2


def primary_rows(primary: Node, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Read the primary's database through its own mount (as any reader would)."""
    con = sqlite3.connect(f"file:{primary.db_path}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def test_write_via_replica_lands_on_primary_and_is_read_back_next_request(
        cluster: ProxyCluster) -> None:
    primary, r1, r2 = nodes(cluster)
    for replica in (r1, r2):
        with replica.client() as c:
            for i in range(5):
                body = f"from {replica.name} #{i} {os.urandom(4).hex()}"
                resp = c.post("/api/notes", json={"body": body, "author": replica.name})
                assert resp.status_code == 201, resp.text
                assert "__txid" in c.cookies
                note_id = resp.json()["id"]
                # The very next request, on the replica, with the cookie: the note is there.
                got = c.get(f"/api/notes/{note_id}")
                assert got.status_code == 200, got.text
                assert got.json()["body"] == body
                assert primary_rows(primary, "SELECT body FROM notes WHERE id = ?",
                                    note_id) == [(body,)]
    # The form POST of the HTML page: 303 back to the page, which shows the note.
    with r2.client(follow_redirects=True) as c:
        resp = c.post("/notes", data={"author": "form", "body": "typed in a browser"})
        assert resp.status_code == 200 and "typed in a browser" in resp.text
        assert resp.history[0].status_code == 303


def test_health_says_role_lag_and_ready(cluster: ProxyCluster) -> None:
    primary, r1, _ = nodes(cluster)
    with primary.client() as c:
        doc = c.get("/litefs/health").json()
        assert doc["role"] == "primary" and doc["ready"] is True
    with r1.client() as c:
        h = c.get("/litefs/health")
        assert h.status_code == 200
        assert h.json()["role"] == "replica" and h.json()["primary"] == cluster.primary_url


def test_500_concurrent_mixed_requests_lose_nothing_duplicate_nothing(
        cluster: ProxyCluster) -> None:
    primary, r1, r2 = nodes(cluster)
    tag = os.urandom(4).hex()
    local = threading.local()
    opened: list[httpx.Client] = []
    # Idle connections are dropped well before the proxies' keep-alive timer ends them: a
    # client reusing one the server is closing loses the request.
    limits = httpx.Limits(keepalive_expiry=1.0)

    def client(node: Node) -> httpx.Client:
        clients = getattr(local, "clients", None)
        if clients is None:
            clients = local.clients = {}
        if node.name not in clients:
            clients[node.name] = node.client(timeout=120, limits=limits)
            opened.append(clients[node.name])
        return clients[node.name]

    def request(i: int) -> tuple[str, int, str]:
        node = r1 if i % 4 < 2 else r2
        if i % 2:
            r = client(node).get("/api/notes", params={"limit": 5})
            return "GET", r.status_code, r.text
        body = f"{tag}-{i}"
        r = client(node).post("/api/notes", json={"body": body, "author": "load"})
        return body, r.status_code, r.text

    try:
        with ThreadPoolExecutor(max_workers=64) as pool:
            results = list(pool.map(request, range(500)))
    finally:
        for c in opened:
            c.close()
    problems = [f"{what} {code}: {text[:200]}" for what, code, text in results
                if code not in (200, 201)]
    assert not problems, problems[:5]
    posts = {what for what, _, _ in results if what != "GET"}
    assert len(posts) == 250
    rows = primary_rows(primary, "SELECT body, count(*) FROM notes WHERE body LIKE ? "
                                 "GROUP BY body", f"{tag}-%")
    # Every acknowledged write is there exactly once: none lost, none applied twice.
    assert {body for body, _ in rows} == posts and {n for _, n in rows} == {1}


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_streamed_upload_passes_through_without_buffering(cluster: ProxyCluster) -> None:
    primary, r1, _ = nodes(cluster)
    size, piece = 96 << 20, 64 << 10
    pieces = size // piece
    digest = hashlib.sha256()
    block = os.urandom(piece)
    for _ in range(pieces):
        digest.update(block)
    procs = [n.mount.proc for n in (primary, r1)]
    before = [vm_hwm_kib(p.pid) for p in procs if p is not None]

    def body() -> Iterator[bytes]:
        for _ in range(pieces):
            yield block

    with r1.client(timeout=300) as c:
        resp = c.post("/api/uploads", content=body(), headers={"x-author": "big"})
    assert resp.status_code == 201, resp.text
    doc = resp.json()
    assert doc["bytes"] == size and doc["sha256"] == digest.hexdigest()
    assert doc["chunks"] > 1  # the app read it as it came
    after = [vm_hwm_kib(p.pid) for p in procs if p is not None]
    # Neither litefs process (the replica's proxy, the primary's) ever held the upload:
    # their peak memory grew by far less than its 96 MiB.
    grown = [(a - b) // 1024 for a, b in zip(after, before, strict=True)]
    assert max(grown) < 32, f"peak RSS grew by {grown} MiB"


def test_sse_events_stream_through_a_replica(cluster: ProxyCluster) -> None:
    primary, r1, r2 = nodes(cluster)
    last = primary_rows(primary, "SELECT max(id) FROM notes")[0][0]
    with r1.client(timeout=httpx.Timeout(60, read=60)) as c, r2.client() as w, \
            c.stream("GET", "/api/notes/events", params={"after": last, "limit": 3}) as s:
        assert s.status_code == 200
        assert s.headers["content-type"].startswith("text/event-stream")
        lines = s.iter_lines()
        assert next(lines) == ": notes"  # the stream is open before any event exists
        for i in range(3):
            # One write at a time: its event arrives before the next write is made,
            # so the response is passed on as it is produced, not at its end.
            body = f"event {i} {os.urandom(3).hex()}"
            assert w.post("/api/notes", json={"body": body}).status_code == 201
            event = []
            for line in lines:
                if not line:
                    if event:
                        break
                    continue
                event.append(line)
            assert event[1] == "event: note" and body in event[2], event
        assert list(lines) == []  # limit=3: the app ended it, the proxy passed the end on


def test_hostile_clients_get_4xx_or_are_cut_and_others_are_served(
        cluster: ProxyCluster) -> None:
    _, r1, _ = nodes(cluster)
    # A node of its own (a replica mount and a proxy, no app: it serves replica1's app) with
    # a short read-header-timeout, so that the slow clients are cut quickly.
    edge = cluster.node("edge", app=False, proxy={"read-header-timeout": "2s",
                                                  "target": f"127.0.0.1:{r1.app_port}"})
    edge.start()
    try:
        hostile(edge)
    finally:
        edge.stop()
        cluster.nodes.remove(edge)


def hostile(edge: Node) -> None:
    port = edge.proxy_port

    def raw(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(data)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    assert raw(b"BLAH\x00\x01\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n").startswith(b"HTTP/1.1 400")
    big = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 64_000 + b"\r\n\r\n"
    assert raw(big).startswith(b"HTTP/1.1 431")

    # 30 slowloris clients trickle a request head; the proxy has read-header-timeout 2s:
    # each is cut, and meanwhile normal requests are answered.
    slow = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(30)]
    try:
        for s in slow:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        served = 0
        with edge.client() as c:
            for _ in range(20):
                assert c.get("/api/notes", params={"limit": 1}).status_code == 200
                served += 1
        cut = 0
        started = time.monotonic()
        for s in slow:
            try:
                while True:
                    s.sendall(b"X-A: b\r\n")
                    time.sleep(0.1)
            except OSError:
                cut += 1
        assert served == 20 and cut == 30
        assert time.monotonic() - started < 120  # cut by the timeout, not by us giving up
    finally:
        for s in slow:
            s.close()


def test_primary_down_writes_wait_then_503_reads_still_served(tmp_path: Path) -> None:
    """A primary that dies: writes through a replica wait primary-redirect-timeout for it,
    then 503 with Retry-After; reads keep being served by the replica.

    Hook for elections (issue 12): when a new primary takes the lease, the same write must
    succeed through the same replica proxy (`LeasePrimary` follows the holder)."""
    c = ProxyCluster(tmp_path)
    try:
        primary = c.node("primary", primary=True).start()
        replica = c.node("replica", proxy={"primary-redirect-timeout": "1s"}).start()
        with replica.client() as cl:
            assert cl.post("/api/notes", json={"body": "before"}).status_code == 201
            wait_for(lambda: cl.get("/api/notes").status_code == 200, 30, "a read")
            primary.mount.kill_node()
            wait_for(lambda: primary.mount.proc is not None
                     and primary.mount.proc.poll() is not None, 30, "the primary to die")
            started = time.monotonic()
            resp = cl.post("/api/notes", json={"body": "during"})
            assert resp.status_code == 503, resp.text
            assert time.monotonic() - started >= 1.0
            assert int(resp.headers["retry-after"]) >= 1
            assert "primary-redirect-timeout" in resp.text
            notes = cl.get("/api/notes")
            assert notes.status_code == 200 and notes.json()[0]["body"] == "before"
    finally:
        c.close()


def litefs_run(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "litefs_py", "run", "--config",
                           str(node.config_path), "--mount-dir", str(node.mount.mount_dir),
                           *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


WRITER = """
import os, sqlite3, sys
con = sqlite3.connect(os.environ["NOTES_DB"], timeout=30)
with con:
    cur = con.execute("INSERT INTO notes(body, author) VALUES (?, 'cron')", (sys.argv[1],))
print("inserted", cur.lastrowid, flush=True)
print("a warning", file=sys.stderr, flush=True)
sys.exit(int(sys.argv[2]))
"""


def test_litefs_run_refuses_on_a_replica_or_runs_on_the_primary(cluster: ProxyCluster) -> None:
    primary, r1, _ = nodes(cluster)
    body = f"written by litefs run {os.urandom(3).hex()}"
    refused = litefs_run(r1, "--", sys.executable, "-c", WRITER, body, "0")
    assert refused.returncode == 2, refused.stderr
    assert "read-only replica" in refused.stderr and cluster.primary_url in refused.stderr
    assert "--on-primary" in refused.stderr

    # On the primary's node: its database path there comes with --env (the same path on
    # every node in a real deployment). Output, errors and the exit status come back.
    ran = litefs_run(r1, "--on-primary", "--env", f"NOTES_DB={primary.db_path}", "--",
                     sys.executable, "-c", WRITER, body, "3")
    assert ran.returncode == 3, ran.stderr
    assert ran.stdout.startswith("inserted ") and "a warning" in ran.stderr
    assert primary_rows(primary, "SELECT author FROM notes WHERE body = ?", body) == [("cron",)]
    with r1.client() as c:  # and it replicates like any write
        wait_for(lambda: any(n["body"] == body for n in c.get("/api/notes").json()), 30,
                 "the note written on the primary to reach replica1")

    missing = litefs_run(r1, "--on-primary", "--", "/nonexistent/tool")
    assert missing.returncode == 127 and "cannot start /nonexistent/tool" in missing.stderr

    # On the primary itself the command simply runs there.
    local = litefs_run(primary, "--env", f"NOTES_DB={primary.db_path}", "--",
                       sys.executable, "-c", WRITER, body + " local", "0")
    assert local.returncode == 0 and local.stdout.startswith("inserted "), local.stderr


def chromium() -> str:
    """Debian's headless-capable chromium (scripts/setup.sh --test installs it)."""
    return shutil.which("chromium-browser") or need_tool("chromium", "chromium")


def test_browser_form_post_through_a_replica(cluster: ProxyCluster, tmp_path: Path) -> None:
    """A real browser: headless Chromium submits the page's form to a replica's proxy,
    follows the 303 back to the page (with the __txid cookie) and sees its note."""
    exe = chromium()
    primary, _, r2 = nodes(cluster)
    body = f"typed in Chromium {os.urandom(3).hex()}"
    page = tmp_path / "submit.html"
    page.write_text(f'<form method="post" action="{r2.proxy_url}/notes">'
                    '<input name="author" value="chromium">'
                    f'<textarea name="body">{body}</textarea></form>'
                    "<script>document.forms[0].submit()</script>")
    shot = tmp_path / "after-post.png"
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000", "--window-size=900,700"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert body in dom.stdout, dom.stderr[-2000:]
    assert "<h1>Notes</h1>" in dom.stdout  # the app's page, after the redirect
    assert primary_rows(primary, "SELECT author FROM notes WHERE body = ?",
                        body) == [("chromium",)]
    # A picture of the page as the browser showed it (kept with the test's files).
    grab = subprocess.run([*base, f"--screenshot={shot}", f"{r2.proxy_url}/"],
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert shot.exists() and shot.stat().st_size > 1000, grab.stderr[-2000:]
    assert shot.read_bytes().startswith(b"\x89PNG")
