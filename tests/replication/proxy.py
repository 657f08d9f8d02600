"""A small TCP proxy for fault injection between `litefs mount` and the S3 server.

`TcpProxy(upstream_port).start()` listens on 127.0.0.1 (its own free port, kept for its
whole life) and forwards every connection to the upstream port. Faults:

- `down()`: the endpoint is gone — the listening socket is closed (new connections are
  refused) and every open connection is reset. `up()` listens on the same port again.
- `delay`: seconds slept before forwarding each chunk client → server (slow uploads, so a
  PUT is in flight most of the time).
- `hold_once(pattern, seconds)`: the first client → server chunk containing `pattern` (e.g.
  `b".ltx HTTP/1.1"`: the first request for an object, not a listing) waits that long.
- `lose_response_once(pattern)`: the first request containing `pattern` reaches the server,
  but its response never reaches the client: the proxy goes `down()` as the request passes
  (only that connection stays, to carry it) and resets it when the answer comes (an upload
  the server stored while the client saw its connection reset, and retries refused).

`requests` keeps the request lines the proxy forwarded (the last 200), with the time each
was seen and the time its response came back, so a test that waits for a fault can say what
the client sent instead.

Threads only; `close()` stops everything and joins the threads. Use as a context manager.
"""

from __future__ import annotations

import collections
import contextlib
import re
import socket
import struct
import threading
import time


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1",
                 delay: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.port = 0
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.accepted = 0
        self._hold: tuple[bytes, float] | None = None
        self._lose: bytes | None = None
        self.lost_responses = 0
        self.requests: collections.deque[list[object]] = collections.deque(maxlen=200)

    def hold_once(self, pattern: bytes, seconds: float) -> None:
        self._hold = (pattern, seconds)

    def lose_response_once(self, pattern: bytes) -> None:
        self._lose = pattern

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._listen()
        return self

    def _listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self._listener = s
        t = threading.Thread(target=self._accept_loop, args=(s,), daemon=True,
                             name=f"proxy accept :{self.port}")
        t.start()
        self._threads.append(t)

    def down(self, keep: tuple[socket.socket, ...] = ()) -> None:
        """Refuse new connections and reset the open ones (except the sockets in `keep`)."""
        s, self._listener = self._listener, None
        if s is not None:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._reset_all(keep)

    def up(self) -> None:
        if self._listener is None:
            for _ in range(50):  # the port may linger for a moment
                try:
                    self._listen()
                    return
                except OSError:
                    time.sleep(0.05)
            self._listen()

    def close(self) -> None:
        self._closed = True
        self.down()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing ----------------------------------------------------------------------

    def _reset_all(self, keep: tuple[socket.socket, ...] = ()) -> None:
        with self._lock:
            conns = [c for c in self._conns if c not in keep]
            self._conns = {c for c in self._conns if c in keep}
        for c in conns:
            with contextlib.suppress(OSError):
                # RST instead of FIN: what a vanished endpoint looks like to the client.
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._closed:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed (down() or close())
            if self._listener is not listener:
                client.close()
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self.accepted += 1
            with self._lock:
                self._conns.update((client, server))
            armed: list[bool] = []  # set by this connection's request pump, read by its reply pump
            for src, dst, slow in ((client, server, True), (server, client, False)):
                t = threading.Thread(target=self._pump, args=(src, dst, slow, armed), daemon=True,
                                     name=f"proxy pump :{self.port}")
                t.start()
                self._threads.append(t)
            self._threads = [t for t in self._threads if t.is_alive()]

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool,
              armed: list[bool]) -> None:
        tail = b""  # the end of the previous chunk: a pattern may straddle two chunks
        request: list[object] | None = None  # the entry in `requests` of the last request
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                seen = tail + data
                tail = data[-64:]
                if slow and self.delay:
                    time.sleep(self.delay)
                if slow and _REQUEST_LINE.match(data):
                    self.requests.append([time.monotonic(), data.split(b"\r\n", 1)[0], None])
                    request = self.requests[-1]
                elif (not slow and data.startswith(b"HTTP/") and self.requests
                      and self.requests[-1][2] is None):
                    self.requests[-1][2] = time.monotonic()
                hold = self._hold
                if slow and hold is not None and hold[0] in seen:
                    self._hold = None
                    time.sleep(hold[1])
                lose = self._lose
                if slow and lose is not None and lose in seen:
                    self._lose = None
                    armed.append(True)
                    if request is not None:
                        request.append("response to be lost")
                    # From now on the endpoint is gone for everything else too, so that no
                    # retry (after a client read timeout, on a new or a pooled connection)
                    # can get an answer while this request waits for its own.
                    self.down(keep=(src, dst))
                # The final response to that request is never delivered; interim "100
                # Continue" responses (which let botocore send the body) still are, also when
                # the final one arrives in the same chunk.
                if not slow and armed:
                    interim, final = _split_interim(data)
                    if interim:
                        dst.sendall(interim)
                    if final:
                        self.lost_responses += 1
                        self.down()
                        break
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()


_REQUEST_LINE = re.compile(rb"(GET|PUT|POST|DELETE|HEAD) /")


def _split_interim(data: bytes) -> tuple[bytes, bytes]:
    """Split a server → client chunk into its leading interim (1xx) responses and the rest."""
    interim = b""
    while data.startswith(b"HTTP/1.1 1"):
        end = data.find(b"\r\n\r\n")
        if end < 0:
            break
        interim, data = interim + data[:end + 4], data[end + 4:]
    return interim, data
