"""A small HTTP/1.1 server for the proxy: trio sockets, httptools (llhttp) parsing, an ASGI
interface to the proxy's handler.

Why not Hypercorn here: bench/proxy.py measured Hypercorn's per-request cost (h11 in pure
Python, an event and a task per step, one socket write per ASGI message) at about the cost of
the whole application request it forwards; this server parses in C, starts no task per
request and writes a response head together with its first body bytes.

What it does (and what the proxy needs): keep-alive and pipelined requests, one at a time per
connection; request bodies streamed to the handler with TCP back-pressure (chunked bodies
decoded by the parser); responses framed by their Content-Length, else chunked (HTTP/1.1) or
closed (HTTP/1.0); `Expect: 100-continue` answered when the body is first read;
`http.disconnect` when the client goes away. Limits: an idle connection is closed after
`idle_timeout`, a request head must arrive within `header_timeout` of its first byte (408,
then close: the slowloris bound), a head larger than `max_header_size` gets 431, a body
stalled longer than `read_timeout` ends the request, malformed requests get 400, upgrades
(WebSocket, CONNECT) 501.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket as pysocket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import httptools
import trio

from .sockio import SockIO, accept

log = logging.getLogger("litefs.proxy.server")

Scope = dict[str, Any]
Message = dict[str, Any]
App = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
               Awaitable[None]]

READ_SIZE = 65536
REASONS = {200: b"OK", 400: b"Bad Request", 408: b"Request Timeout",
           431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
           501: b"Not Implemented"}
NO_BODY_STATUS = frozenset({204, 304})


class _HeadTooLarge(Exception):
    pass


class _Request:
    """One request as the parser delivers it (there may be a pipelined one behind it)."""

    __slots__ = ("body", "complete", "expect_continue", "headers", "headers_done",
                 "keep_alive", "method", "url", "version")

    def __init__(self) -> None:
        self.method = "GET"
        self.version = "1.1"
        self.keep_alive = False
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.body: deque[bytes] = deque()
        self.complete = False
        self.expect_continue = False


class _Connection:
    def __init__(self, server: Http1Server, stream: SockIO,
                 client: tuple[str, int] | None) -> None:
        self.server = server
        self.stream = stream
        self.parser = httptools.HttpRequestParser(self)
        self.requests: deque[_Request] = deque()
        self.head_size = 0
        self.eof = False
        self.client = client

    # ---- parser callbacks (run inside feed_data) -----------------------------------------

    def on_message_begin(self) -> None:
        self.requests.append(_Request())
        self.head_size = 0

    def on_url(self, url: bytes) -> None:
        self.requests[-1].url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        lname = name.lower()
        if lname == b"expect" and value.lower() == b"100-continue":
            self.requests[-1].expect_continue = True
            return  # answered here, not passed on
        self.requests[-1].headers.append((lname, value))

    def on_headers_complete(self) -> None:
        req = self.requests[-1]
        req.headers_done = True
        # Read now: llhttp forgets them once the message is complete.
        req.method = self.parser.get_method().decode("ascii")
        req.version = self.parser.get_http_version()
        req.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.requests[-1].body.append(body)

    def on_message_complete(self) -> None:
        self.requests[-1].complete = True

    def _count(self, n: int) -> None:
        self.head_size += n
        if self.head_size > self.server.max_header_size:
            raise _HeadTooLarge()

    # ---- reading ---------------------------------------------------------------------------

    async def _read(self, wait_first: bool = False) -> bool:
        """Read once and feed the parser; False at EOF. Parser errors propagate."""
        data = await self.stream.recv(READ_SIZE, wait_first=wait_first)
        if not data:
            self.eof = True
            return False
        self.parser.feed_data(data)
        return True

    async def _next_head(self, first: bool) -> _Request | None:
        """Wait for the next complete request head; None when the connection is to close
        (EOF, timeout, bad request: answered here). A new connection gets header_timeout
        for its first head, a kept-alive one idle_timeout before the next head begins; once
        a head's first byte is in, it has header_timeout to be complete."""
        s = self.server
        now = trio.current_time()
        idle_until = now + (s.header_timeout if first else s.idle_timeout)
        head_until = math.inf if not self.requests else now + s.header_timeout
        try:
            while not (self.requests and self.requests[0].headers_done):
                started = bool(self.requests)
                with trio.move_on_at(head_until if started else idle_until) as scope:
                    more = await self._read(wait_first=not first and not started)
                if scope.cancelled_caught:
                    if started:
                        await self._error(408, b"request head not received in time")
                    return None
                if not more:
                    return None
                if self.requests and not started:
                    head_until = trio.current_time() + s.header_timeout
        except _HeadTooLarge:
            await self._error(431, b"request header fields too large")
            return None
        except httptools.HttpParserUpgrade:
            await self._error(501, b"protocol upgrades (WebSocket, CONNECT) are not proxied")
            return None
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                await self._error(431, b"request header fields too large")
            else:
                await self._error(400, b"bad request")
            return None
        except httptools.HttpParserError as exc:
            await self._error(400, f"malformed request: {exc}".encode())
            return None
        return self.requests[0]

    async def _error(self, status: int, text: bytes) -> None:
        body = text + b"\n"
        with trio.move_on_after(5):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_all(
                    b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                    % (status, REASONS.get(status, b""), len(body), body))

    # ---- one request -----------------------------------------------------------------------

    async def run(self) -> None:
        first = True
        while True:
            req = await self._next_head(first)
            first = False
            if req is None:
                return
            if not await self._handle(req):
                return

    async def _handle(self, req: _Request) -> bool:
        """Run the app for `req`; whether the connection may carry another request."""
        s = self.server
        version, method, keep_alive = req.version, req.method, req.keep_alive
        raw_path, _, query = req.url.partition(b"?")
        scope: Scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version, "method": method, "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")), "raw_path": raw_path,
            "query_string": query, "root_path": "", "headers": req.headers,
            "client": self.client, "server": None,
        }
        head: bytes | None = None
        chunked = False
        head_only = method == "HEAD"
        response_started = False
        response_done = False
        continue_sent = False
        disconnected = False

        body_ended = False

        async def receive() -> Message:
            nonlocal continue_sent, disconnected, body_ended
            while True:
                if req.body:
                    chunk = req.body.popleft()
                    return {"type": "http.request", "body": chunk,
                            "more_body": bool(req.body) or not req.complete}
                if req.complete and not body_ended:
                    body_ended = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                if req.complete:
                    # The body is read: what is left to wait for is the client leaving.
                    while not self.eof and len(self.requests) < 8:
                        try:
                            if not await self._read():
                                break
                        except (httptools.HttpParserError, _HeadTooLarge, OSError,
                                trio.BrokenResourceError, trio.ClosedResourceError):
                            break
                    if not self.eof:
                        await trio.sleep_forever()  # pipelined too far ahead: read no more
                    disconnected = True
                    return {"type": "http.disconnect"}
                if self.eof:
                    disconnected = True
                    return {"type": "http.disconnect"}
                if req.expect_continue and not continue_sent:
                    continue_sent = True
                    await self.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                try:
                    with trio.fail_after(s.read_timeout or math.inf):
                        more = await self._read()
                except (trio.TooSlowError, httptools.HttpParserError, _HeadTooLarge, OSError,
                        trio.BrokenResourceError, trio.ClosedResourceError):
                    more = False
                if not more:
                    disconnected = True
                    return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal head, chunked, response_started, response_done, keep_alive
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
                lines = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b""))]
                sized = False
                for name, value in message.get("headers", ()):
                    lname = name.lower()
                    if lname == b"content-length":
                        sized = True
                    elif lname in (b"transfer-encoding", b"connection"):
                        continue
                    lines.append(b"%s: %s\r\n" % (name, value))
                bodiless = head_only or status in NO_BODY_STATUS or status < 200
                if not sized and not bodiless:
                    if version == "1.1":
                        chunked = True
                        lines.append(b"transfer-encoding: chunked\r\n")
                    else:
                        keep_alive = False  # HTTP/1.0: the close ends the body
                if not req.complete:
                    # Answered before the request body was read to its end: the rest
                    # cannot be told from a next request, so this connection ends here.
                    keep_alive = False
                if not keep_alive:
                    lines.append(b"connection: close\r\n")
                lines.append(b"\r\n")
                head = b"".join(lines)
                response_started = True
                return
            if kind != "http.response.body" or (head is None and not response_started):
                return
            body = message.get("body", b"")
            more = message.get("more_body", False)
            out = head or b""
            head = None
            if body and not head_only:
                out += b"%x\r\n%s\r\n" % (len(body), body) if chunked else body
            if not more:
                if chunked and not head_only:
                    out += b"0\r\n\r\n"
                response_done = True
            if out:
                await self.stream.send_all(out)

        try:
            await s.app(scope, receive, send)
        except Exception as exc:
            if _client_gone(exc):
                return False
            log.exception("proxy: error while handling %s %s", method, scope["path"])
            if not response_started:
                await self._error(500, b"internal error in the proxy")
            return False
        if not response_started:
            await self._error(500, b"the proxy gave no answer")
            return False
        if not response_done:
            return False  # cut short (a timeout, an upstream error): close to end the body
        self.requests.popleft()
        if disconnected or not keep_alive:
            return False
        req.body.clear()  # what the handler did not read of a complete body
        return True


def _client_gone(exc: BaseException) -> bool:
    """The connection to the client broke (also inside an exception group from a nursery
    of the handler's): nothing to answer, nothing to log."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_client_gone(e) for e in exc.exceptions)
    return isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError)


class Http1Server:
    def __init__(self, app: App, *, header_timeout: float, idle_timeout: float,
                 read_timeout: float, max_header_size: int) -> None:
        self.app = app
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.max_header_size = max_header_size

    async def serve(self, listener: pysocket.socket, *,
                    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        listener.setblocking(False)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    stream, client = await accept(listener)
                    nursery.start_soon(self._connection, stream, client)
        finally:
            trio.lowlevel.notify_closing(listener)
            listener.close()

    async def _connection(self, stream: SockIO, client: tuple[str, int] | None) -> None:
        try:
            await _Connection(self, stream, client).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            stream.close()
