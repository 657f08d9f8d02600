"""An HTTP-aware proxy in front of moto_server that answers like a hostile S3.

`S3FaultProxy(upstream_endpoint)` listens on 127.0.0.1 (a free port) and forwards each
HTTP/1.1 request to the upstream server (one upstream connection per client connection,
headers passed through as sent, so signatures stay valid). Faults are rules added with
`add(Fault(...))`: the first rule whose `method` and `pattern` (a regex searched in
`"METHOD /path?query"`) match a request, and that has uses left, is applied to it:

- `error`: answer `status`/`code` (an S3 XML error, e.g. 503 SlowDown, 500 InternalError)
  without forwarding: the server never sees the request.
- `error_after`: forward (the server stores a PUT), then answer the error instead of the
  server's answer: the client cannot know the request took effect.
- `reset_after`: forward, then reset the connection (RST) without any answer.
- `reset_mid_body`: forward, send the answer's headers and half its body, then reset.
- `short_length` / `long_length`: forward, announce a Content-Length `delta` bytes smaller /
  larger than the body, send the body, close the connection.
- `flip_body`: forward, flip one bit in the middle of the answer's body.
- `not_found`: answer 404 NoSuchKey without forwarding (a listed object that is gone).

`clock_offset` (seconds) makes the proxy's clock differ from this machine's: requests signed
more than 15 minutes away from it are refused with 403 RequestTimeTooSkewed (the error carries
`ServerTime`, the `Date` header the proxy's time), as S3 does; every answer's `Date` header is
the proxy's time.

`exchanges` records every request (method, target, status sent, fault applied) for
assertions. Threads only; `close()` stops everything. Use as a context manager.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import re
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

MAX_SKEW = 15 * 60  # seconds S3 accepts between the signing time and its own clock
_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "expect",
                          "proxy-connection", "te", "upgrade"})
ACTIONS = frozenset({"error", "error_after", "reset_after", "reset_mid_body", "short_length",
                     "long_length", "flip_body", "not_found"})


@dataclass
class Fault:
    """One rule. `times` uses (None: unlimited); `hits` counts the requests it was applied
    to."""

    action: str
    pattern: str = ""  # regex searched in "METHOD /path?query"
    method: str | None = None  # GET, PUT, HEAD, ... (None: any)
    times: int | None = 1
    status: int = 503
    code: str = "SlowDown"
    delta: int = 100  # bytes, for short_length / long_length
    hits: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}")
        self._re = re.compile(self.pattern)

    def matches(self, method: str, target: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method != method:
            return False
        return self._re.search(f"{method} {target}") is not None


@dataclass
class Exchange:
    method: str
    target: str
    status: int | None = None  # None: the connection was reset before an answer
    fault: str | None = None
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


class S3FaultProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.clock_offset = 0.0
        self.faults: list[Fault] = []
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def count(self, method: str | None = None, pattern: str = "",
              fault: str | None = None) -> int:
        """Requests seen whose method and "METHOD target" match (and that got `fault`)."""
        rx = re.compile(pattern)
        with self._lock:
            return sum(1 for e in self.exchanges
                       if (method is None or e.method == method)
                       and rx.search(f"{e.method} {e.target}")
                       and (fault is None or e.fault == fault))

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> S3FaultProxy:
        t = threading.Thread(target=self._accept_loop, daemon=True, name=f"s3 proxy :{self.port}")
        t.start()
        self._threads.append(t)
        return self

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)  # wakes the thread reading from it
            _reset(c)
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing ----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(client)
            t = threading.Thread(target=self._serve, args=(client,), daemon=True,
                                 name=f"s3 proxy conn :{self.port}")
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _now(self) -> float:
        return time.time() + self.clock_offset

    def _match(self, method: str, target: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.matches(method, target):
                    f.hits += 1
                    return f
        return None

    def _record(self, req: _Request, status: int | None, fault: str | None) -> None:
        with self._lock:
            self.exchanges.append(Exchange(req.method, req.target, status, fault))

    def _serve(self, client: socket.socket) -> None:
        rfile = client.makefile("rb")
        upstream: http.client.HTTPConnection | None = None
        graceful = False  # end with FIN (all data delivered) rather than RST
        try:
            while not self._closed:
                req = _read_request(rfile, client)
                if req is None:
                    return
                skewed = self._skew_error(req)
                if skewed is not None:
                    self._record(req, 403, "clock_skew")
                    client.sendall(skewed)
                    continue
                fault = self._match(req.method, req.target)
                if fault is not None and fault.action in ("error", "not_found"):
                    status, code = (404, "NoSuchKey") if fault.action == "not_found" else \
                        (fault.status, fault.code)
                    self._record(req, status, fault.action)
                    client.sendall(self._error(status, code, req))
                    continue
                if upstream is None:
                    upstream = http.client.HTTPConnection(*self.upstream, timeout=60)
                status, headers, body = _forward(upstream, req)
                if fault is None:
                    self._record(req, status, None)
                    client.sendall(self._response(status, headers, body, req.method))
                    continue
                action = fault.action
                self._record(req, None if action.startswith("reset") else status, action)
                if action == "error_after":
                    client.sendall(self._error(fault.status, fault.code, req))
                elif action == "reset_after":
                    return  # the finally clause resets
                elif action == "reset_mid_body":
                    whole = self._response(status, headers, body, req.method)
                    head_len = len(whole) - len(body)
                    client.sendall(whole[:head_len + len(body) // 2])
                    time.sleep(0.05)  # let the client read it before the reset
                    return
                elif action in ("short_length", "long_length"):
                    delta = -fault.delta if action == "short_length" else fault.delta
                    client.sendall(self._response(status, headers, body, req.method,
                                                  length=max(0, len(body) + delta),
                                                  close=True))
                    graceful = True
                    return
                elif action == "flip_body":
                    damaged = bytearray(body)
                    if damaged:
                        damaged[len(damaged) // 2] ^= 0x01
                    client.sendall(self._response(status, headers, bytes(damaged),
                                                  req.method))
        except OSError:
            return
        finally:
            if upstream is not None:
                upstream.close()
            if graceful:
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_WR)
                    client.settimeout(1)
                    while not self._closed and client.recv(65536):
                        pass  # until the client closes its side (close() resets it)
            with self._lock:
                self._conns.discard(client)
            if graceful:
                with contextlib.suppress(OSError):
                    client.close()
            else:
                _reset(client)

    def _date(self) -> str:
        return email.utils.formatdate(self._now(), usegmt=True)

    def _skew_error(self, req: _Request) -> bytes | None:
        signed = req.header("x-amz-date")
        if not signed:
            return None
        try:
            at = datetime.strptime(signed, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            return None
        now = self._now()
        if abs(now - at) <= MAX_SKEW:
            return None
        server = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        extra = (f"<RequestTime>{signed}</RequestTime><ServerTime>{server}</ServerTime>"
                 f"<MaxAllowedSkewMilliseconds>{MAX_SKEW * 1000}</MaxAllowedSkewMilliseconds>")
        return self._error(403, "RequestTimeTooSkewed", req, extra,
                           "The difference between the request time and the current time is "
                           "too large.")

    def _error(self, status: int, code: str, req: _Request, extra: str = "",
               message: str | None = None) -> bytes:
        text = message or f"injected {code}"
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{text}</Message>{extra}<Resource>{req.target.split('?')[0]}"
                f"</Resource><RequestId>{uuid.uuid4().hex[:16]}</RequestId></Error>").encode()
        headers = [("Content-Type", "application/xml"), ("x-amz-request-id", "proxy")]
        return self._response(status, headers, body, req.method)

    def _response(self, status: int, headers: list[tuple[str, str]], body: bytes, method: str,
                  *, length: int | None = None, close: bool = False) -> bytes:
        reason = http.client.responses.get(status, "Status")
        lines = [f"HTTP/1.1 {status} {reason}"]
        for k, v in headers:
            if k.lower() in _HOP_HEADERS or k.lower() in ("date", "content-length", "server"):
                continue
            lines.append(f"{k}: {v}")
        lines.append(f"Date: {self._date()}")
        original = next((v for k, v in headers if k.lower() == "content-length"), None)
        if method == "HEAD":
            # A HEAD answer announces the object's length and carries no body.
            lines.append(f"Content-Length: {original if original is not None else 0}")
            body = b""
        else:
            lines.append(f"Content-Length: {len(body) if length is None else length}")
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _read_request(rfile: object, client: socket.socket) -> _Request | None:
    readline = rfile.readline  # type: ignore[attr-defined]
    read = rfile.read  # type: ignore[attr-defined]
    line = readline(65537)
    while line in (b"\r\n", b"\n"):
        line = readline(65537)
    if not line:
        return None
    try:
        method, target, _version = line.decode("latin-1").split()
    except ValueError:
        return None
    headers: list[tuple[str, str]] = []
    while True:
        h = readline(65537)
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers.append((k.strip(), v.strip()))
    req = _Request(method, target, headers, b"")
    if (req.header("expect") or "").lower() == "100-continue":
        client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    length = int(req.header("content-length") or 0)
    req.body = read(length) if length else b""
    return req


def _forward(conn: http.client.HTTPConnection,
             req: _Request) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send `req` upstream as it came (its own Host and signature), return the answer."""
    for attempt in (1, 2):
        try:
            conn.putrequest(req.method, req.target, skip_host=True, skip_accept_encoding=True)
            for k, v in req.headers:
                if k.lower() not in _HOP_HEADERS:
                    conn.putheader(k, v)
            conn.endheaders(req.body or None)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, resp.getheaders(), body
        except (http.client.HTTPException, OSError):
            conn.close()  # the upstream closed a kept-alive connection: once more
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
