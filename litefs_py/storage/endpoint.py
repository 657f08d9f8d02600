"""S3 endpoints as users write them: with or without a scheme.

Litestream 0.5 rejected `s3.us-west-002.backblazeb2.com` ("not a valid URI"); here a missing
scheme means http:// for loopback and private hosts and https:// for everything else.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from ..errors import ExitCode, QuietError


def _error(message: str) -> QuietError:
    return QuietError(message, ExitCode.CONFIG)


def _show(value: str) -> str:
    text = repr(value).replace("\n", "\\n")
    return text if len(text) <= 60 else text[:57] + "..."


_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*)(?:\.[A-Za-z0-9_-]+)*\.?")
_PRIVATE_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "::1/128",
              "fc00::/7")
)
_ENDPOINT_HINT = (
    "expected host[:port] or http(s)://host[:port], e.g. s3.us-west-002.backblazeb2.com"
)


def _is_local_host(host: str) -> bool:
    """Loopback, private, *.local, *.internal, localhost or a bare name without a dot."""
    host = host.rstrip(".").lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return (
            "." not in host
            or host.endswith((".local", ".internal", ".localhost"))
        )
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in _PRIVATE_NETS if net.version == ip.version)


def normalize_endpoint(endpoint: str) -> str:
    """An S3 endpoint with a scheme: keep http(s)://…, else add http:// for loopback and
    private hosts and https:// for everything else. Raises QuietError (CONFIG) on garbage."""
    raw = endpoint
    text = endpoint.strip()
    bad = f"invalid endpoint {_show(raw)}: {_ENDPOINT_HINT}"
    if not text or any(c.isspace() for c in text):
        raise _error(bad)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        if not _SCHEME_RE.fullmatch(scheme) or scheme.lower() not in ("http", "https"):
            raise _error(f"invalid endpoint {_show(raw)}: the scheme must be http:// or https:// "
                         "(or leave it off)")
        scheme = scheme.lower()
        rest = text.split("://", 1)[1]
    else:
        scheme = ""
        rest = text
        try:  # a bare IPv6 literal such as ::1
            if isinstance(ipaddress.ip_address(rest), ipaddress.IPv6Address):
                rest = f"[{rest}]"
        except ValueError:
            pass
    try:
        parts = urlsplit("http://" + rest)
        port = parts.port
    except ValueError:
        raise _error(bad) from None
    host = parts.hostname or ""
    if (
        not host
        or parts.username is not None
        or parts.password is not None
        or parts.query
        or parts.fragment
        or "?" in rest
        or "#" in rest
    ):
        raise _error(bad)
    is_ip = True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        is_ip = False
    if not is_ip and not _HOSTNAME_RE.fullmatch(host):
        raise _error(bad)
    if not scheme:
        scheme = "http" if _is_local_host(host) else "https"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    path = parts.path.rstrip("/")
    return f"{scheme}://{netloc}{path}"
