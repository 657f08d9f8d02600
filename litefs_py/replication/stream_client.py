"""A replica's side of the replication stream (httpx on trio): one connection at a time.

`PrimaryStream.run_once` posts the replica's positions and hands every frame to the
callbacks until the stream ends; the caller (replica_node.py) reconnects with back-off.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

import httpx

from ..types import Pos
from .http_tls import InsecureSecretError, check_secret_transport
from .stream_protocol import (
    CONTENT_TYPE,
    PROTOCOL_VERSION,
    STREAM_PATH,
    Frame,
    FrameReader,
    ProtocolError,
    format_positions,
)

log = logging.getLogger("litefs.replica")

#: No byte for this long (the primary sends a heartbeat every second) means a dead link.
READ_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0


class StreamError(Exception):
    """The stream could not be opened or ended abnormally; the message says why."""


class NotPrimaryError(StreamError):
    """The node asked is not the primary (any more): follow the lease's holder instead."""


class AuthError(StreamError):
    """The primary refused the secret (or this node refuses to send it, or TLS rejected a
    certificate): reconnecting will not help until it is fixed."""


class PrimaryStream:
    def __init__(self, url: str, secret: str | None,
                 positions: Callable[[], dict[str, Pos]],
                 on_frame: Callable[[Frame], Awaitable[None]],
                 identity: dict[str, object] | None = None, *,
                 tls: ssl.SSLContext | None = None, allow_insecure: bool = False) -> None:
        self.url = url.rstrip("/")
        self.secret = secret
        self.tls = tls  # verifies an https:// primary (None: the system's CAs)
        self.allow_insecure = allow_insecure
        self.positions = positions
        self.on_frame = on_frame
        self.identity = identity  # who this replica is (etcd/s3 leases: for peers, acks)
        self.connected = False

    async def run_once(self) -> None:
        """One connection: returns when the primary closes the stream, raises StreamError
        when it cannot be reached or misbehaves."""
        try:
            check_secret_transport(self.url, self.secret, self.allow_insecure)
        except InsecureSecretError as exc:
            raise AuthError(str(exc)) from None
        headers = {"accept": CONTENT_TYPE}
        if self.secret:
            headers["authorization"] = f"Bearer {self.secret}"
        body: dict[str, object] = {"protocol": PROTOCOL_VERSION, "node": socket.gethostname(),
                                   "dbs": format_positions(self.positions())}
        if self.identity is not None:
            body["identity"] = self.identity
        timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
        reader = FrameReader()
        try:
            async with httpx.AsyncClient(timeout=timeout, verify=self.tls or True) as client, \
                    client.stream("POST", self.url + STREAM_PATH, json=body,
                                  headers=headers) as response:
                if response.status_code == 401:
                    raise AuthError(f"{self.url} refused this replica's secret (HTTP 401): "
                                    "set the same http.secret (or LITEFS_SECRET) on both")
                if response.status_code == 503:
                    text = (await response.aread()).decode(errors="replace").strip()
                    raise NotPrimaryError(f"{self.url} is not the primary: {text[:200]}")
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace").strip()
                    raise StreamError(f"{self.url} answered HTTP {response.status_code}: "
                                      f"{text[:200]}")
                self.connected = True
                async for chunk in response.aiter_raw():
                    for frame in reader.feed(chunk):
                        await self.on_frame(frame)
        except httpx.TimeoutException:
            raise StreamError(f"no data from {self.url} for {READ_TIMEOUT:g} s (the primary "
                              "sends a heartbeat every second)") from None
        except httpx.TransportError as exc:
            problem = _tls_problem(exc)
            if problem is None:
                raise StreamError(f"cannot stream from {self.url}: {_describe(exc)}"
                                  f"{self._tls_hint()}") from None
            if isinstance(problem, ssl.SSLCertVerificationError):
                raise AuthError(f"{self.url} did not prove who it is: "
                                f"{problem.verify_message}; set http.tls.ca to the CA that "
                                "signed the primary's certificate") from None
            if "CERTIFICATE" in str(problem).upper():
                raise AuthError(f"{self.url} refused this replica's TLS certificate "
                                f"({problem.reason or problem}): set http.tls.client-cert/"
                                "client-key to one signed by the primary's "
                                "http.tls.client-ca") from None
            raise StreamError(f"TLS with {self.url} failed: {problem.reason or problem}"
                              f"{self._tls_hint()}") from None
        except httpx.HTTPError as exc:
            raise StreamError(f"cannot stream from {self.url}: {exc or type(exc).__name__}"
                              ) from None
        except ProtocolError as exc:
            raise StreamError(f"{self.url} broke the replication protocol: {exc}") from None
        finally:
            self.connected = False
        if reader.pending:
            raise StreamError(f"{self.url} closed the stream in the middle of a frame")

    def _tls_hint(self) -> str:
        """With TLS 1.3 a server that rejects the client's certificate (or its lack of one)
        just closes the connection after the handshake: say what that may mean."""
        if not self.url.startswith("https:") or self.connected:
            return ""
        return (" (if the primary requires client certificates (http.tls.client-ca), set "
                "http.tls.client-cert/client-key to one signed by that CA)")


def _tls_problem(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error under an httpx error (httpx wraps httpcore's, which wraps ssl's)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _describe(exc: BaseException) -> str:
    """An httpx error's message, or the one under it (some have none of their own)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if str(seen):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__
