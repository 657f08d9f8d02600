"""The proxy's client side: requests to the application and to the primary's proxy, streamed
both ways, over pooled keep-alive connections.

Two implementations of one small interface (docs/proxy.md has the measurements):

- `HttptoolsUpstream` (the default): HTTP/1.1 over trio sockets with httptools (the llhttp
  parser, as uvicorn uses it) reading the responses, chunked bodies decoded by the parser.
- `HttpcoreUpstream`: httpcore, the transport under httpx, kept to measure against
  (`LITEFS_PROXY_ENGINE=hypercorn`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from .sockio import SockIO, connect

CONNECT_TIMEOUT = 5.0
READ_SIZE = 65536


class UpstreamConnectError(Exception):
    """No connection could be made: nothing of the request was sent."""


class UpstreamError(Exception):
    """The connection broke or the answer was not HTTP."""


@dataclass(slots=True)
class UpstreamRequest:
    host: str
    port: int
    method: str
    target: bytes  # path and query, as the client sent them
    headers: list[tuple[bytes, bytes]]  # framing headers (content-length or chunked) included
    body: AsyncIterator[bytes] | None = None
    chunked: bool = False  # encode `body` in chunks (its length is not known)


class UpstreamResponse(Protocol):
    status: int
    headers: list[tuple[bytes, bytes]]

    def aiter_body(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    async def request(self, req: UpstreamRequest) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


# ---- httptools -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Idle:
    stream: SockIO
    expires: float


class _Parse:
    """httptools callbacks for one response."""

    __slots__ = ("body", "chunked", "complete", "has_length", "headers", "headers_done",
                 "keep_alive", "parser", "status")

    def __init__(self) -> None:
        self.parser: Any = None
        self.keep_alive = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.body: deque[bytes] = deque()
        self.complete = False
        self.has_length = False
        self.chunked = False
        self.status = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname == b"content-length":
            self.has_length = True
        elif lname == b"transfer-encoding":
            self.chunked = True
        self.headers.append((lname, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # Read now: llhttp forgets it once the message is complete.
        self.keep_alive = self.parser.should_keep_alive()
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _HttptoolsResponse:
    def __init__(self, pool: HttptoolsUpstream, key: tuple[str, int],
                 stream: SockIO, parser: object, state: _Parse,
                 head_only: bool) -> None:
        self._pool = pool
        self._key = key
        self._stream: SockIO | None = stream
        self._parser = parser
        self._state = state
        self.status = state.status
        self.headers = state.headers
        self._keep = True  # False once the body proved to be delimited by the close
        if head_only or state.status in (204, 304) or 100 <= state.status < 200:
            state.complete = True
            state.body.clear()

    async def aiter_body(self) -> AsyncIterator[bytes]:
        s = self._state
        while True:
            while s.body:
                yield s.body.popleft()
            if s.complete:
                break
            assert self._stream is not None
            try:
                data = await self._stream.recv(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise UpstreamError(f"the connection broke: {exc}") from None
            if not data:
                if not s.has_length and not s.chunked:
                    s.complete = True  # a body delimited by the end of the connection
                    self._keep = False
                    continue
                raise UpstreamError("the connection closed in the middle of the response")
            try:
                self._parser.feed_data(data)  # type: ignore[attr-defined]
            except Exception as exc:  # httptools.HttpParserError and its kin
                raise UpstreamError(f"invalid response: {exc}") from None

    async def aclose(self) -> None:
        self.release()

    def release(self) -> None:
        """Back to the pool if the exchange ended cleanly, else closed (never waits)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        s = self._state
        reusable = s.complete and not s.body and self._keep and s.keep_alive
        if reusable:
            self._pool.give_back(self._key, stream)
        else:
            stream.close()


class HttptoolsUpstream:
    def __init__(self, *, keepalive_expiry: float, max_idle_per_host: int = 256) -> None:
        import httptools  # noqa: F401 (fail early if it is missing)

        self.keepalive_expiry = keepalive_expiry
        self.max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int], list[_Idle]] = {}

    def give_back(self, key: tuple[str, int], stream: SockIO) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self.max_idle:
            stream.close()
            return
        idle.append(_Idle(stream, trio.current_time() + self.keepalive_expiry))

    def _take(self, key: tuple[str, int]) -> SockIO | None:
        idle = self._idle.get(key)
        now = trio.current_time()
        while idle:
            entry = idle.pop()
            # Readable while idle: the server closed it (or sent something unasked).
            if entry.expires > now and not entry.stream.readable_now():
                return entry.stream
            entry.stream.close()
        return None

    async def _connect(self, host: str, port: int) -> SockIO:
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                return await connect(host, port)
        except trio.TooSlowError:
            raise UpstreamConnectError(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to {host}:{port}: "
                                       f"{exc.strerror or exc}") from None

    async def request(self, req: UpstreamRequest) -> UpstreamResponse:
        import httptools

        key = (req.host, req.port)
        head = bytearray(b"%s %s HTTP/1.1\r\n" % (req.method.encode(), req.target))
        for name, value in req.headers:
            head += b"%s: %s\r\n" % (name, value)
        head += b"\r\n"
        # A pooled connection the server closed meanwhile fails before any answer; only a
        # request without a body is sent again (one with a body was streamed, and may have
        # been acted on), on a new connection.
        attempts = 2 if req.body is None else 1
        for attempt in range(attempts):
            stream = self._take(key) if attempt == 0 else None
            reused = stream is not None
            if stream is None:
                stream = await self._connect(req.host, req.port)
            try:
                return await self._exchange(stream, key, bytes(head), req, httptools)
            except _StaleConnection:
                stream.close()
                if not reused or attempt == attempts - 1:
                    raise UpstreamError("the server closed the connection without an "
                                        "answer") from None
            except BaseException:
                stream.close()
                raise
        raise AssertionError("unreachable")

    async def _exchange(self, stream: SockIO, key: tuple[str, int], head: bytes,
                        req: UpstreamRequest, httptools: object) -> UpstreamResponse:
        try:
            if req.body is None:
                await stream.send_all(head)
            else:
                first = True
                async for chunk in req.body:
                    if not chunk:
                        continue
                    data = b"%x\r\n%s\r\n" % (len(chunk), chunk) if req.chunked else chunk
                    await stream.send_all(head + data if first else data)
                    first = False
                end = b"0\r\n\r\n" if req.chunked else b""
                if first or end:
                    await stream.send_all((head if first else b"") + end)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise UpstreamError(f"the connection broke while sending: {exc}") from None
        state = _Parse()
        parser = httptools.HttpResponseParser(state)  # type: ignore[attr-defined]
        state.parser = parser
        got_any = False
        while not state.headers_done:
            try:
                data = await stream.recv(READ_SIZE, wait_first=not got_any)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                if not got_any:
                    raise _StaleConnection()
                raise UpstreamError("the connection closed in the middle of the response")
            got_any = True
            try:
                parser.feed_data(data)
            except Exception as exc:
                raise UpstreamError(f"invalid response: {exc}") from None
        return _HttptoolsResponse(self, key, stream, parser, state,
                                  head_only=req.method == "HEAD")

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for entry in idle:
                entry.stream.close()
        self._idle.clear()


class _StaleConnection(Exception):
    pass


# ---- httpcore (for comparison) ----------------------------------------------------------------


@dataclass(slots=True)
class _HttpcoreResponse:
    response: object
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def aiter_body(self) -> AsyncIterator[bytes]:
        import httpcore

        try:
            async for chunk in self.response.aiter_stream():  # type: ignore[attr-defined]
                yield chunk
        except (httpcore.ProtocolError, httpcore.NetworkError,
                httpcore.TimeoutException) as exc:
            raise UpstreamError(str(exc) or type(exc).__name__) from None

    async def aclose(self) -> None:
        await self.response.aclose()  # type: ignore[attr-defined]


class HttpcoreUpstream:
    def __init__(self, *, keepalive_expiry: float) -> None:
        import httpcore

        self._pool = httpcore.AsyncConnectionPool(max_connections=4096,
                                                  max_keepalive_connections=256,
                                                  keepalive_expiry=keepalive_expiry,
                                                  retries=0)

    async def request(self, req: UpstreamRequest) -> UpstreamResponse:
        import httpcore

        url = httpcore.URL(scheme=b"http", host=req.host.encode(), port=req.port,
                           target=req.target)
        request = httpcore.Request(req.method.encode(), url, headers=req.headers,
                                   content=req.body,
                                   extensions={"timeout": {"connect": CONNECT_TIMEOUT}})
        try:
            response = await self._pool.handle_async_request(request)
        except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
            raise UpstreamConnectError(str(exc) or type(exc).__name__) from None
        except (httpcore.ProtocolError, httpcore.NetworkError,
                httpcore.TimeoutException) as exc:
            raise UpstreamError(str(exc) or type(exc).__name__) from exc
        return _HttpcoreResponse(response, response.status,
                                 [(k.lower(), v) for k, v in response.headers])

    async def aclose(self) -> None:
        await self._pool.aclose()
