"""`litefs.yml`: its schema, loading, validation and the frozen configuration objects.

The schema is the frozen dataclasses below, written once: a field is a key, its type what the
key holds, its default the key's default, `Annotated[T, parse]` the function that reads a value
that needs one. config/schema.py walks a YAML document through them and words the errors; a
Litestream configuration file is read through config/litestream.py.

Every problem with a configuration file or a replica URL raises
`QuietError(message, ExitCode.CONFIG)` with a one-line message that names the key, the value
and the fix. Nothing here touches the network or the filesystem beyond reading the file (and
the age key files `replica.age` names, read at load so that a bad key stops the start).
The reference for users is docs/config.md; examples/litefs.yml is an annotated example.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, NamedTuple, NoReturn
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from ..errors import QuietError
from ..storage.endpoint import normalize_endpoint
from . import schema as s
from .schema import parse_duration, parse_size

if TYPE_CHECKING:
    from ..storage.age import AgeKeys

__all__ = [
    "CONFIG_SEARCH_PATHS",
    "CREDENTIAL_ENV",
    "NOT_SUPPORTED_YET",
    "AgeConfig",
    "Config",
    "Credentials",
    "DBConfig",
    "DataConfig",
    "EtcdLeaseConfig",
    "ExecCommand",
    "FuseConfig",
    "HttpConfig",
    "HttpTlsConfig",
    "LeaseConfig",
    "LogConfig",
    "ProxyConfig",
    "ReplicaConfig",
    "ReplicationConfig",
    "S3LeaseConfig",
    "find_credentials",
    "load_config",
    "normalize_endpoint",
    "parse_duration",
    "parse_replica_url",
    "parse_size",
    "resolve_credentials",
    "schema_keys",
    "url_location",
]

#: Where `load_config(None)` looks, in order (the first that exists wins).
CONFIG_SEARCH_PATHS: tuple[Path, ...] = (Path("litefs.yml"), Path("/etc/litefs.yml"))

#: Keys that parse and are then refused, with what to do instead. When a feature arrives,
#: deleting its entry here is all it takes to accept the key.
NOT_SUPPORTED_YET: dict[str, str] = {
}

LogLevel = Literal["debug", "info", "warn", "error"]
LogFormat = Literal["text", "json"]
ReplicaType = Literal["s3", "file"]

GiB = 1024**3


def _key(key: str | None = None, *, missing: str | None = None) -> dict[str, str]:
    """Field metadata: the file key if it is not the field name in kebab-case ("" for a field
    no file sets), and the message when a required key is missing."""
    return {k: v for k, v in (("key", key), ("missing", missing)) if v is not None}


# --------------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuseConfig:
    dir: str = "/litefs"
    allow_other: bool = False
    debug: bool = False


@dataclass(frozen=True)
class DataConfig:
    dir: str = "/var/lib/litefs"
    # seconds local LTX files are kept after upload (0: as soon as they are uploaded)
    retention: Annotated[float, s.duration_or_0] = 600.0
    spool_limit: Annotated[int, s.size] = GiB  # bytes of not-yet-uploaded LTX kept locally
    # bytes each database's quarantine keeps (what recovery set aside instead of deleting)
    quarantine_limit: Annotated[int, s.size] = GiB


@dataclass(frozen=True)
class ExecCommand:
    """One command to run: `argv` is never passed through a shell."""

    _EXPECTED: ClassVar[str] = "a mapping {cmd: ..., if-candidate: ...}"
    _HINT: ClassVar[str] = " (don't mix argument strings and {cmd: ...} entries)"

    argv: Annotated[tuple[str, ...], s.argv] = field(
        metadata=_key("cmd", missing="missing cmd (the command to run)"))
    if_candidate: bool = False  # run only on a node that can be primary (app.py)


def _commands(value: object) -> tuple[ExecCommand, ...]:
    """`exec:`: one command (a string or a list of arguments) or a list of {cmd, if-candidate}."""
    if isinstance(value, list) and value and not isinstance(value[0], str):
        commands: tuple[ExecCommand, ...] = SCHEMA.read(value, tuple[ExecCommand, ...])
        return commands
    if not isinstance(value, str | list):
        raise s.WrongType(value, "a command string, a list of arguments or a list of "
                                 "{cmd: ..., if-candidate: ...}")
    return (ExecCommand(s.argv(value)),) if value != [] else ()


@dataclass(frozen=True)
class LogConfig:
    level: Annotated[LogLevel, s.choice("debug", "info", "warn", "error",
                                        aliases={"warning": "warn"})] = "info"
    format: Annotated[LogFormat, s.choice("text", "json")] = "text"


@dataclass(frozen=True)
class HttpTlsConfig:
    """`http.tls`: TLS on the replication API. File paths (PEM); nothing is read here
    (replication/http_tls.py loads them at start and names the key of a file it cannot use).

    The serving node uses `cert`/`key` (and `client-ca` to require client certificates); a
    node that connects uses `ca` (else the system's trusted CAs) and `client-cert`/
    `client-key` when the server asks for one. One file can hold both roles' keys, since a
    node may be either after a failover."""

    cert: str | None = None  # this node's certificate chain, served on http.addr
    key: str | None = field(default=None, repr=False)  # its private key
    ca: str | None = None  # CA bundle that verifies the primary's certificate
    client_ca: str | None = None  # CA bundle that verifies replicas' client certificates
    client_cert: str | None = None  # certificate this node presents as a client (mTLS)
    client_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_file_keys(cls, m: dict[str, Any]) -> dict[str, Any]:
        for a, b in (("cert", "key"), ("client-cert", "client-key")):
            have_a, have_b = (s.read_at((k,), s.opt_text, m.get(k, "")) is not None
                              for k in (a, b))
            if have_a != have_b:
                have, missing = (a, b) if have_a else (b, a)

                def detail(here: str, have: str = have, missing: str = missing) -> str:
                    return (f"{s.join(here, have)} is set but {s.join(here, missing)} is not; "
                            "set both or neither")

                raise s.Problem(detail, at=(missing,))
        if s.read_at(("client-ca",), s.opt_text, m.get("client-ca", "")) is not None \
                and "cert" not in m:
            raise s.Problem(lambda here: f"asks for client certificates but "
                                         f"{s.join(here, 'cert')}/{s.join(here, 'key')} are "
                                         "not set: client certificates need TLS on the server",
                            at=("client-ca",))
        return m

    @property
    def serves(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class HttpConfig:
    addr: Annotated[str, s.address] = ":20202"
    secret: str | None = field(default=None, repr=False)
    # Send the secret over plain http:// to a host that is not loopback (otherwise refused).
    allow_insecure: bool = False
    tls: HttpTlsConfig = field(default_factory=HttpTlsConfig)
    metrics_public: bool = False  # GET /metrics without the secret (app.py)


def _http_url(value: object) -> str | None:
    """`host:port` or `http(s)://host:port`, kept with its scheme and without a trailing /."""
    text = s.opt_text(value)
    if text is None:
        return None
    url = text if "://" in text else "http://" + text
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise s.Problem(f"{s.show_value(text)} is not an http(s) URL; write e.g. "
                        "'http://primary.internal:20202'")
    return url.rstrip("/")


def _lease_type(value: object) -> str:
    """`lease.type`: static, etcd or s3 (any case). Consul is refused for good, naming what to
    use instead (there is no Consul server to test against)."""
    got = s.text(value).strip().lower()
    if got == "consul":
        raise s.Problem("Consul is not supported by litefs-py (there is no Consul server to "
                        "test it against); use type: etcd (lease.etcd.endpoints: your etcd "
                        "cluster) or type: s3 (the lease is an object in the replica bucket)")
    if got not in ("static", "etcd", "s3"):
        raise s.Problem(f"invalid value {s.show_value(value)}; expected one of: static, etcd, "
                        "s3")
    return got


def _etcd_endpoints(value: object) -> tuple[str, ...]:
    """A list of client URLs, or one string with commas (as etcdctl takes them)."""
    if isinstance(value, str):
        items: list[object] = [e for e in value.split(",") if e.strip()]
    elif isinstance(value, list):
        items = list(value)
    else:
        raise s.WrongType(value, "a list of etcd client URLs, e.g. [http://10.0.0.5:2379]")
    if not items:
        raise s.Problem("list the etcd cluster's client URLs, e.g. [http://10.0.0.5:2379]")
    return tuple(s.read_at((i,), s.text, e).strip() for i, e in enumerate(items))


@dataclass(frozen=True)
class EtcdLeaseConfig:
    """`lease.etcd` (the shape of LiteFS's `lease.consul`)."""

    endpoints: Annotated[tuple[str, ...], _etcd_endpoints] = field(metadata=_key(
        missing="missing endpoints (the etcd cluster's client URLs, e.g. "
                "[http://10.0.0.5:2379])"))
    key: str = "litefs/primary"
    ttl: Annotated[float, s.duration] = 10.0
    lock_delay: Annotated[float, s.duration_or_0] = 1.0


@dataclass(frozen=True)
class S3LeaseConfig:
    """`lease.s3`: the lease object in the default replica's location."""

    key: str = "litefs-lease.json"
    ttl: Annotated[float, s.duration] = 10.0
    lock_delay: Annotated[float, s.duration_or_0] = 1.0
    max_clock_skew: Annotated[float, s.duration_or_0] = 1.0


LeaseType = Literal["static", "etcd", "s3"]


@dataclass(frozen=True)
class LeaseConfig:
    type: Annotated[LeaseType, _lease_type] = "static"
    candidate: bool = True
    advertise_url: Annotated[str | None, _http_url] = None
    hostname: str | None = None  # the name replicas show in .primary; default: the host name
    promote: bool = False
    demote_delay: Annotated[float, s.duration_or_0] = 10.0
    etcd: EtcdLeaseConfig | None = None
    s3: S3LeaseConfig | None = None
    # The backend's settings, checked by the lease package's own rules (replication/lease).
    settings: Any = field(default=None, metadata=_key(""), compare=False, repr=False)

    def checked(self) -> LeaseConfig:
        """The lease package's rules (TTL at least 2 s, endpoints, advertise-url for a
        candidate, a section that matches the type), worded for this file."""
        from ..replication.lease import LeaseConfigError, parse_lease_settings

        raw: dict[str, object] = {"type": self.type, "candidate": self.candidate,
                                  "promote": self.promote, "demote-delay": self.demote_delay}
        if self.advertise_url is not None:
            raw["advertise-url"] = self.advertise_url
        if self.hostname is not None:
            raw["hostname"] = self.hostname
        if self.etcd is not None:
            e = self.etcd
            raw["etcd"] = {"endpoints": list(e.endpoints), "key": e.key, "ttl": e.ttl,
                           "lock-delay": e.lock_delay}
        if self.s3 is not None:
            b = self.s3
            raw["s3"] = {"key": b.key, "ttl": b.ttl, "lock-delay": b.lock_delay,
                         "max-clock-skew": b.max_clock_skew}
        if self.type == "etcd" and self.etcd is None:
            raise s.Problem("type etcd needs lease.etcd.endpoints (the etcd cluster's client "
                            "URLs, e.g. [http://10.0.0.5:2379])", at=("etcd",))
        try:
            settings = parse_lease_settings(raw, parse_duration=float)
        except LeaseConfigError as exc:
            key, _, detail = exc.message.partition(": ")
            path = tuple(key.split(".")[1:]) if key.startswith("lease.") else ()
            raise s.Problem(detail if path else exc.message, at=path) from None
        return replace(self, settings=settings)


CommitMode = Literal["local", "replica", "bucket"]


@dataclass(frozen=True)
class ReplicationConfig:
    """`replication`: when a commit is acknowledged to the application (docs/leases.md)."""

    commit: Annotated[CommitMode, s.choice("local", "replica", "bucket")] = "local"
    commit_timeout: Annotated[float, s.duration] = 5.0


def _db_name(value: object) -> str:
    name = s.text(value)
    if "/" in name or name in (".", ".."):
        raise s.Problem(f"invalid database name {s.show_value(name)}; expected a file name "
                        "without '/', e.g. store.db")
    return name


def _patterns(value: object) -> tuple[str, ...]:
    """LiteFS's path patterns (`*` matches anything): a list, or one pattern as a string."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise s.WrongType(value, "a list of path patterns like ['/static/*', '*.png']")
    return tuple(s.read_at((i,), s.text, item) for i, item in enumerate(items))


def _host_port(value: object, example: str, *, host_required: bool) -> str:
    """`[host]:port` (or `http://host:port`, read as host:port) → `host:port`; a missing host
    is `localhost` where one is needed (an address to connect to), else left out (bind all)."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise s.WrongType(value, f"an address like {example!r}", f"; write ':{value}'")
    text = s.text(value).strip()
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            raise s.Problem(f"{s.show_value(text)}: expected host:port (plain HTTP), "
                            f"e.g. {example!r}")
        text = parts.netloc
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise s.Problem(f"invalid address {s.show_value(text)}; expected [host]:port, "
                        f"e.g. {example!r}")
    if host_required and not host:
        host = "localhost"
    return f"{host}:{port}" if host else f":{port}"


def _proxy_addr(value: object) -> str:
    return _host_port(value, ":8080", host_required=False)


def _proxy_target(value: object) -> str | None:
    """Empty (e.g. `${APP_ADDR:-}`) is no target, and so no proxy on this node."""
    return None if value == "" else _host_port(value, "localhost:8081", host_required=True)


def _primary_proxy_url(value: object) -> str:
    return "http://" + _host_port(value, "http://primary:8080", host_required=True)


def _header_size(value: object) -> int:
    nbytes = s.size(value)
    if nbytes < 1024:
        raise s.Problem(f"expected a number of bytes >= 1024, got {s.show_value(value)}")
    return nbytes


@dataclass(frozen=True)
class ProxyConfig:
    """The HTTP proxy in front of the app (`proxy:`, LiteFS's keys plus a few of litefs-py's
    own: docs/proxy.md). Durations in seconds; 0 = none. proxy/settings.py turns it into the
    running proxy's settings; without `target` there is no proxy (LiteFS's rule), and then
    `addr` and `db` are not needed."""

    addr: Annotated[str | None, _proxy_addr] = None  # "[host]:port" the proxy listens on
    target: Annotated[str | None, _proxy_target] = None  # "host:port" of the app on this node
    db: Annotated[str | None, _db_name] = None  # whose TXID read-your-writes waits for
    max_lag: Annotated[float, s.duration_or_0] = 10.0  # a replica further behind answers 503
    passthrough: Annotated[tuple[str, ...], _patterns] = ()  # straight to the app
    always_forward: Annotated[tuple[str, ...], _patterns] = ()  # to the primary, even GETs
    primary_redirect_timeout: Annotated[float, s.duration_or_0] = 5.0  # writes wait, then 503
    debug: bool = False  # log every request at info
    # Time allowed between reads of the request body; a client stalling longer is cut.
    read_timeout: Annotated[float, s.duration_or_0] = 0.0
    # From the first byte of a request head (or a new connection) to the complete head:
    # the slowloris bound (408, then the connection is closed).
    read_header_timeout: Annotated[float, s.duration_or_0] = 10.0
    write_timeout: Annotated[float, s.duration_or_0] = 0.0  # a whole response (SSE needs 0)
    idle_timeout: Annotated[float, s.duration_or_0] = 30.0  # a kept-alive connection
    # litefs-py's own:
    txid_timeout: Annotated[float, s.duration_or_0] = 5.0  # read-your-writes wait, then 504
    fly_replay: bool = False  # answer writes on a replica with `fly-replay` (Fly.io only)
    max_header_size: Annotated[int, _header_size] = 16 * 1024  # a larger head gets 431
    # The primary's proxy, when the primary's /info cannot say (proxy/primary.py).
    primary_url: Annotated[str | None, _primary_proxy_url] = None

    def checked(self) -> ProxyConfig:
        if self.target is None:
            return self
        for key, value in (("addr", self.addr), ("db", self.db)):
            if value is None:
                raise s.Problem("is required when proxy.target is set (addr: where the proxy "
                                "listens, e.g. ':8080'; db: the database name, e.g. "
                                "'store.db')", at=(key,))
        return self


def _age_keys(value: object) -> tuple[str, ...]:
    """`replica.age.recipients` / `identities`: a list of keys (or files holding keys), or one.
    Never quotes an entry: identities are secret keys."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise s.Problem("expected a list of keys")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise s.Problem("expected a key (a non-empty string)", at=(i,))
        out.append(item.strip())
    return tuple(out)


@dataclass(frozen=True)
class AgeConfig:
    """`replica.age`: encrypt the replica's LTX objects with age (storage/age.py). Entries are
    keys, or absolute paths of files holding keys (one a line, `#` comments). Every key is
    loaded here, files included, so that a typo stops the start and not the first upload."""

    _EXPECTED: ClassVar[str] = "a mapping {recipients: [...], identities: [...]}"

    recipients: Annotated[tuple[str, ...], _age_keys] = ()  # public keys: needed to write
    identities: Annotated[tuple[str, ...], _age_keys] = field(default=(), repr=False)  # to read

    def checked(self) -> AgeConfig:
        from ..storage.age import AgeSettingsError, load_identities, load_recipients

        if not self.recipients and not self.identities:
            raise s.Problem("needs recipients (public keys, to write) and/or identities "
                            "(secret keys, to read)")
        try:
            load_recipients(self.recipients)
            load_identities(self.identities)
        except AgeSettingsError as exc:
            raise s.Problem(exc.detail, at=(exc.key,)) from None
        return self

    @property
    def keys(self) -> AgeKeys:
        from ..storage.age import AgeKeys

        return AgeKeys(recipients=self.recipients, identities=self.identities)


def _default_force_path_style(endpoint: str | None) -> bool:
    """Path-style for every custom endpoint except AWS itself."""
    if endpoint is None:
        return False
    host = (urlsplit(endpoint).hostname or "").lower()
    return not (host == "amazonaws.com" or host.endswith(".amazonaws.com"))


def _replica_hint(value: object) -> str:
    return " (write the URL form as {url: 's3://bucket/path?endpoint=...'})" \
        if isinstance(value, str) else ""


@dataclass(frozen=True, kw_only=True)
class ReplicaConfig:
    """Where one database (or, as the default `replica`, every database) is backed up.

    `path` is the key prefix inside the bucket for s3 (no leading or trailing slash, "" for
    the bucket root) and a directory for file. `endpoint` is normalised (always has a
    scheme) or None for AWS's default. Durations are in seconds. Credentials here come from the
    file only; `resolve_credentials` adds the environment.
    """

    _HINT: ClassVar[object] = _replica_hint
    _FILE_ONLY: ClassVar[dict[str, str | None]] = {"url": None}  # key → the key it follows

    type: ReplicaType
    bucket: str | None = None
    path: str = ""
    endpoint: str | None = None
    region: str | None = None
    force_path_style: bool = False  # the loader's default: _default_force_path_style
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    sync_interval: Annotated[float, s.duration] = 1.0
    # After a commit wakes the uploader, wait this long for more commits to share the PUT.
    # 0 by default: the request budget below batches steady load without delaying a
    # sporadic commit.
    batch_window: Annotated[float, s.duration_or_0] = 0.0
    # The request budget (replication/budget.py): L0 uploads per second sustained, and how
    # many may go at once after a quiet spell; 0 = no limit (docs/config.md: the dollars).
    upload_rate: Annotated[float, s.rate_or_0] = 4.0
    upload_burst: Annotated[int, s.count] = 5
    retention: Annotated[float, s.duration] = 86400.0
    snapshot_interval: Annotated[float, s.duration] = 86400.0
    l1_interval: Annotated[float, s.duration] = 30.0
    l2_interval: Annotated[float, s.duration] = 300.0
    l3_interval: Annotated[float, s.duration] = 3600.0
    # A restore drill every this many seconds (0: off), in a nice-19 child process
    # (replication/drill.py), and age encryption of the objects (storage/age.py).
    validation_interval: Annotated[float, s.duration_or_0] = 0.0
    age: AgeConfig | None = field(default=None, repr=False)

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

    @classmethod
    def from_file_keys(cls, m: dict[str, Any]) -> dict[str, Any]:
        """The URL form and the expanded form → the fields, with the rules between keys."""
        from_url: dict[str, object] = {}
        if "url" in m:
            from_url = _parse_url(s.read_at(("url",), s.text, m.pop("url")), ("url",))
            for k in _LOCATION_KEYS:
                if k in m and k in from_url:
                    raise s.Problem(lambda here: f"is also given by {s.join(here, 'url')}; "
                                                 "give it once", at=(k,))
            m.update(from_url)
        if "type" not in m and "bucket" not in m:
            raise s.Problem("needs url: (s3://bucket/path?endpoint=... or file:///dir) or "
                            "type: (s3 or file)")
        m["type"] = s.read_at(("type",), s.text, m.get("type", "s3")).strip().lower()
        if m["type"] == "file":
            for k in _S3_ONLY_KEYS:
                if k in m:
                    raise s.Problem("only applies to s3 replicas (this one is type file)",
                                    at=(k,))
            if "path" not in m:
                raise s.Problem("type file needs path: (the backup directory)")
            path = s.read_at(("path",), s.text, m["path"])
            return m | {"path": path.rstrip("/") if len(path) > 1 else path}
        if m["type"] != "s3":
            raise s.Problem(f"invalid value {s.show_value(m['type'])}; expected s3 or file",
                            at=("type",))
        if "bucket" not in m:
            raise s.Problem("type s3 needs bucket:")
        if not _BUCKET_RE.fullmatch(s.read_at(("bucket",), s.text, m["bucket"])):
            raise s.Problem(f"invalid bucket name {s.show_value(m['bucket'])}; expected "
                            "letters, digits, '.', '-' or '_'", at=("bucket",))
        endpoint = s.read_at(("endpoint",), s.opt_text, m.pop("endpoint", ""))
        if endpoint is not None:
            at = ("url",) if "endpoint" in from_url else ("endpoint",)
            m["endpoint"] = s.read_at(at, _normalize_endpoint, endpoint)
        m.setdefault("force-path-style", _default_force_path_style(m.get("endpoint")))
        _check_pair(m)
        path = (s.read_at(("path",), s.opt_text, m.pop("path", "")) or "").strip("/")
        return m | {"path": path} if path else m  # "" (the bucket root) is the default


_LOCATION_KEYS = ("type", "bucket", "path", "endpoint", "region", "force-path-style")
_S3_ONLY_KEYS = ("bucket", "endpoint", "region", "force-path-style", "access-key-id",
                 "secret-access-key")
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MAX_REPLICAS = 1


def _normalize_endpoint(endpoint: str) -> str:
    try:
        return normalize_endpoint(endpoint)
    except QuietError as exc:
        raise s.Problem(exc.message) from None


def _check_pair(m: Mapping[str, Any]) -> None:
    """access-key-id and secret-access-key: both or neither."""
    key_id = s.read_at(("access-key-id",), s.opt_text, m.get("access-key-id", ""))
    secret = s.read_at(("secret-access-key",), s.opt_text, m.get("secret-access-key", ""))
    if (key_id is None) != (secret is None):
        have, missing = ("access-key-id", "secret-access-key") if key_id else (
            "secret-access-key", "access-key-id")
        raise s.Problem(lambda here: f"{s.join(here, have)} is set but "
                                     f"{s.join(here, missing)} is not; set both or neither",
                        at=(missing,))


def _one_replica(m: dict[str, Any]) -> dict[str, Any]:
    """`replica:` or Litestream's `replicas:` (a list, at most one entry for now)."""
    multi = m.pop("replicas", None)
    if multi is None:
        return m
    if "replica" in m:
        raise s.Problem(lambda here: f"both {s.join(here, 'replica')} and "
                                     f"{s.join(here, 'replicas')} are given; use one of them",
                        at=("replica",))
    if not isinstance(multi, list):
        raise s.WrongType(multi, "a list of replicas", lambda here: " (for a single mapping "
                          f"write {s.join(here, 'replica')}: instead)", at=("replicas",))
    if len(multi) > _MAX_REPLICAS:
        raise s.Problem(f"has {len(multi)} entries; litefs-py supports at most {_MAX_REPLICAS} "
                        "replica per database for now", at=("replicas",))
    if multi:
        m["replica"] = SCHEMA.read(multi[0], ReplicaConfig, ("replicas", 0))
    return m


@dataclass(frozen=True)
class DBConfig:
    _EXPECTED: ClassVar[str] = "a mapping {name: ..., replica: ...}"
    _FILE_ONLY: ClassVar[dict[str, str | None]] = {"replicas": "replica"}

    name: Annotated[str, _db_name] = field(metadata=_key(
        missing="missing name (the database file name under fuse.dir, e.g. store.db)"))
    replica: ReplicaConfig | None = None  # None: the default replica with the name appended

    @classmethod
    def from_file_keys(cls, m: dict[str, Any]) -> dict[str, Any]:
        return _one_replica(m)


def _dbs(value: object) -> tuple[DBConfig, ...]:
    if not isinstance(value, list):
        raise s.WrongType(value, "a list of {name: ..., replica: ...}")
    dbs: tuple[DBConfig, ...] = SCHEMA.read(value, tuple[DBConfig, ...])
    for i, db in enumerate(dbs):
        first = next(j for j, other in enumerate(dbs) if other.name == db.name)
        if first != i:
            raise s.Problem(f"database {s.show_value(db.name)} is already listed as "
                            f"dbs[{first}]", at=(i, "name"))
    return dbs


@dataclass(frozen=True)
class Config:
    _EXPECTED: ClassVar[str] = "a mapping of keys (fuse:, data:, replica:, ...) at the top level"
    _FILE_ONLY: ClassVar[dict[str, str | None]] = {"replicas": "replica"}

    fuse: FuseConfig = field(default_factory=FuseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    exit_on_error: bool = True
    exec: Annotated[tuple[ExecCommand, ...], _commands] = ()
    log: LogConfig = field(default_factory=LogConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    lease: LeaseConfig = field(default_factory=lambda: LeaseConfig().checked())
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    proxy: ProxyConfig | None = None  # None, or no proxy.target: no proxy on this node
    replica: ReplicaConfig | None = None  # the default target for every database
    dbs: Annotated[tuple[DBConfig, ...], _dbs] = ()
    # Top-level credentials (Litestream's place for them); already copied into every s3
    # replica above that has none of its own.
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    source: Path | None = field(default=None, metadata=_key(""))  # None: the defaults
    # What changed while reading a Litestream file: logged at start; `litefs config convert`
    # writes them as comments.
    notes: tuple[str, ...] = field(default=(), metadata=_key(""))

    def db(self, db_name: str) -> DBConfig | None:
        return next((db for db in self.dbs if db.name == db_name), None)

    def replica_for(self, db_name: str) -> ReplicaConfig | None:
        """The replica of one database: its `dbs` override, else the default replica with the
        database name appended to the path, else None (no backups)."""
        db = self.db(db_name)
        if db is not None and db.replica is not None:
            return db.replica
        return self.replica.with_db(db_name) if self.replica is not None else None

    @classmethod
    def from_file_keys(cls, m: dict[str, Any]) -> dict[str, Any]:
        _check_pair(m)
        return _one_replica(m)

    def checked(self) -> Config:
        """The rules between sections, once every section has been read."""
        has_bucket = self.replica is not None or any(d.replica for d in self.dbs)
        if (self.lease.type == "static" and not self.lease.candidate
                and self.lease.advertise_url is None and not has_bucket):
            raise s.Problem("false makes this mount a read replica, but it has nothing to "
                            "follow: set lease.advertise-url to the primary's URL, or a replica "
                            "bucket (replica.url) to follow the bucket", at=("lease", "candidate"))
        fuse_dir, data_dir = (posixpath.normpath(d) for d in (self.fuse.dir, self.data.dir))
        if data_dir == fuse_dir or data_dir.startswith(fuse_dir.rstrip("/") + "/"):
            raise s.Problem(f"{s.show_value(self.fuse.dir)} would hide data.dir "
                            f"{s.show_value(self.data.dir)} under the mount; use separate "
                            "directories, e.g. /litefs and /var/lib/litefs", at=("fuse", "dir"))
        if self.proxy is not None and self.proxy.target is not None:
            _check_proxy_ports(self.proxy, self.http)
        if self.lease.type == "s3" and self.replica is None:
            raise s.Problem("s3 keeps the lease in the default replica's bucket, but there is "
                            "no replica: set replica.url (or use type: etcd)",
                            at=("lease", "type"))
        if self.replication.commit != "local" and self.lease.type == "static":
            raise s.Problem(f"{self.replication.commit} needs lease.type etcd or s3 (the "
                            "acknowledgements come with the cluster's lease); with a static "
                            "lease use commit: local", at=("replication", "commit"))
        if self.replication.commit == "bucket" and not has_bucket:
            raise s.Problem("bucket waits for each commit to reach the replica bucket, but "
                            "there is none: set replica.url, or use commit: local or replica",
                            at=("replication", "commit"))
        if self.access_key_id is None:
            return self
        # Litestream's rule: the top-level keys serve every s3 replica without its own.
        return replace(
            self,
            replica=self._with_keys(self.replica),
            dbs=tuple(replace(d, replica=self._with_keys(d.replica)) for d in self.dbs),
        )

    def _with_keys(self, replica: ReplicaConfig | None) -> ReplicaConfig | None:
        if replica is None or replica.type != "s3" or replica.access_key_id is not None:
            return replica
        return replace(replica, access_key_id=self.access_key_id,
                            secret_access_key=self.secret_access_key)


def _check_proxy_ports(proxy: ProxyConfig, http: HttpConfig) -> None:
    """The proxy cannot listen where the replication API does, nor send requests to itself."""
    def split(addr: str) -> tuple[str, str]:
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        return ("" if host in ("0.0.0.0", "::") else host), port

    (p_host, p_port), (h_host, h_port) = split(proxy.addr or ""), split(http.addr)
    if p_port == h_port and (not p_host or not h_host or p_host == h_host):
        raise s.Problem(f"{s.show_value(proxy.addr)} is also http.addr, where the replication "
                        "API listens; give the proxy its own port, e.g. ':8080'",
                        at=("proxy", "addr"))
    t_host, t_port = split(proxy.target or "")
    if t_port == p_port and (t_host in ("localhost", "127.0.0.1", "::1")
                             or (p_host and p_host == t_host)):
        raise s.Problem(f"{s.show_value(proxy.target)} is the proxy itself (proxy.addr "
                        f"{s.show_value(proxy.addr)}); target is the application's address, "
                        "e.g. 'localhost:8081'", at=("proxy", "target"))


SCHEMA = s.Schema(Config, (Config, FuseConfig, DataConfig, ExecCommand, LogConfig, HttpConfig,
                           HttpTlsConfig,
                           LeaseConfig, EtcdLeaseConfig, S3LeaseConfig, ReplicationConfig,
                           ProxyConfig, ReplicaConfig, AgeConfig, DBConfig))


def schema_keys() -> list[str]:
    """Every key litefs.yml accepts, as paths: `replica.sync-interval`, `dbs[].name`,
    `exec[].cmd` (`replicas` entries have `replica`'s keys)."""
    return SCHEMA.keys()


# --------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------

#: Where keys come from after the file, in order (docs/config.md#credentials).
CREDENTIAL_ENV = (
    ("LITEFS_ACCESS_KEY_ID", "LITEFS_SECRET_ACCESS_KEY"),
    ("LITESTREAM_ACCESS_KEY_ID", "LITESTREAM_SECRET_ACCESS_KEY"),
)


class Credentials(NamedTuple):
    access_key_id: str | None  # None (with the secret): boto3's default chain
    secret_access_key: str | None
    source: str  # where they were found, for messages


def find_credentials(replica: ReplicaConfig, env: Mapping[str, str] = os.environ
                     ) -> Credentials:
    """The keys of an s3 replica: its own (which load_config fills from the top-level keys
    when it has none), then CREDENTIAL_ENV (LITEFS_*, then LITESTREAM_*), then none: the AWS
    default chain (AWS_* variables, ~/.aws, instance roles). Empty variables count as unset;
    a source with only one of the pair is an error rather than being mixed with another."""
    if replica.access_key_id is not None or replica.secret_access_key is not None:
        return Credentials(replica.access_key_id, replica.secret_access_key,
                           "the configuration file (access-key-id)")
    for id_var, secret_var in CREDENTIAL_ENV:
        key_id = env.get(id_var) or None
        secret = env.get(secret_var) or None
        if key_id is None and secret is None:
            continue
        if key_id is None or secret is None:
            have, missing = (id_var, secret_var) if key_id else (secret_var, id_var)
            raise s.error(f"{have} is set but {missing} is not; set both or neither")
        return Credentials(key_id, secret, id_var)
    return Credentials(None, None,
                       "the AWS default chain (AWS_ACCESS_KEY_ID, ~/.aws, instance role)")


def resolve_credentials(
    replica: ReplicaConfig, env: Mapping[str, str] = os.environ
) -> tuple[str | None, str | None]:
    """(access key id, secret access key) for an s3 replica: see find_credentials."""
    found = find_credentials(replica, env)
    return found.access_key_id, found.secret_access_key


# --------------------------------------------------------------------------------------------
# Replica URLs
# --------------------------------------------------------------------------------------------

_URL_HINT = "expected s3://bucket/path?endpoint=..., file:///absolute/dir or /absolute/dir"
_URL_PARAMS = ("endpoint", "region", "forcePathStyle", "force-path-style")
# Virtual-host URLs of S3-compatible providers, read as Litestream reads them: bucket plus the
# provider's endpoint (otherwise s3://b.s3.us-west-002.backblazeb2.com/db names an AWS bucket).
# (Strings: re compiles them on first use, not at every start.)
_PROVIDER_HOSTS = (
    (r"(?P<bucket>.+)\.(?P<endpoint>s3\.[^.]+\.backblazeb2\.com)", True),
    (r"(?P<bucket>.+)\.(?P<endpoint>s3\.[^.]+\.scw\.cloud)", False),
    (r"(?P<bucket>.+)\.(?P<endpoint>[^.]+\.digitaloceanspaces\.com)", False),
    (r"(?P<bucket>.+)\.(?P<endpoint>[^.]+\.linodeobjects\.com)", False),
    (r"(?P<bucket>.+)\.(?P<endpoint>s3\.filebase\.com)", True),
)


def _parse_url(url: str, at: tuple[s.Step, ...] = ()) -> dict[str, object]:
    """A replica URL → the location keys it sets (spelled as in the file)."""
    text = url.strip()

    def fail(detail: str) -> NoReturn:
        raise s.Problem(detail, at)

    shown = s.show_value(url)
    if text.startswith("/"):
        return {"type": "file", "path": text}
    if "://" not in text:
        fail(f"invalid replica URL {shown}; {_URL_HINT}")
    scheme = text.split("://", 1)[0].lower()
    if scheme not in ("s3", "file"):
        fail(f"unsupported replica URL scheme {scheme}:// in {shown}; supported: s3://, "
             "file:// or an absolute path")
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        fail(f"invalid replica URL {shown}: {exc}")
    if parts.fragment:
        fail(f"invalid replica URL {shown}: remove the #fragment")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            fail(f"invalid file URL {shown}; write file:///absolute/dir (three slashes)")
        if parts.query:
            fail(f"file:// URLs take no query parameters, got {s.show_value(parts.query)}")
        if not unquote(parts.path).startswith("/"):
            fail(f"invalid file URL {shown}; write file:///absolute/dir")
        return {"type": "file", "path": unquote(parts.path)}
    if "@" in parts.netloc:
        fail(f"replica URL {shown} has credentials in it; use access-key-id/"
             "secret-access-key or LITEFS_ACCESS_KEY_ID/LITEFS_SECRET_ACCESS_KEY instead")
    if not parts.netloc:
        fail(f"replica URL {shown} has no bucket; expected s3://bucket/path")
    out: dict[str, object] = {"type": "s3", "bucket": parts.netloc}
    for pattern, path_style in _PROVIDER_HOSTS:
        if pm := re.fullmatch(pattern, parts.netloc.lower()):
            out |= {"bucket": parts.netloc[: pm.end("bucket")], "endpoint": pm["endpoint"]}
            out |= {"force-path-style": True} if path_style else {}
            break
    if not _BUCKET_RE.fullmatch(str(out["bucket"])):
        fail(f"invalid bucket name {s.show_value(out['bucket'])} in {shown}; expected letters, "
             "digits, '.', '-' or '_'")
    if path := unquote(parts.path).strip("/"):
        out["path"] = path
    seen: set[str] = set()
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _URL_PARAMS:
            fail(f"unknown query parameter {name!r} in {shown}; valid: "
                 f"{', '.join(_URL_PARAMS)}")
        canonical = "force-path-style" if name == "forcePathStyle" else name
        if canonical in seen:
            fail(f"query parameter {name!r} is given twice in {shown}")
        seen.add(canonical)
        if canonical == "force-path-style":
            if value.strip().lower() not in s.BOOL_WORDS:
                fail(f"invalid {name}={value!r} in {shown}; expected true or false")
            out[canonical] = s.BOOL_WORDS[value.strip().lower()]
        elif value:
            out[canonical] = value
    return out


def url_location(url: str) -> dict[str, object]:
    """The location keys a replica URL sets, spelled as in the file (`type`, `bucket`,
    `endpoint`, ...); empty if it does not parse (the loader says why)."""
    try:
        return _parse_url(url)
    except s.Problem:
        return {}


def parse_replica_url(url: str) -> ReplicaConfig:
    """One replica from a URL alone (e.g. `litefs restore -o OUT URL`): `s3://bucket/path?…`,
    `file:///dir` or `/dir`. The path is used as given (no database name is appended).
    Credentials are not part of it: use `resolve_credentials`."""
    try:
        from_url = _parse_url(url)
    except s.Problem as exc:
        raise s.error(exc.describe("", "")) from None
    replica: ReplicaConfig = SCHEMA.structure(from_url, ReplicaConfig,
                                              f"replica URL {s.show_value(url)}")
    return replica


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_config(path: str | Path | None, *, env: Mapping[str, str] = os.environ) -> Config:
    """Load and validate `litefs.yml`, or a Litestream configuration file (read as the
    litefs.yml `litefs config convert` writes for it: config/litestream.py).

    With `path` None, the first of CONFIG_SEARCH_PATHS that exists (./litefs.yml, then
    /etc/litefs.yml) is used, and the defaults (`Config()`) if there is none. An explicit path
    must exist. `${VAR}`, `${VAR:-default}` and `$VAR` in string values come from `env`; `$$`
    is a literal `$`. Any problem raises QuietError(…, ExitCode.CONFIG) with a one-line message.
    """
    if path is None:
        path = next((p for p in CONFIG_SEARCH_PATHS if p.is_file()), None)
        if path is None:
            return Config()
    source = Path(path)
    raw = s.read_yaml(source)
    if isinstance(raw, dict) and _maybe_litestream(raw):
        from .litestream import convert_tree, is_litestream

        if not is_litestream(raw):
            return config_from_tree(raw, source, env=env)
        converted = convert_tree(raw, source)
        return config_from_tree(converted.tree, source, env=env, notes=converted.notes,
                                keymap=converted.keymap)
    return config_from_tree(raw, source, env=env)


def _maybe_litestream(raw: dict[Any, Any]) -> bool:
    """A quick look before importing litestream.py: keys litefs.yml does not have at the top,
    or databases named by path."""
    dbs = raw.get("dbs")
    return bool(raw.keys() - s.file_keys(Config)) or (isinstance(dbs, list) and any(
        isinstance(db, dict) and {"path", "dir"} & db.keys() for db in dbs))


def config_from_tree(raw: object, source: Path, *, env: Mapping[str, str] = os.environ,
                     notes: tuple[str, ...] = (), keymap: Mapping[str, str] | None = None
                     ) -> Config:
    """A YAML document (values not yet expanded) → the validated Config. `keymap` names the
    keys the author of a converted document wrote, for error messages."""
    expanded = s.expand_tree(raw, env, f" in {source}", keymap)
    cfg: Config = SCHEMA.structure(expanded, Config, str(source), keymap)
    return replace(cfg, source=source, notes=notes)
