"""`litefs.yml`: loading, validation and the frozen configuration objects.

Every problem with a configuration file or a replica URL raises
`QuietError(message, ExitCode.CONFIG)` with a one-line message that names the key, the value
and the fix. Nothing here touches the network or the filesystem beyond reading the file.

The reference for users is docs/config.md; examples/litefs.yml is an annotated example.
"""

from __future__ import annotations

import difflib
import os
import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import yaml

from .errors import ExitCode, QuietError
from .storage.age import AgeKeys, AgeSettingsError, parse_age_settings
from .storage.endpoint import normalize_endpoint

__all__ = [
    "CONFIG_SEARCH_PATHS",
    "Config",
    "DBConfig",
    "DataConfig",
    "ExecCommand",
    "FuseConfig",
    "HttpConfig",
    "LeaseConfig",
    "LogConfig",
    "ProxyConfig",
    "ReplicaConfig",
    "load_config",
    "normalize_endpoint",
    "parse_duration",
    "parse_replica_url",
    "parse_size",
    "resolve_credentials",
]

#: Where `load_config(None)` looks, in order (the first that exists wins).
CONFIG_SEARCH_PATHS: tuple[Path, ...] = (Path("litefs.yml"), Path("/etc/litefs.yml"))

LogLevel = Literal["debug", "info", "warn", "error"]
LogFormat = Literal["text", "json"]
ReplicaType = Literal["s3", "file"]

GiB = 1024**3

# --------------------------------------------------------------------------------------------
# The configuration objects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuseConfig:
    dir: str = "/litefs"
    allow_other: bool = False
    debug: bool = False


@dataclass(frozen=True)
class DataConfig:
    dir: str = "/var/lib/litefs"
    retention: float = 600.0  # seconds local LTX files are kept after upload
    spool_limit: int = GiB  # bytes of not-yet-uploaded LTX files kept locally


@dataclass(frozen=True)
class ExecCommand:
    """One command to run: `argv` is never passed through a shell."""

    argv: tuple[str, ...]
    if_candidate: bool = False


@dataclass(frozen=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "text"


@dataclass(frozen=True)
class HttpConfig:
    addr: str = ":20202"
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LeaseConfig:
    type: Literal["static"] = "static"
    candidate: bool = True
    advertise_url: str | None = None
    hostname: str | None = None


@dataclass(frozen=True)
class ProxyConfig:
    """LiteFS's HTTP proxy (`proxy:`); present only when the file has the section."""

    addr: str
    target: str
    db: str
    max_lag: float = 10.0
    passthrough: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReplicaConfig:
    """Where one database (or, as the default `replica`, every database) is backed up.

    `path` is the key prefix inside the bucket for s3 (no leading or trailing slash, "" for
    the bucket root) and a directory for file. `endpoint` is normalised (always has a
    scheme) or None for AWS's default. Durations are in seconds. Credentials here come from the
    file only; `resolve_credentials` adds the environment.
    """

    type: ReplicaType
    path: str = ""
    bucket: str | None = None
    endpoint: str | None = None
    region: str | None = None
    force_path_style: bool = False
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    sync_interval: float = 1.0
    # After a commit wakes the uploader, wait this long for more commits to share the PUT:
    # trades a little lag for far fewer requests (cost) at steady load.
    batch_window: float = 0.05
    retention: float = 86400.0
    snapshot_interval: float = 86400.0
    l1_interval: float = 30.0
    l2_interval: float = 300.0
    l3_interval: float = 3600.0
    # Restore drill every this many seconds (0: off) and age encryption: see
    # replication/drill.py and storage/age.py (keys validation-interval and age).
    validation_interval: float = 0.0
    age: AgeKeys | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The location as a URL (no credentials, no intervals); parse_replica_url reads it."""
        if self.type == "file":
            return "file://" + quote(self.path) if self.path.startswith("/") else self.path
        query: dict[str, str] = {}
        if self.endpoint is not None:
            query["endpoint"] = self.endpoint
        if self.region is not None:
            query["region"] = self.region
        if self.force_path_style != _default_force_path_style(self.endpoint):
            query["forcePathStyle"] = "true" if self.force_path_style else "false"
        path = "/" + quote(self.path) if self.path else ""
        qs = "?" + urlencode(query, safe=":/") if query else ""
        return f"s3://{self.bucket}{path}{qs}"

    def with_db(self, db_name: str) -> ReplicaConfig:
        """This replica with `db_name` appended to its path (the default-replica rule)."""
        if self.type == "file":
            return replace(self, path=posixpath.join(self.path, db_name))
        return replace(self, path=f"{self.path}/{db_name}" if self.path else db_name)


@dataclass(frozen=True)
class DBConfig:
    name: str
    replica: ReplicaConfig | None = None  # None: the default replica with the name appended


@dataclass(frozen=True)
class Config:
    fuse: FuseConfig = field(default_factory=FuseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    exit_on_error: bool = True
    exec: tuple[ExecCommand, ...] = ()
    log: LogConfig = field(default_factory=LogConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    proxy: ProxyConfig | None = None
    replica: ReplicaConfig | None = None  # the default target for every database
    dbs: tuple[DBConfig, ...] = ()
    # Top-level credentials (Litestream's place for them); already copied into every s3
    # replica above that has none of its own.
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    source: Path | None = None  # the file this was loaded from; None for defaults

    def db(self, db_name: str) -> DBConfig | None:
        for db in self.dbs:
            if db.name == db_name:
                return db
        return None

    def replica_for(self, db_name: str) -> ReplicaConfig | None:
        """The replica of one database: its `dbs` override, else the default replica with the
        database name appended to the path, else None (no backups)."""
        db = self.db(db_name)
        if db is not None and db.replica is not None:
            return db.replica
        if self.replica is None:
            return None
        return self.replica.with_db(db_name)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _error(message: str) -> QuietError:
    return QuietError(message, ExitCode.CONFIG)


def _show(value: object) -> str:
    """A value for an error message: YAML-ish, one line, at most ~60 characters."""
    if isinstance(value, str):
        text = repr(value)
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


# --------------------------------------------------------------------------------------------
# Durations and sizes
# --------------------------------------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_DURATION_HINT = "expected a duration like 500ms, 1s, 5m, 1h or 1h30m"
_SIZE_HINT = "expected a size like 100k, 64MiB or 1GB (bytes if no unit)"


def parse_duration(value: str | int | float) -> float:
    """`1s`, `500ms`, `5m`, `1h`, `1h30m`, `2d` → seconds. A bare number is only accepted for 0.

    Raises ValueError with the reason; load_config turns it into a QuietError naming the key.
    """
    if isinstance(value, bool):
        raise ValueError(_DURATION_HINT)
    if isinstance(value, int | float):
        if value == 0:
            return 0.0
        raise ValueError(f"{_DURATION_HINT} (a number needs a unit, e.g. {value}s)")
    text = value.strip()
    if text in ("0", "0.0"):
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            if re.fullmatch(r"\d+(\.\d*)?", text):
                raise ValueError(f"{_DURATION_HINT} (a number needs a unit, e.g. {text}s)")
            raise ValueError(_DURATION_HINT)
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(_DURATION_HINT)
    return total


def parse_size(value: str | int) -> int:
    """`100k` (1000-based), `64MiB` / `64Mi` (1024-based), `1GB`, plain integers → bytes."""
    if isinstance(value, bool):
        raise ValueError(_SIZE_HINT)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(_SIZE_HINT)
        return value
    m = _SIZE_RE.fullmatch(value.strip().lower())
    if m is None or m.group(2) not in _SIZE_UNITS:
        raise ValueError(_SIZE_HINT)
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


# --------------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------------

def _endpoint_host(endpoint: str | None) -> str | None:
    if endpoint is None:
        return None
    return (urlsplit(endpoint).hostname or "").lower()


def _default_force_path_style(endpoint: str | None) -> bool:
    """Path-style for every custom endpoint except AWS itself."""
    host = _endpoint_host(endpoint)
    if host is None:
        return False
    return not (host == "amazonaws.com" or host.endswith(".amazonaws.com"))


# --------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------

_CREDENTIAL_ENV = (
    ("LITEFS_ACCESS_KEY_ID", "LITEFS_SECRET_ACCESS_KEY"),
    ("LITESTREAM_ACCESS_KEY_ID", "LITESTREAM_SECRET_ACCESS_KEY"),
)


def resolve_credentials(
    replica: ReplicaConfig, env: Mapping[str, str] = os.environ
) -> tuple[str | None, str | None]:
    """(access key id, secret access key) for an s3 replica.

    Order: the replica's own keys (which load_config fills from the top-level keys when the
    replica has none), then LITEFS_ACCESS_KEY_ID/LITEFS_SECRET_ACCESS_KEY, then
    LITESTREAM_ACCESS_KEY_ID/LITESTREAM_SECRET_ACCESS_KEY, then (None, None): the AWS default
    chain (AWS_* variables, ~/.aws, instance roles). Empty variables count as unset; a source
    with only one of the pair is an error rather than being mixed with another source.
    """
    if replica.access_key_id is not None or replica.secret_access_key is not None:
        return replica.access_key_id, replica.secret_access_key
    for id_var, secret_var in _CREDENTIAL_ENV:
        key_id = env.get(id_var) or None
        secret = env.get(secret_var) or None
        if key_id is None and secret is None:
            continue
        if key_id is None or secret is None:
            have, missing = (id_var, secret_var) if key_id else (secret_var, id_var)
            raise _error(f"{have} is set but {missing} is not; set both or neither")
        return key_id, secret
    return None, None


# --------------------------------------------------------------------------------------------
# ${VAR} expansion
# --------------------------------------------------------------------------------------------


class _Expanded(str):
    """A string that had a variable substituted: `true`/`false` in it may fill a boolean."""

    __slots__ = ()


_VAR_RE = re.compile(
    r"\$(?:(?P<escape>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|(?P<open>\{))"
)
_BRACED_RE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


# --------------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------------

_TOP_KEYS = (
    "fuse",
    "data",
    "exit-on-error",
    "exec",
    "log",
    "http",
    "lease",
    "proxy",
    "replica",
    "replicas",
    "dbs",
    "access-key-id",
    "secret-access-key",
)
_FUSE_KEYS = ("dir", "allow-other", "debug")
_DATA_KEYS = ("dir", "retention", "spool-limit")
_EXEC_KEYS = ("cmd", "if-candidate")
_LOG_KEYS = ("level", "format")
_HTTP_KEYS = ("addr", "secret")
_LEASE_KEYS = ("type", "candidate", "advertise-url", "hostname")
_PROXY_KEYS = ("addr", "target", "db", "max-lag", "passthrough")
_DB_KEYS = ("name", "replica", "replicas")
_LOCATION_KEYS = ("type", "bucket", "path", "endpoint", "region", "force-path-style")
_REPLICA_KEYS = (
    "url",
    *_LOCATION_KEYS,
    "access-key-id",
    "secret-access-key",
    "sync-interval",
    "batch-window",
    "retention",
    "snapshot-interval",
    "l1-interval",
    "l2-interval",
    "l3-interval",
    "validation-interval",
    "age",
)
_S3_ONLY_KEYS = (
    "bucket",
    "endpoint",
    "region",
    "force-path-style",
    "access-key-id",
    "secret-access-key",
)
_URL_PARAMS = ("endpoint", "region", "forcePathStyle", "force-path-style")
_LOG_LEVELS: dict[str, LogLevel] = {
    "debug": "debug",
    "info": "info",
    "warn": "warn",
    "warning": "warn",
    "error": "error",
}
_LOG_FORMATS: dict[str, LogFormat] = {"text": "text", "json": "json"}
_BOOL_WORDS = {
    "true": True, "yes": True, "on": True, "1": True,
    "false": False, "no": False, "off": False, "0": False,
}  # fmt: skip
_MAX_REPLICAS = 1


def _normalise_key(key: str) -> str:
    """camelCase / snake_case / any case → kebab-case, for suggestions."""
    key = re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", key)
    return key.replace("_", "-").lower()


def _is_secret(key: str) -> bool:
    """Keys whose values never appear in error messages."""
    return key.endswith(("secret", "secret-access-key"))


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class _Loader:
    def __init__(self, source: str | None, env: Mapping[str, str], context: str = "") -> None:
        self.source = source
        self.env = env
        self.context = context or (str(source) if source else "")

    # -- errors --------------------------------------------------------------------------

    def where(self) -> str:
        return f" in {self.context}" if self.context else ""

    def fail(self, key: str, detail: str) -> NoReturn:
        if not key:
            raise _error(f"{self.context}: {detail}" if self.context else detail)
        raise _error(f"{key}{self.where()}: {detail}")

    def wrong_type(self, key: str, value: object, expected: str, hint: str = "") -> NoReturn:
        shown = "a value" if _is_secret(key) else _show(value)
        self.fail(key, f"expected {expected}, got {shown} ({_kind(value)}){hint}")

    # -- ${VAR} expansion ----------------------------------------------------------------

    def expand_tree(self, value: object, key: str) -> object:
        if isinstance(value, str):
            return self.expand(value, key)
        if isinstance(value, dict):
            return {k: self.expand_tree(v, _join(key, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand_tree(v, f"{key}[{i}]") for i, v in enumerate(value)]
        return value

    def expand(self, text: str, key: str) -> str:
        if "$" not in text:
            return text
        substituted = False
        out: list[str] = []
        pos = 0
        for m in _VAR_RE.finditer(text):
            out.append(text[pos : m.start()])
            pos = m.end()
            if m.group("escape") is not None:
                out.append("$")
                continue
            shown = "the value" if _is_secret(key) else _show(text)
            if m.group("open") is not None:
                self.fail(key, f"unclosed ${{ in {shown}; write ${{NAME}}, "
                               "or $$ for a literal $")
            braced = m.group("braced")
            default: str | None = None
            if braced is not None:
                bm = _BRACED_RE.fullmatch(braced)
                if bm is None:
                    self.fail(key, f"invalid variable reference ${{{braced}}} in {shown}; "
                                   "write ${NAME} or ${NAME:-default}, or $$ for a literal $")
                name = bm.group("name")
                default = bm.group("default")
            else:
                name = m.group("named")
            got = self.env.get(name)
            if got is None or (default is not None and got == ""):
                if default is None:
                    raise _error(
                        f"environment variable {name} is not set (used in {key}{self.where()}); "
                        f"set it, or write ${{{name}:-default}} for a default"
                    )
                got = default
            out.append(got)
            substituted = True
        out.append(text[pos:])
        result = "".join(out)
        return _Expanded(result) if substituted else result

    # -- shapes --------------------------------------------------------------------------

    def mapping(self, value: object, key: str, allowed: Sequence[str],
                hint: str = "") -> dict[str, Any]:
        """`value` as a mapping with only `allowed` keys (None counts as empty)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            if not key:
                self.fail("", f"expected a mapping of keys (fuse:, data:, replica:, ...) at the "
                              f"top level, got {_show(value)} ({_kind(value)})")
            self.wrong_type(key, value, "a mapping", hint)
        for k in value:
            if not isinstance(k, str):
                self.fail(_join(key, str(k)), f"keys must be strings, got {_show(k)} "
                                              f"({_kind(k)})")
            if k not in allowed:
                self.unknown_key(key, k, allowed)
        return value

    def unknown_key(self, prefix: str, k: str, allowed: Sequence[str]) -> NoReturn:
        full = _join(prefix, k)
        by_norm = {_normalise_key(a): a for a in allowed}
        norm = _normalise_key(k)
        if norm in by_norm:
            match: str | None = by_norm[norm]
        else:
            close = difflib.get_close_matches(norm, list(by_norm), n=1, cutoff=0.6)
            match = by_norm[close[0]] if close else None
        msg = f"unknown key {full}{self.where()}; "
        if match is not None:
            msg += f"did you mean {_join(prefix, match)}?"
        else:
            where = f"under {prefix}" if prefix else "at the top level"
            msg += f"valid keys {where}: {', '.join(allowed)}"
        raise _error(msg)

    def string(self, m: Mapping[str, Any], name: str, prefix: str, default: str) -> str:
        value = self.opt_string(m, name, prefix)
        return default if value is None else value

    def opt_string(self, m: Mapping[str, Any], name: str, prefix: str,
                   empty_is_none: bool = False) -> str | None:
        value = m.get(name)
        key = _join(prefix, name)
        if value is None:
            return None
        if not isinstance(value, str):
            hint = "; quote it" if isinstance(value, int | float) else ""
            self.wrong_type(key, value, "a string", hint)
        if value == "":
            if empty_is_none:
                return None
            self.fail(key, "must not be empty (leave the key out for the default)")
        return str(value)

    def boolean(self, m: Mapping[str, Any], name: str, prefix: str, default: bool) -> bool:
        value = m.get(name)
        key = _join(prefix, name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, _Expanded) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        hint = ""
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            hint = "; write it without quotes"
        self.wrong_type(key, value, "true or false", hint)

    def duration(self, m: Mapping[str, Any], name: str, prefix: str, default: float,
                 positive: bool = False) -> float:
        value = m.get(name)
        key = _join(prefix, name)
        if value is None:
            return default
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            self.wrong_type(key, value, "a duration like 1s, 500ms, 5m or 1h")
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.fail(key, f"invalid duration {_show(value)}: {exc}")
        if positive and seconds <= 0:
            self.fail(key, f"must be longer than 0, got {_show(value)}")
        return seconds

    def size(self, m: Mapping[str, Any], name: str, prefix: str, default: int) -> int:
        value = m.get(name)
        key = _join(prefix, name)
        if value is None:
            return default
        if not isinstance(value, str | int) or isinstance(value, bool):
            self.wrong_type(key, value, "a size like 64MiB, 1GB or 100k")
        try:
            nbytes = parse_size(value)
        except ValueError as exc:
            self.fail(key, f"invalid size {_show(value)}: {exc}")
        if nbytes <= 0:
            self.fail(key, f"must be more than 0 bytes, got {_show(value)}")
        return nbytes

    def choice(self, m: Mapping[str, Any], name: str, prefix: str,
               choices: Mapping[str, str], default: str) -> str:
        value = self.opt_string(m, name, prefix)
        if value is None:
            return default
        got = choices.get(value.strip().lower())
        if got is None:
            valid = ", ".join(dict.fromkeys(choices.values()))
            self.fail(_join(prefix, name),
                      f"invalid value {_show(value)}; expected one of: {valid}")
        return got

    # -- sections ------------------------------------------------------------------------

    def config(self, raw: object, source: Path | None) -> Config:
        top = self.mapping(raw, "", _TOP_KEYS)
        fuse_m = self.mapping(top.get("fuse"), "fuse", _FUSE_KEYS)
        fuse = FuseConfig(
            dir=self.string(fuse_m, "dir", "fuse", FuseConfig.dir),
            allow_other=self.boolean(fuse_m, "allow-other", "fuse", False),
            debug=self.boolean(fuse_m, "debug", "fuse", False),
        )
        data_m = self.mapping(top.get("data"), "data", _DATA_KEYS)
        data = DataConfig(
            dir=self.string(data_m, "dir", "data", DataConfig.dir),
            retention=self.duration(data_m, "retention", "data", DataConfig.retention),
            spool_limit=self.size(data_m, "spool-limit", "data", DataConfig.spool_limit),
        )
        log_m = self.mapping(top.get("log"), "log", _LOG_KEYS)
        log = LogConfig(
            level=_LOG_LEVELS[self.choice(log_m, "level", "log", _LOG_LEVELS, "info")],
            format=_LOG_FORMATS[self.choice(log_m, "format", "log", _LOG_FORMATS, "text")],
        )
        http_m = self.mapping(top.get("http"), "http", _HTTP_KEYS)
        http = HttpConfig(
            addr=self.addr(http_m, "addr", "http", HttpConfig.addr),
            secret=self.opt_string(http_m, "secret", "http", empty_is_none=True),
        )
        lease_m = self.mapping(top.get("lease"), "lease", _LEASE_KEYS)
        lease_type = self.opt_string(lease_m, "type", "lease")
        if lease_type is not None and lease_type != "static":
            self.fail("lease.type", f"{_show(lease_type)} is not supported; litefs-py supports "
                                    "only 'static' for now")
        lease = LeaseConfig(
            candidate=self.boolean(lease_m, "candidate", "lease", True),
            advertise_url=self.opt_string(lease_m, "advertise-url", "lease", empty_is_none=True),
            hostname=self.opt_string(lease_m, "hostname", "lease", empty_is_none=True),
        )
        key_id = self.opt_string(top, "access-key-id", "", empty_is_none=True)
        secret = self.opt_string(top, "secret-access-key", "", empty_is_none=True)
        self.check_pair(key_id, secret, "")
        replica = self.replica_choice(top, "", key_id, secret)
        dbs = self.dbs(top.get("dbs"), key_id, secret)
        lease = self.check_lease(lease, replica is not None or any(d.replica for d in dbs))
        return Config(
            fuse=fuse,
            data=data,
            exit_on_error=self.boolean(top, "exit-on-error", "", True),
            exec=self.exec(top.get("exec")),
            log=log,
            http=http,
            lease=lease,
            proxy=self.proxy(top.get("proxy")),
            replica=replica,
            dbs=dbs,
            access_key_id=key_id,
            secret_access_key=secret,
            source=source,
        )

    def check_lease(self, lease: LeaseConfig, has_bucket: bool) -> LeaseConfig:
        url = lease.advertise_url
        if url is not None:
            if "://" not in url:
                url = "http://" + url
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                self.fail("lease.advertise-url", f"{_show(lease.advertise_url)} is not an "
                          "http(s) URL; write e.g. 'http://primary.internal:20202'")
            lease = replace(lease, advertise_url=url.rstrip("/"))
        if not lease.candidate and url is None and not has_bucket:
            self.fail("lease.candidate", "false makes this mount a read replica, but it has "
                      "nothing to follow: set lease.advertise-url to the primary's URL, or a "
                      "replica bucket (replica.url) to follow the bucket")
        return lease

    def addr(self, m: Mapping[str, Any], name: str, prefix: str, default: str) -> str:
        key = _join(prefix, name)
        value = m.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            self.wrong_type(key, value, "an address like ':20202'", f"; write ':{value}'")
        addr = self.string(m, name, prefix, default)
        _host, sep, port = addr.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            self.fail(key, f"invalid address {_show(addr)}; expected [host]:port, e.g. ':20202'")
        return addr

    def exec(self, value: object) -> tuple[ExecCommand, ...]:
        key = "exec"
        if value is None:
            return ()
        if isinstance(value, str):
            return (ExecCommand(self.argv(value, key)),)
        if not isinstance(value, list):
            self.wrong_type(key, value, "a command string, a list of arguments or a list of "
                                        "{cmd: ..., if-candidate: ...}")
        if not value:
            return ()
        if isinstance(value[0], str):  # one command as a list of arguments
            return (ExecCommand(self.argv(value, key)),)
        commands: list[ExecCommand] = []
        for i, item in enumerate(value):
            ikey = f"{key}[{i}]"
            if not isinstance(item, dict):
                self.wrong_type(ikey, item, "a mapping {cmd: ..., if-candidate: ...}",
                                " (don't mix argument strings and {cmd: ...} entries)")
            m = self.mapping(item, ikey, _EXEC_KEYS)
            if m.get("cmd") is None:
                self.fail(ikey, "missing cmd (the command to run)")
            commands.append(ExecCommand(
                argv=self.argv(m["cmd"], f"{ikey}.cmd"),
                if_candidate=self.boolean(m, "if-candidate", ikey, False),
            ))
        return tuple(commands)

    def argv(self, value: object, key: str) -> tuple[str, ...]:
        if isinstance(value, str):
            try:
                argv = shlex.split(value)
            except ValueError as exc:
                self.fail(key, f"cannot split {_show(value)} into arguments: {exc}")
        elif isinstance(value, list):
            for i, a in enumerate(value):
                if not isinstance(a, str):
                    hint = ("; quote it" if isinstance(a, int | float) else
                            " (don't mix argument strings and {cmd: ...} entries)")
                    self.wrong_type(f"{key}[{i}]", a, "a string (an argument)", hint)
            argv = [str(a) for a in value]
        else:
            self.wrong_type(key, value, "a command string or a list of arguments")
        if not argv:
            self.fail(key, "the command is empty")
        return tuple(argv)

    def proxy(self, value: object) -> ProxyConfig | None:
        if value is None:
            return None
        m = self.mapping(value, "proxy", _PROXY_KEYS)
        for name in ("addr", "target", "db"):
            if m.get(name) is None:
                self.fail("proxy", f"missing proxy.{name}")
        passthrough = m.get("passthrough")
        patterns: list[str] = []
        if passthrough is not None:
            if not isinstance(passthrough, list):
                self.wrong_type("proxy.passthrough", passthrough, "a list of path patterns")
            for i, p in enumerate(passthrough):
                if not isinstance(p, str):
                    self.wrong_type(f"proxy.passthrough[{i}]", p, "a string")
                patterns.append(str(p))
        return ProxyConfig(
            addr=self.addr(m, "addr", "proxy", ""),
            target=self.string(m, "target", "proxy", ""),
            db=self.string(m, "db", "proxy", ""),
            max_lag=self.duration(m, "max-lag", "proxy", 10.0, positive=True),
            passthrough=tuple(patterns),
        )

    def dbs(self, value: object, key_id: str | None, secret: str | None) -> tuple[DBConfig, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.wrong_type("dbs", value, "a list of {name: ..., replica: ...}")
        out: list[DBConfig] = []
        seen: dict[str, str] = {}
        for i, item in enumerate(value):
            key = f"dbs[{i}]"
            if not isinstance(item, dict):
                self.wrong_type(key, item, "a mapping {name: ..., replica: ...}")
            m = self.mapping(item, key, _DB_KEYS)
            name = self.opt_string(m, "name", key)
            if name is None:
                self.fail(key, "missing name (the database file name under fuse.dir, "
                               "e.g. store.db)")
            if "/" in name or name in (".", ".."):
                self.fail(f"{key}.name", f"invalid database name {_show(name)}; expected a file "
                                         "name without '/', e.g. store.db")
            if name in seen:
                self.fail(f"{key}.name", f"database {_show(name)} is already listed as "
                                         f"{seen[name]}")
            seen[name] = key
            out.append(DBConfig(name=name, replica=self.replica_choice(m, key, key_id, secret)))
        return tuple(out)

    def replica_choice(self, m: Mapping[str, Any], prefix: str, key_id: str | None,
                       secret: str | None) -> ReplicaConfig | None:
        """`replica:` or `replicas:` (at most one entry) in mapping `m`."""
        single, multi = m.get("replica"), m.get("replicas")
        rkey, rskey = _join(prefix, "replica"), _join(prefix, "replicas")
        if single is not None and multi is not None:
            self.fail(rkey, f"both {rkey} and {rskey} are given; use one of them")
        if single is not None:
            return self.replica(single, rkey, key_id, secret)
        if multi is None:
            return None
        if not isinstance(multi, list):
            self.wrong_type(rskey, multi, "a list of replicas",
                            f" (for a single mapping write {rkey}: instead)")
        if len(multi) > _MAX_REPLICAS:
            self.fail(rskey, f"has {len(multi)} entries; litefs-py supports at most "
                             f"{_MAX_REPLICAS} replica per database for now")
        if not multi:
            return None
        return self.replica(multi[0], f"{rskey}[0]", key_id, secret)

    def check_pair(self, key_id: str | None, secret: str | None, prefix: str) -> None:
        if (key_id is None) != (secret is None):
            have, missing = ("access-key-id", "secret-access-key") if key_id else (
                "secret-access-key", "access-key-id")
            self.fail(_join(prefix, missing), f"{_join(prefix, have)} is set but "
                                              f"{_join(prefix, missing)} is not; set both or "
                                              "neither")

    def age_keys(self, value: object, key: str) -> AgeKeys | None:
        try:
            return parse_age_settings(value)
        except AgeSettingsError as exc:
            self.fail(_join(key, exc.key) if exc.key else key, exc.detail)

    def replica(self, value: object, key: str, top_key_id: str | None = None,
                top_secret: str | None = None) -> ReplicaConfig:
        m = dict(self.mapping(
            value, key, _REPLICA_KEYS,
            " (write the URL form as {url: 's3://bucket/path?endpoint=...'})"
            if isinstance(value, str) else "",
        ))
        url = self.opt_string(m, "url", key)
        from_url: dict[str, object] = {}
        if url is not None:
            from_url = _parse_url(url, _join(key, "url"), self.where())
            for k in _LOCATION_KEYS:
                if m.get(k) is not None and k in from_url:
                    self.fail(_join(key, k), f"is also given by {key}.url; give it once")
            m.update(from_url)
        rtype = self.opt_string(m, "type", key)
        rtype = rtype.strip().lower() if rtype is not None else None
        if rtype is None:
            if m.get("bucket") is None:
                self.fail(key, "needs url: (s3://bucket/path?endpoint=... or file:///dir) or "
                               "type: (s3 or file)")
            rtype = "s3"
        if rtype not in ("s3", "file"):
            self.fail(_join(key, "type"), f"invalid value {_show(rtype)}; expected s3 or file")
        common: dict[str, Any] = {
            "sync_interval": self.duration(m, "sync-interval", key, 1.0, positive=True),
            "batch_window": self.duration(m, "batch-window", key, 0.05),
            "retention": self.duration(m, "retention", key, 86400.0, positive=True),
            "snapshot_interval": self.duration(m, "snapshot-interval", key, 86400.0,
                                               positive=True),
            "l1_interval": self.duration(m, "l1-interval", key, 30.0, positive=True),
            "l2_interval": self.duration(m, "l2-interval", key, 300.0, positive=True),
            "l3_interval": self.duration(m, "l3-interval", key, 3600.0, positive=True),
            "validation_interval": self.duration(m, "validation-interval", key, 0.0),
            "age": self.age_keys(m.get("age"), _join(key, "age")),
        }
        if rtype == "file":
            for k in _S3_ONLY_KEYS:
                if m.get(k) is not None:
                    self.fail(_join(key, k), "only applies to s3 replicas (this one is "
                                             "type file)")
            path = self.opt_string(m, "path", key)
            if path is None:
                self.fail(key, "type file needs path: (the backup directory)")
            if len(path) > 1:
                path = path.rstrip("/")
            return ReplicaConfig(type="file", path=path, **common)
        bucket = self.opt_string(m, "bucket", key)
        if bucket is None:
            self.fail(key, "type s3 needs bucket:")
        if not _BUCKET_RE.fullmatch(bucket):
            self.fail(_join(key, "bucket"), f"invalid bucket name {_show(bucket)}; expected "
                                            "letters, digits, '.', '-' or '_'")
        raw_endpoint = self.opt_string(m, "endpoint", key, empty_is_none=True)
        endpoint = None
        if raw_endpoint is not None:
            try:
                endpoint = normalize_endpoint(raw_endpoint)
            except QuietError as exc:
                self.fail(_join(key, "url" if "endpoint" in from_url and url else "endpoint"),
                          exc.message)
        key_id = self.opt_string(m, "access-key-id", key, empty_is_none=True)
        secret = self.opt_string(m, "secret-access-key", key, empty_is_none=True)
        self.check_pair(key_id, secret, key)
        if key_id is None:
            key_id, secret = top_key_id, top_secret
        return ReplicaConfig(
            type="s3",
            bucket=bucket,
            path=(self.opt_string(m, "path", key, empty_is_none=True) or "").strip("/"),
            endpoint=endpoint,
            region=self.opt_string(m, "region", key, empty_is_none=True),
            force_path_style=self.boolean(m, "force-path-style", key,
                                          _default_force_path_style(endpoint)),
            access_key_id=key_id,
            secret_access_key=secret,
            **common,
        )


_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# --------------------------------------------------------------------------------------------
# Replica URLs
# --------------------------------------------------------------------------------------------

_URL_HINT = "expected s3://bucket/path?endpoint=..., file:///absolute/dir or /absolute/dir"


def _parse_url(url: str, key: str, where: str) -> dict[str, object]:
    """A replica URL → the location keys it sets (spelled as in the file)."""
    label = f"{key}{where}: " if key else ""
    text = url.strip()

    def fail(detail: str) -> NoReturn:
        raise _error(f"{label}{detail}")

    if text.startswith("/"):
        return {"type": "file", "path": text}
    if "://" not in text:
        fail(f"invalid replica URL {_show(url)}; {_URL_HINT}")
    scheme = text.split("://", 1)[0].lower()
    if scheme not in ("s3", "file"):
        fail(f"unsupported replica URL scheme {scheme}:// in {_show(url)}; supported: s3://, "
             "file:// or an absolute path")
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        fail(f"invalid replica URL {_show(url)}: {exc}")
    if parts.fragment:
        fail(f"invalid replica URL {_show(url)}: remove the #fragment")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            fail(f"invalid file URL {_show(url)}; write file:///absolute/dir (three slashes)")
        if parts.query:
            fail(f"file:// URLs take no query parameters, got {_show(parts.query)}")
        path = unquote(parts.path)
        if not path.startswith("/"):
            fail(f"invalid file URL {_show(url)}; write file:///absolute/dir")
        return {"type": "file", "path": path}
    if "@" in parts.netloc:
        fail(f"replica URL {_show(url)} has credentials in it; use access-key-id/"
             "secret-access-key or LITEFS_ACCESS_KEY_ID/LITEFS_SECRET_ACCESS_KEY instead")
    bucket = parts.netloc
    if not bucket:
        fail(f"replica URL {_show(url)} has no bucket; expected s3://bucket/path")
    if not _BUCKET_RE.fullmatch(bucket):
        fail(f"invalid bucket name {_show(bucket)} in {_show(url)}; expected letters, digits, "
             "'.', '-' or '_'")
    out: dict[str, object] = {"type": "s3", "bucket": bucket}
    path = unquote(parts.path).strip("/")
    if path:
        out["path"] = path
    seen: set[str] = set()
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _URL_PARAMS:
            fail(f"unknown query parameter {name!r} in {_show(url)}; valid: "
                 f"{', '.join(_URL_PARAMS)}")
        canonical = "force-path-style" if name == "forcePathStyle" else name
        if canonical in seen:
            fail(f"query parameter {name!r} is given twice in {_show(url)}")
        seen.add(canonical)
        if canonical == "force-path-style":
            flag = _BOOL_WORDS.get(value.strip().lower())
            if flag is None:
                fail(f"invalid {name}={value!r} in {_show(url)}; expected true or false")
            out[canonical] = flag
        elif value:
            out[canonical] = value
    return out


def parse_replica_url(url: str) -> ReplicaConfig:
    """One replica from a URL alone (e.g. `litefs restore -o OUT URL`): `s3://bucket/path?…`,
    `file:///dir` or `/dir`. The path is used as given (no database name is appended).
    Credentials are not part of it: use `resolve_credentials`."""
    from_url = _parse_url(url, "", "")
    loader = _Loader(None, {}, context=f"replica URL {_show(url)}")
    return loader.replica(from_url, "")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects a key given twice in one mapping (YAML would keep the last
    silently, e.g. a second `replica:` replacing the first)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue  # construct_mapping reports this one
        if key in seen:
            line = key_node.start_mark.line + 1
            first = seen[key].line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} on line {line} (first on line {first})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _read_yaml(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _error(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise _error(f"config file {path} is a directory") from None
    except UnicodeDecodeError as exc:
        raise _error(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise _error(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        # A yaml.SafeLoader subclass: as safe as yaml.safe_load, plus duplicate-key errors.
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise _error(f"invalid YAML in {path}{at}: {problem}") from None
    except yaml.YAMLError as exc:
        raise _error(f"invalid YAML in {path}: {' '.join(str(exc).split())}") from None


def load_config(path: str | Path | None, *, env: Mapping[str, str] = os.environ) -> Config:
    """Load and validate `litefs.yml`.

    With `path` None, the first of CONFIG_SEARCH_PATHS that exists (./litefs.yml, then
    /etc/litefs.yml) is used, and the defaults (`Config()`) if there is none. An explicit path
    must exist. `${VAR}`, `${VAR:-default}` and `$VAR` in string values come from `env`; `$$`
    is a literal `$`. Any problem raises QuietError(…, ExitCode.CONFIG) with a one-line message.
    """
    if path is None:
        for candidate in CONFIG_SEARCH_PATHS:
            if candidate.is_file():
                path = candidate
                break
        else:
            return Config()
    source = Path(path)
    raw = _read_yaml(source)
    loader = _Loader(str(source), env)
    return loader.config(loader.expand_tree(raw, ""), source)
