"""The HTTP proxy: what it adds to a request, side by side in one run.

    .venv/bin/python bench/proxy.py            # full run (about 3 minutes)
    .venv/bin/python bench/proxy.py --quick    # smoke test, under a minute

A primary and a replica, each a real `litefs mount` with the example notes app
(examples/webapp) and its proxy (tests/proxy/harness.py starts them as the tests do), on
loopback. A load generator in a process of its own (`bench/proxy.py _client SPEC`, raw
sockets, one keep-alive connection per worker, the request bytes built once) times:

1. GET /api/notes/1 (a point read, ~100-byte JSON) on the replica: straight to its app, and
   through its proxy (which sends it to the same app). A second replica runs the same proxy
   on Hypercorn + httpcore (LITEFS_PROXY_ENGINE=hypercorn), measured the same way against
   its own app: the library comparison. Latency: one connection, requests back
   to back, p50/p99. Throughput: CONC connections for a fixed time, requests/s.
2. POST /api/notes (a one-row INSERT): straight to the primary's app, through the primary's
   proxy (a write on the primary: app + __txid cookie), and through the replica's proxy
   (forwarded to the primary's proxy), also from the Hypercorn replica. p50/p99 of
   back-to-back requests.
3. The loopback round trip: a TCP ping-pong of 100 bytes, p50 (what one more hop costs the
   network at least).

Targets (issue 13): proxied GET latency <= 1.3x direct; forwarded POST p50 <= POST on the
primary + loopback RTT + 1 ms. Every case runs in each round, in rotating order; ratios are
per round, the median over rounds is reported with min-max.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, git_describe

# ---- the load generator (own process) ---------------------------------------------------------


def _read_response(sock: socket.socket, buf: bytearray) -> int:
    """Read one HTTP/1.1 response with Content-Length from `sock`; returns the status."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    buf[:] = rest[length:]
    return status


def _request(method: str, path: str, host: str, body: bytes = b"",
             cookie: str | None = None) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if body:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    if cookie:
        head.append(f"Cookie: {cookie}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def client_main(spec: dict[str, Any]) -> dict[str, Any]:
    host, port = spec["host"], spec["port"]
    method, path = spec["method"], spec["path"]
    conc, duration, count = spec["conc"], spec.get("duration"), spec.get("count")
    body = b'{"body": "a note from the benchmark", "author": "bench"}' \
        if method == "POST" else b""
    req = _request(method, path, f"{host}:{port}", body)
    lat: list[list[float]] = [[] for _ in range(conc)]
    errors = [0] * conc
    stop_at = time.monotonic() + duration if duration else None

    def worker(i: int) -> None:
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        n = 0
        while True:
            if stop_at is not None and time.monotonic() >= stop_at:
                break
            if count is not None and n >= count:
                break
            t = time.perf_counter()
            sock.sendall(req)
            status = _read_response(sock, buf)
            lat[i].append(time.perf_counter() - t)
            if status >= 400:
                errors[i] += 1
            n += 1
        sock.close()

    # Warm-up: connections opened, caches and pools filled.
    warm = socket.create_connection((host, port))
    wbuf = bytearray()
    for _ in range(spec.get("warmup", 50)):
        warm.sendall(req)
        _read_response(warm, wbuf)
    warm.close()
    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    all_lat = sorted(x for w in lat for x in w)
    return {"n": len(all_lat), "errors": sum(errors), "rps": len(all_lat) / elapsed,
            "p50_ms": 1000 * all_lat[len(all_lat) // 2],
            "p99_ms": 1000 * all_lat[min(len(all_lat) - 1, int(len(all_lat) * 0.99))]}


def run_client(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "_client", json.dumps(spec)],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"client failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def loopback_rtt(samples: int = 2000) -> float:
    """p50 of a 100-byte TCP ping-pong on loopback, in ms (an echo thread here)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def echo() -> None:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(100):
            conn.sendall(data)
        conn.close()

    t = threading.Thread(target=echo)
    t.start()
    c = socket.create_connection(srv.getsockname())
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = []
    for _ in range(samples):
        start = time.perf_counter()
        c.sendall(b"x" * 100)
        got = 0
        while got < 100:
            got += len(c.recv(100 - got))
        out.append(time.perf_counter() - start)
    c.close()
    t.join()
    srv.close()
    return 1000 * statistics.median(out)


# ---- the run -------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--conc", type=int, default=8, help="connections for the throughput runs")
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    lat_count = 300 if args.quick else 1500
    duration = 2.0 if args.quick else 5.0

    from tests.proxy.harness import ProxyCluster

    print(f"litefs-py proxy benchmark{git_describe(REPO)}; {os.cpu_count()} CPUs, "
          f"{rounds} rounds, {lat_count} sequential GETs ({lat_count // 3} POSTs) per latency "
          f"case, "
          f"{args.conc} connections x {duration:g}s per throughput case", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="litefs-proxy-bench-"))
    cluster = ProxyCluster(tmp)
    try:
        primary = cluster.node("primary", primary=True).start()
        replica = cluster.node("replica").start()
        # The same proxy served by Hypercorn with httpcore upstream, for the comparison.
        hyper = cluster.node("replica-hypercorn",
                             env={"LITEFS_PROXY_ENGINE": "hypercorn"}).start()
        import httpx

        with httpx.Client(base_url=primary.proxy_url, trust_env=False) as c:
            c.post("/api/notes", json={"body": "the note every GET reads"}).raise_for_status()
        for node in (replica, hyper):
            with httpx.Client(base_url=node.app_url, trust_env=False) as c:
                deadline = time.monotonic() + 30
                while c.get("/api/notes/1").status_code != 200:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{node.name} never saw note 1")
                    time.sleep(0.05)

        def spec(node_port: int, method: str, path: str, **kw: Any) -> dict[str, Any]:
            return {"host": "127.0.0.1", "port": node_port, "method": method, "path": path,
                    **kw}

        cases = {
            "GET app (replica)": spec(replica.app_port, "GET", "/api/notes/1"),
            "GET proxy (replica)": spec(replica.proxy_port, "GET", "/api/notes/1"),
            "GET app (replica 2)": spec(hyper.app_port, "GET", "/api/notes/1"),
            "GET hypercorn (replica 2)": spec(hyper.proxy_port, "GET", "/api/notes/1"),
            "POST app (primary)": spec(primary.app_port, "POST", "/api/notes"),
            "POST proxy (primary)": spec(primary.proxy_port, "POST", "/api/notes"),
            "POST forwarded (replica proxy)": spec(replica.proxy_port, "POST", "/api/notes"),
            "POST fwd hypercorn (replica 2)": spec(hyper.proxy_port, "POST", "/api/notes"),
        }
        lat: dict[str, list[dict[str, Any]]] = {k: [] for k in cases}
        tput: dict[str, list[dict[str, Any]]] = {k: [] for k in cases if k.startswith("GET")}
        rtts: list[float] = []
        names = list(cases)
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                # Writes are ~5x slower than reads: fewer of them keep the run short.
                count = lat_count if name.startswith("GET") else lat_count // 3
                lat[name].append(run_client({**cases[name], "conc": 1, "count": count}))
                if name in tput:
                    tput[name].append(run_client({**cases[name], "conc": args.conc,
                                                  "duration": duration}))
            rtts.append(loopback_rtt())
            print(f"round {r + 1}/{rounds} done", flush=True)
    finally:
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)  # logs, mounts' data: nothing to keep

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"

    print(f"\nloopback RTT p50: {med(rtts)} ms\n")
    print(f"{'case':<32} {'p50 ms':>22} {'p99 ms':>22} {'errors':>6}")
    for name, runs in lat.items():
        print(f"{name:<32} {med([x['p50_ms'] for x in runs]):>22} "
              f"{med([x['p99_ms'] for x in runs]):>22} {sum(x['errors'] for x in runs):>6}")
    print(f"\n{'throughput, ' + str(args.conc) + ' connections':<32} {'req/s':>22}")
    for name, runs in tput.items():
        print(f"{name:<32} {med([x['rps'] for x in runs]):>22}")

    def ratios(a: str, b: str, key: str, src: dict[str, list[dict[str, Any]]]) -> list[float]:
        return [x[key] / y[key] for x, y in zip(src[a], src[b], strict=True)]

    h50 = ratios("GET hypercorn (replica 2)", "GET app (replica 2)", "p50_ms", lat)
    hrps = ratios("GET hypercorn (replica 2)", "GET app (replica 2)", "rps", tput)
    hfwd = [x["p50_ms"] - y["p50_ms"] for x, y in zip(
        lat["POST fwd hypercorn (replica 2)"], lat["POST proxy (primary)"], strict=True)]
    g50 = ratios("GET proxy (replica)", "GET app (replica)", "p50_ms", lat)
    g99 = ratios("GET proxy (replica)", "GET app (replica)", "p99_ms", lat)
    grps = ratios("GET proxy (replica)", "GET app (replica)", "rps", tput)
    fwd_vs_proxy = [x["p50_ms"] - y["p50_ms"] for x, y in zip(
        lat["POST forwarded (replica proxy)"], lat["POST proxy (primary)"], strict=True)]
    fwd_vs_app = [x["p50_ms"] - y["p50_ms"] for x, y in zip(
        lat["POST forwarded (replica proxy)"], lat["POST app (primary)"], strict=True)]
    proxy_vs_app = [x["p50_ms"] - y["p50_ms"] for x, y in zip(
        lat["POST proxy (primary)"], lat["POST app (primary)"], strict=True)]
    print("\nper-round ratios and differences (median, min-max):")
    print(f"  GET latency proxy/direct p50:   {med(g50)}   (target <= 1.3)")
    print(f"  GET latency proxy/direct p99:   {med(g99)}")
    print(f"  GET req/s proxy/direct:         {med(grps)}")
    print(f"  POST forwarded - POST on the primary's proxy, p50: {med(fwd_vs_proxy)} ms "
          f"(target <= RTT + 1 ms = {statistics.median(rtts) + 1:.3f})")
    print(f"  POST forwarded - POST to the primary's app, p50:   {med(fwd_vs_app)} ms")
    print(f"  POST on the primary's proxy - to its app, p50:     {med(proxy_vs_app)} ms")
    print("  the same with Hypercorn + httpcore (LITEFS_PROXY_ENGINE=hypercorn):")
    print(f"    GET latency proxy/direct p50: {med(h50)}; req/s proxy/direct {med(hrps)}")
    print(f"    POST forwarded - POST on the primary's proxy, p50: {med(hfwd)} ms")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_client":
        print(json.dumps(client_main(json.loads(sys.argv[2]))))
    else:
        main()
