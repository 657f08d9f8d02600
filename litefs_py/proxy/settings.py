"""The running proxy's settings, made from the `proxy:` section of litefs.yml.

The section's keys, types, defaults and errors have one owner: config.ProxyConfig (LiteFS's
`addr`, `target`, `db`, `max-lag`, `passthrough`, `always-forward`,
`primary-redirect-timeout`, `debug` and server timeouts, plus litefs-py's own `txid-timeout`,
`fly-replay`, `max-header-size`, `primary-url`: docs/proxy.md). `ProxySettings.from_config`
only decides whether there is a proxy (a target) and compiles the path patterns.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields

from ..config import ProxyConfig

COOKIE_MAX_AGE = 300  # seconds the __txid cookie lives (LiteFS: 5 minutes)

_D = ProxyConfig  # the defaults below are the section's (a frozen dataclass's class attributes)


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
    max_lag: float = _D.max_lag
    passthrough: tuple[str, ...] = ()
    always_forward: tuple[str, ...] = ()
    primary_redirect_timeout: float = _D.primary_redirect_timeout
    debug: bool = _D.debug
    # Time allowed between reads of the request (0: none); a client stalling longer is cut.
    read_timeout: float = _D.read_timeout
    # Time from the first byte of a request head (or a new connection) to the complete
    # head: the slowloris bound; 408, then the connection is closed.
    read_header_timeout: float = _D.read_header_timeout
    write_timeout: float = _D.write_timeout  # a whole response (0: none; SSE needs none)
    idle_timeout: float = _D.idle_timeout  # a kept-alive connection without a request
    # litefs-py's own:
    txid_timeout: float = _D.txid_timeout  # read-your-writes wait before 504
    fly_replay: bool = _D.fly_replay  # answer writes on a replica with `fly-replay` (Fly.io)
    max_header_size: int = _D.max_header_size  # a larger request head gets 431
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
    def header_timeout(self) -> float:
        """The one Hypercorn timer: head of a request, and idle keep-alive (see above)."""
        values = [t for t in (self.read_header_timeout, self.idle_timeout) if t > 0]
        return min(values) if values else 0.0

    @property
    def header_timeout_first(self) -> float:
        """Time for a request head once its first byte arrived (and for a new connection's
        first head): read-header-timeout, else idle-timeout, else none."""
        return self.read_header_timeout or self.idle_timeout or math.inf

    @classmethod
    def from_config(cls, cfg: ProxyConfig | None) -> ProxySettings | None:
        """The settings of `proxy:` as load_config read and checked it; None when there is no
        proxy (no section, or no target: LiteFS's rule)."""
        if cfg is None or cfg.target is None:
            return None
        assert cfg.addr is not None and cfg.db is not None, "ProxyConfig.checked requires them"
        # Same field names on both sides (tests/proxy checks it): a new key needs no code here.
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls) if f.init
                      and not f.name.startswith("_")})
