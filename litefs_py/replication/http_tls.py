"""TLS for the replication API, in one place: the server's and the client's SSL contexts built
from `http.tls`, and the rule that keeps `http.secret` off the wire in clear text.

The server (stream_server.py, on hypercorn) serves TLS when `http.tls.cert`/`key` are set and
asks for a client certificate signed by `http.tls.client-ca` when that is set (mTLS). A client
(stream_client.py) verifies the server's certificate against `http.tls.ca`, else the system's
trusted CAs, and presents `http.tls.client-cert`/`client-key` when they are set.

A node refuses to send its secret over plain `http://` to a host that is not loopback unless
`http.allow-insecure` is true (then it warns once per URL): anyone on the path could read the
secret and with it every database.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from typing import Protocol
from urllib.parse import urlsplit

from ..errors import ExitCode, QuietError

log = logging.getLogger("litefs.http")

__all__ = ["InsecureSecretError", "TlsSettings", "check_secret_transport", "client_context",
           "server_context", "validate"]


class TlsSettings(Protocol):
    """What `http.tls` holds (config's HttpTlsConfig): paths of PEM files, or None."""

    @property
    def cert(self) -> str | None: ...
    @property
    def key(self) -> str | None: ...
    @property
    def ca(self) -> str | None: ...
    @property
    def client_ca(self) -> str | None: ...
    @property
    def client_cert(self) -> str | None: ...
    @property
    def client_key(self) -> str | None: ...


class InsecureSecretError(Exception):
    """The secret would cross the network in clear text; the message says how to fix it."""


def _fail(key: str, path: str, why: object) -> QuietError:
    return QuietError(f"http.tls.{key}: cannot use {path!r}: {why}", ExitCode.CONFIG)


def _readable(key: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise _fail(key, path, exc.strerror or exc) from None


def _load_chain(ctx: ssl.SSLContext, cert_key: str, cert: str, key_key: str, key: str) -> None:
    _readable(cert_key, cert)
    _readable(key_key, key)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise QuietError(f"http.tls.{cert_key} / http.tls.{key_key}: {cert!r} and {key!r} are "
                         f"not a PEM certificate chain and its private key ({exc.reason or exc})",
                         ExitCode.CONFIG) from None


def _load_ca(ctx: ssl.SSLContext, key: str, path: str) -> None:
    _readable(key, path)
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise _fail(key, path, f"not a PEM CA bundle ({exc.reason or exc})") from None


def server_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The replication API's SSL context, or None when `http.tls.cert` is not set (plain
    HTTP). Raises QuietError (CONFIG) naming the key of a file it cannot use."""
    if tls.cert is None or tls.key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])  # the stream is one long HTTP/1.1 response
    _load_chain(ctx, "cert", tls.cert, "key", tls.key)
    if tls.client_ca is not None:
        _load_ca(ctx, "client-ca", tls.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED  # no certificate, no connection
    return ctx


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """The context for https:// connections to a primary: its certificate and host name are
    verified against `http.tls.ca`, else the system's trusted CAs."""
    if tls.ca is None:
        ctx = ssl.create_default_context()  # CERT_REQUIRED, check_hostname, system CAs
    else:
        # Only the configured CA: a private CA must not widen into "any public CA too".
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
        _load_ca(ctx, "ca", tls.ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.client_cert is not None and tls.client_key is not None:
        _load_chain(ctx, "client-cert", tls.client_cert, "client-key", tls.client_key)
    return ctx


def validate(tls: TlsSettings) -> None:
    """Load every configured file once, at start: a bad path or PEM fails the mount with
    one line naming the key instead of failing each connection later."""
    server_context(tls)
    client_context(tls)


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


_warned: set[str] = set()


def check_secret_transport(url: str, secret: str | None, allow_insecure: bool) -> None:
    """Raise InsecureSecretError if sending `secret` to `url` would put it on the network in
    clear text (http:// to a host that is not loopback) and `allow_insecure` is false; with
    `allow_insecure`, warn once per URL instead."""
    parts = urlsplit(url)
    if not secret or parts.scheme != "http" or _is_loopback(parts.hostname or ""):
        return
    risk = (f"the secret would cross the network in clear text to {url}: anyone on the path "
            "can read it and then read every database and impersonate replicas")
    if not allow_insecure:
        raise InsecureSecretError(
            f"refusing to send http.secret over plain HTTP: {risk}. Serve TLS on the primary "
            "(http.tls.cert/key) and use an https:// lease.advertise-url, or set "
            "http.allow-insecure: true on a network you trust")
    if url not in _warned:
        _warned.add(url)
        log.warning("http.allow-insecure is true: %s", risk)
