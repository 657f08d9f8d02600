"""Non-blocking sockets driven straight by trio's I/O waits, for the proxy's hot path.

trio.SocketStream passes through the scheduler on every send and receive (a checkpoint
each, two for a send); a proxied request makes several of both, and bench/proxy.py measured
that as most of the proxy's CPU time per request. Here an operation that can complete at
once does so without yielding; only one that would block waits (`wait_readable` /
`wait_writable`, which are checkpoints). Every `FAIR_EVERY` operations that completed at
once, a checkpoint lets other tasks run, so a busy connection cannot starve the rest.
"""

from __future__ import annotations

import errno
import ipaddress
import socket as pysocket
from typing import Any

import trio

FAIR_EVERY = 16


class SockIO:
    __slots__ = ("_quick", "closed", "sock")

    def __init__(self, sock: pysocket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.closed = False
        self._quick = 0

    async def _fair(self) -> None:
        self._quick += 1
        if self._quick >= FAIR_EVERY:
            self._quick = 0
            await trio.lowlevel.checkpoint()

    async def recv(self, size: int, *, wait_first: bool = False) -> bytes:
        """Up to `size` bytes; b"" at EOF. trio.BrokenResourceError when the peer reset
        the connection, trio.ClosedResourceError after close(). `wait_first`: data is not
        expected yet (an answer just asked for), so wait before the first try."""
        if wait_first and not self.closed:
            await trio.lowlevel.wait_readable(self.sock)
        while True:
            if self.closed:
                raise trio.ClosedResourceError("the socket was closed")
            try:
                data = self.sock.recv(size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            await self._fair()
            return data

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.closed:
                raise trio.ClosedResourceError("the socket was closed")
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            view = view[sent:]
        await self._fair()

    def readable_now(self) -> bool:
        """Whether a read would not block (data, EOF or an error is waiting): for an idle
        pooled connection, that the server closed it or sent something unasked."""
        try:
            self.sock.recv(1, pysocket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()

    def peer(self) -> tuple[str, int] | None:
        try:
            host, port = self.sock.getpeername()[:2]
        except OSError:
            return None
        return str(host), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def connect(host: str, port: int) -> SockIO:
    """A connected TCP socket (TCP_NODELAY); OSError when it cannot be had."""
    targets: list[tuple[int, Any]]
    if _is_ip(host):
        targets = [(pysocket.AF_INET6 if ":" in host else pysocket.AF_INET, (host, port))]
    else:
        infos = await trio.socket.getaddrinfo(host, port, type=pysocket.SOCK_STREAM)
        targets = [(info[0], info[4]) for info in infos]
    error: OSError | None = None
    for af, address in targets:
        sock = pysocket.socket(af, pysocket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
            code = sock.connect_ex(address)
            if code == errno.EINPROGRESS:
                await trio.lowlevel.wait_writable(sock)
                code = sock.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_ERROR)
            if code:
                raise OSError(code, errno.errorcode.get(code, str(code)))
            return SockIO(sock)
        except OSError as exc:
            error = exc
            sock.close()
        except BaseException:
            sock.close()
            raise
    raise error or OSError(f"no address for {host}")


async def accept(listener: pysocket.socket) -> tuple[SockIO, tuple[str, int] | None]:
    while True:
        try:
            sock, addr = listener.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(listener)
            continue
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                await trio.sleep(0.1)  # out of descriptors: let connections finish first
                continue
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                continue
            raise
        sock.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
        return SockIO(sock), (str(addr[0]), int(addr[1]))
