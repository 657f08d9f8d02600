"""The proxy's settings: LiteFS's `proxy:` section, parsed from its plain mapping.

Key names and meanings follow LiteFS (`addr`, `target`, `db`, `max-lag`, `passthrough`,
`always-forward`, `primary-redirect-timeout`, `debug`, and the server timeouts). A few keys are
litefs-py's own and say so in docs/proxy.md: `txid-timeout`, `fly-replay`, `max-header-size`,
`primary-url`. Until config.py's schema carries the section, the lead wires this parser in;
`parse_proxy_settings` takes the mapping as YAML gave it (after ${VAR} expansion).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..config import parse_duration
from ..errors import ExitCode, QuietError

DEFAULT_MAX_LAG = 10.0
DEFAULT_PRIMARY_REDIRECT_TIMEOUT = 5.0
DEFAULT_TXID_TIMEOUT = 5.0  # LiteFS's poll timeout for read-your-writes
DEFAULT_READ_HEADER_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_MAX_HEADER_SIZE = 16 * 1024
COOKIE_MAX_AGE = 300  # seconds the __txid cookie lives (LiteFS: 5 minutes)

KEYS = ("addr", "target", "db", "max-lag", "passthrough", "always-forward",
        "primary-redirect-timeout", "debug", "read-timeout", "read-header-timeout",
        "write-timeout", "idle-timeout", "txid-timeout", "fly-replay", "max-header-size",
        "primary-url")


def compile_path_pattern(pattern: str) -> re.Pattern[str]:
    """LiteFS's path expressions: the whole path must match, `*` matches anything (also `/`),
    every other character is literal. `*.png`, `/static/*`, `/api/login`."""
    return re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$",
                      re.DOTALL)


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Where the proxy listens and what it sends where. Durations in seconds; 0 = none."""

    addr: str  # "[host]:port" to listen on
    target: str  # "host:port" of the application on this node
    db: str  # the database whose TXID tracks read-your-writes
    max_lag: float = DEFAULT_MAX_LAG
    passthrough: tuple[str, ...] = ()
    always_forward: tuple[str, ...] = ()
    primary_redirect_timeout: float = DEFAULT_PRIMARY_REDIRECT_TIMEOUT
    debug: bool = False
    # Time allowed between reads of the request (0: none); a client stalling longer is cut.
    read_timeout: float = 0.0
    # Time from the first byte of a request head (or a new connection) to the complete
    # head: the slowloris bound; 408, then the connection is closed.
    read_header_timeout: float = DEFAULT_READ_HEADER_TIMEOUT
    write_timeout: float = 0.0  # time for a whole response (0: none; SSE needs none)
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT  # a kept-alive connection without a request
    # litefs-py's own:
    txid_timeout: float = DEFAULT_TXID_TIMEOUT  # read-your-writes wait before 504
    fly_replay: bool = False  # answer writes on a replica with `fly-replay` (Fly.io only)
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE  # a larger request head gets 431
    # The primary's proxy, when it cannot be learnt from the primary (see primary.py).
    primary_url: str | None = None
    _passthrough_re: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)
    _forward_re: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_passthrough_re",
                           tuple(compile_path_pattern(p) for p in self.passthrough))
        object.__setattr__(self, "_forward_re",
                           tuple(compile_path_pattern(p) for p in self.always_forward))

    def is_passthrough(self, path: str) -> bool:
        return any(r.match(path) for r in self._passthrough_re)

    def is_always_forward(self, path: str) -> bool:
        return any(r.match(path) for r in self._forward_re)

    @property
    def target_url(self) -> str:
        return f"http://{self.target}"

    @property
    def header_timeout(self) -> float:
        """The one Hypercorn timer: head of a request, and idle keep-alive (see above)."""
        values = [t for t in (self.read_header_timeout, self.idle_timeout) if t > 0]
        return min(values) if values else 0.0

    @property
    def header_timeout_first(self) -> float:
        """Time for a request head once its first byte arrived (and for a new connection's
        first head): read-header-timeout, else idle-timeout, else none."""
        return self.read_header_timeout or self.idle_timeout or math.inf


def _fail(key: str, detail: str) -> QuietError:
    return QuietError(f"proxy.{key}: {detail}", ExitCode.CONFIG)


def _duration(m: Mapping[str, Any], key: str, default: float) -> float:
    value = m.get(key)
    if value is None:
        return default
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise _fail(key, f"expected a duration like 5s or 500ms, got {value!r}")
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise _fail(key, str(exc)) from None
    if seconds < 0:
        raise _fail(key, "must not be negative")
    return seconds


def _bool(m: Mapping[str, Any], key: str) -> bool:
    value = m.get(key, False)
    if not isinstance(value, bool):
        raise _fail(key, f"expected true or false, got {value!r}")
    return value


def _patterns(m: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = m.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise _fail(key, "expected a list of path patterns like ['/static/*', '*.png']")
    return tuple(value)


def _host_port(value: object, key: str, example: str, *, host_required: bool) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise _fail(key, f"expected an address like {example!r}; write ':{value}'")
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, f"expected an address like {example!r}")
    text = value.strip()
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            raise _fail(key, f"{text!r}: expected host:port (plain HTTP), e.g. {example!r}")
        text = parts.netloc
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise _fail(key, f"invalid address {text!r}; expected [host]:port, e.g. {example!r}")
    if host_required and not host:
        host = "localhost"
    return f"{host}:{port}" if host else f":{port}"


def parse_proxy_settings(mapping: object) -> ProxySettings | None:
    """ProxySettings from the `proxy:` mapping; None when there is none (or it has no
    target, as LiteFS skips the proxy then). QuietError (exit 3) naming the key otherwise."""
    if mapping is None:
        return None
    if not isinstance(mapping, Mapping):
        raise QuietError("proxy: expected a mapping with addr, target and db", ExitCode.CONFIG)
    unknown = [str(k) for k in mapping if k not in KEYS]
    if unknown:
        suggestions = []
        for k in unknown:
            close = fnmatch.filter(KEYS, f"*{k.replace('_', '-').lower()}*")
            suggestions.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise QuietError(f"proxy: unknown key {', '.join(suggestions)}; known keys: "
                         f"{', '.join(KEYS)}", ExitCode.CONFIG)
    m: Mapping[str, Any] = mapping
    if not m.get("target"):
        return None
    for key in ("addr", "db"):
        if not m.get(key):
            raise _fail(key, "is required when proxy.target is set (addr: where the proxy "
                             "listens, e.g. ':8080'; db: the database name, e.g. 'store.db')")
    db = m["db"]
    if not isinstance(db, str) or "/" in db or db in (".", ".."):
        raise _fail("db", f"expected a database file name under the mount, got {db!r}")
    header_size = m.get("max-header-size", DEFAULT_MAX_HEADER_SIZE)
    if isinstance(header_size, bool) or not isinstance(header_size, int) or header_size < 1024:
        raise _fail("max-header-size", f"expected a number of bytes >= 1024, got "
                                       f"{header_size!r}")
    primary_url = m.get("primary-url")
    if primary_url is not None:
        primary_url = "http://" + _host_port(primary_url, "primary-url",
                                             "http://primary:8080", host_required=True)
    max_lag = _duration(m, "max-lag", DEFAULT_MAX_LAG)
    return ProxySettings(
        addr=_host_port(m["addr"], "addr", ":8080", host_required=False),
        target=_host_port(m["target"], "target", "localhost:8081", host_required=True),
        db=db,
        max_lag=max_lag,
        passthrough=_patterns(m, "passthrough"),
        always_forward=_patterns(m, "always-forward"),
        primary_redirect_timeout=_duration(m, "primary-redirect-timeout",
                                           DEFAULT_PRIMARY_REDIRECT_TIMEOUT),
        debug=_bool(m, "debug"),
        read_timeout=_duration(m, "read-timeout", 0.0),
        read_header_timeout=_duration(m, "read-header-timeout", DEFAULT_READ_HEADER_TIMEOUT),
        write_timeout=_duration(m, "write-timeout", 0.0),
        idle_timeout=_duration(m, "idle-timeout", DEFAULT_IDLE_TIMEOUT),
        txid_timeout=_duration(m, "txid-timeout", DEFAULT_TXID_TIMEOUT),
        fly_replay=_bool(m, "fly-replay"),
        max_header_size=header_size,
        primary_url=primary_url,
    )
