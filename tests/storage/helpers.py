"""Storage test data (LTX-looking bytes, upload metadata) and loopback servers: a TCP tap
that records what a client really sends, a stub S3 that answers every request with one canned
error, and a server that never answers."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from litefs_py.ltx import Header
from litefs_py.storage.base import META_CHECKSUM, META_TIMESTAMP, format_timestamp

_REQUEST_HEAD = re.compile(
    rb"(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/1\.1\r\n(.*?)\r\n\r\n", re.DOTALL)


TS = 1_767_225_600_123  # 2026-01-01T00:00:00.123Z, an LTX timestamp in ms


def meta(ts_ms: int = TS, checksum: int | None = 0x0123456789ABCDEF) -> dict[str, str]:
    """Upload metadata: the Litestream timestamp and (optionally) a post-apply checksum."""
    m = {META_TIMESTAMP: format_timestamp(ts_ms)}
    if checksum is not None:
        m[META_CHECKSUM] = f"{checksum:016x}"
    return m


def ltx_bytes(min_txid: int, max_txid: int, timestamp_ms: int, size: int = 4096) -> bytes:
    """`size` bytes that start with a valid LTX header (enough for storage tests)."""
    header = Header(page_size=4096, commit=1, min_txid=min_txid, max_txid=max_txid,
                    timestamp=timestamp_ms, flags=2).encode()
    body = bytes((i * 7 + min_txid) % 251 for i in range(max(0, size - len(header))))
    return header + body


@dataclass
class WireRequest:
    method: str
    target: str
    headers: dict[str, str]  # names lowercased


class TcpTap:
    """Forwards 127.0.0.1:<port> to an upstream host:port and records the bytes clients send."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sent: list[bytearray] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self._listener.settimeout(0.1)
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            record = bytearray()
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sent.append(record)
                self._sockets += [client, upstream]
            for src, dst, rec in ((client, upstream, record), (upstream, client, None)):
                t = threading.Thread(target=self._pump, args=(src, dst, rec), daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record is not None:
                    record += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def requests(self) -> list[WireRequest]:
        """Request heads seen so far, in order per connection."""
        out = []
        with self._lock:
            streams = [bytes(b) for b in self._sent]
        for data in streams:
            for m in _REQUEST_HEAD.finditer(data):
                headers = {}
                for line in m.group(3).split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower().decode()] = value.strip().decode()
                out.append(WireRequest(m.group(1).decode(), m.group(2).decode(), headers))
        return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        self._threads[0].join(timeout=5)
        self._listener.close()
        for s in sockets:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self._threads:
            t.join(timeout=5)


@dataclass
class StubS3:
    """Answers every request with `status` and an S3 XML error `code` (HEAD: no body)."""

    status: int
    code: str
    message: str = "stubbed error"
    requests: list[tuple[str, str]] = field(default_factory=list)


@contextmanager
def stub_s3(status: int, code: str, message: str = "stubbed error") -> Iterator[
        tuple[StubS3, str]]:
    """(stub, endpoint): a loopback HTTP server answering like S3 with one error."""
    stub = StubS3(status, code, message)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            stub.requests.append((self.command, self.path))
            body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{stub.code}</Code>'
                    f"<Message>{stub.message}</Message><RequestId>stub</RequestId></Error>"
                    ).encode()
            self.send_response(stub.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def silent_server() -> Iterator[str]:
    """An endpoint that accepts connections and never answers (read timeouts)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
        for conn in held:
            conn.close()
