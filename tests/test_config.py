"""litefs.yml loading: schema, ${VAR} expansion, strict keys, replica URLs, endpoints,
credentials and the one-line errors users see."""

from __future__ import annotations

import re
from pathlib import Path

import pyrage
import pytest

from litefs_py import config as config_mod
from litefs_py.config import (
    Config,
    DataConfig,
    ExecCommand,
    ReplicaConfig,
    load_config,
    normalize_endpoint,
    parse_duration,
    parse_replica_url,
    parse_size,
    resolve_credentials,
)
from litefs_py.errors import ExitCode, QuietError
from litefs_py.proxy.settings import ProxySettings

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "litefs.yml"

B2 = "s3.us-west-002.backblazeb2.com"


def write(tmp_path: Path, text: str, name: str = "litefs.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None,
         name: str = "litefs.yml") -> Config:
    return load_config(write(tmp_path, text, name), env=env or {})


def load_error(tmp_path: Path, text: str, env: dict[str, str] | None = None,
               name: str = "litefs.yml") -> str:
    """Load `text`, expect a config error, check its shape and return the message."""
    with pytest.raises(QuietError) as info:
        load(tmp_path, text, env, name)
    return check_error(info.value)


def check_error(exc: QuietError) -> str:
    assert exc.code == ExitCode.CONFIG
    assert isinstance(exc.code, ExitCode)
    assert "\n" not in exc.message
    assert "Traceback" not in exc.message
    assert str(exc) == exc.message
    return exc.message


def minimal_from_example() -> str:
    """The commented minimal form at the top of examples/litefs.yml, uncommented."""
    text = EXAMPLE.read_text()
    block = text.split("# --- minimal form ---\n", 1)[1].split("# --- end ---", 1)[0]
    lines = [line.removeprefix("#").removeprefix(" ") for line in block.splitlines()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# Files and defaults
# ------------------------------------------------------------------------------------------


def test_minimal_form_from_example_loads(tmp_path: Path) -> None:
    minimal = minimal_from_example()
    assert "replica:" in minimal and "fuse:" in minimal
    cfg = load(tmp_path, minimal)
    assert cfg.fuse.dir == "/litefs"
    assert cfg.data.dir == "/var/lib/litefs"
    rep = cfg.replica
    assert rep is not None
    assert rep.type == "s3"
    assert rep.bucket == "my-bucket"
    assert rep.path == "backups"
    assert rep.endpoint == f"https://{B2}"
    assert rep.force_path_style is True
    assert cfg.replica_for("store.db") == ReplicaConfig(
        type="s3", bucket="my-bucket", path="backups/store.db", endpoint=f"https://{B2}",
        force_path_style=True,
    )


def test_example_file_loads_with_env() -> None:
    cfg = load_config(EXAMPLE, env={"LITEFS_BUCKET": "prod-bucket"})
    assert cfg.source == EXAMPLE
    rep = cfg.replica
    assert rep is not None
    assert rep.bucket == "prod-bucket"
    assert rep.endpoint == f"https://{B2}"
    assert rep.region == "us-west-002"
    assert rep.sync_interval == 1.0
    assert rep.l2_interval == 300.0
    assert cfg.http.secret is None  # ${LITEFS_HTTP_SECRET:-} with the variable unset
    assert cfg.exec == (
        ExecCommand(("python", "-m", "app.migrate"), if_candidate=True),
        ExecCommand(("gunicorn", "--bind", ":8081", "app:app")),
    )
    store = cfg.replica_for("store.db")
    assert store is not None and store.path == "backups/store.db"
    cache = cfg.replica_for("cache.db")
    assert cache is not None
    assert (cache.type, cache.path, cache.sync_interval) == (
        "file", "/var/backups/litefs/cache.db", 10.0)


def test_webapp_example_runs_the_proxy() -> None:
    cfg = load_config(EXAMPLE.parent / "webapp" / "litefs.yml", env={"LITEFS_BUCKET": "b"})
    settings = ProxySettings.from_config(cfg.proxy)
    assert settings is not None
    assert (settings.addr, settings.target, settings.db) == (":8080", "127.0.0.1:8081",
                                                             "store.db")
    assert settings.is_passthrough("/healthz") and not settings.is_passthrough("/api/notes")


def test_example_file_needs_its_env_var() -> None:
    with pytest.raises(QuietError) as info:
        load_config(EXAMPLE, env={})
    msg = check_error(info.value)
    assert "LITEFS_BUCKET" in msg and "replica.url" in msg


def test_example_defaults_match_config_defaults() -> None:
    cfg = load_config(EXAMPLE, env={"LITEFS_BUCKET": "b"})
    defaults = Config()
    assert cfg.fuse == defaults.fuse
    assert cfg.data == defaults.data
    assert cfg.log == defaults.log
    assert cfg.lease == defaults.lease
    assert cfg.http == defaults.http
    assert cfg.exit_on_error == defaults.exit_on_error


def test_defaults_when_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_mod, "CONFIG_SEARCH_PATHS",
                        (tmp_path / "litefs.yml", tmp_path / "etc" / "litefs.yml"))
    cfg = load_config(None, env={})
    assert cfg == Config()
    assert cfg.fuse.dir == "/litefs"
    assert cfg.data.dir == "/var/lib/litefs"
    assert cfg.data.retention == 600.0
    assert cfg.data.spool_limit == 1024**3
    assert cfg.exit_on_error is True
    assert cfg.log.level == "info" and cfg.log.format == "text"
    assert cfg.http.addr == ":20202" and cfg.http.secret is None
    assert cfg.lease.type == "static" and cfg.lease.candidate is True
    assert cfg.replica is None and cfg.replica_for("store.db") is None


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "litefs.yml"
    etc = tmp_path / "etc.yml"
    monkeypatch.setattr(config_mod, "CONFIG_SEARCH_PATHS", (local, etc))
    etc.write_text("fuse: {dir: /from-etc}\n")
    assert load_config(None, env={}).fuse.dir == "/from-etc"
    local.write_text("fuse: {dir: /from-cwd}\n")
    cfg = load_config(None, env={})
    assert cfg.fuse.dir == "/from-cwd"
    assert cfg.source == local


def test_default_search_paths() -> None:
    paths = config_mod.CONFIG_SEARCH_PATHS
    assert paths == (Path("litefs.yml"), Path("/etc/litefs.yml"))


def test_cwd_litefs_yml_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "fuse: {dir: /here}\n")
    assert load_config(None, env={}).fuse.dir == "/here"


def test_explicit_missing_path_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(QuietError) as info:
        load_config(missing, env={})
    msg = check_error(info.value)
    assert str(missing) in msg and "does not exist" in msg
    with pytest.raises(QuietError):
        load_config(str(missing), env={})


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, "# nothing yet\n")
    assert cfg.fuse == Config().fuse and cfg.replica is None


def test_directory_as_config(tmp_path: Path) -> None:
    with pytest.raises(QuietError) as info:
        load_config(tmp_path, env={})
    assert "directory" in check_error(info.value)


def test_yaml_syntax_error_is_one_line(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "fuse:\n  dir: [unclosed\n")
    assert msg.startswith("invalid YAML in ") and "line" in msg


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "replica:\n  url: s3://a\nreplica:\n  url: s3://b\n")
    assert "duplicate key 'replica'" in msg and "line 3" in msg


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "- fuse\n- data\n")
    assert "top level" in msg and "a list" in msg


def test_full_schema(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
fuse: {dir: /mnt/db, allow-other: true, debug: true}
data: {dir: /data, retention: 1h, spool-limit: 64MiB}
exit-on-error: false
exec: "myapp -addr ':8081'"
log: {level: DEBUG, format: json}
http: {addr: "127.0.0.1:9999", secret: s3cret}
lease: {type: static, candidate: false, advertise-url: "http://n1:20202"}
""")
    assert cfg.fuse.dir == "/mnt/db" and cfg.fuse.allow_other and cfg.fuse.debug
    assert cfg.data == DataConfig(dir="/data", retention=3600.0, spool_limit=64 * 1024**2)
    assert cfg.exit_on_error is False
    assert cfg.exec == (ExecCommand(("myapp", "-addr", ":8081")),)
    assert (cfg.log.level, cfg.log.format) == ("debug", "json")
    assert (cfg.http.addr, cfg.http.secret) == ("127.0.0.1:9999", "s3cret")
    assert "s3cret" not in repr(cfg)
    assert cfg.lease.candidate is False
    assert cfg.lease.advertise_url == "http://n1:20202" and cfg.lease.hostname is None
    assert cfg.proxy is None


PROXY = """proxy: {addr: ":8080", target: "localhost:8081", db: store.db, max-lag: 2s,
        passthrough: ["*.css"]}
"""


def test_nothing_is_refused_as_not_supported_yet() -> None:
    """Every documented key works: the proxy and the etcd/s3 leases have landed (consul is
    refused by LeaseConfig itself, naming etcd and s3)."""
    assert config_mod.NOT_SUPPORTED_YET == {}


def test_proxy_section(tmp_path: Path) -> None:
    cfg = load(tmp_path, PROXY)
    assert cfg.proxy is not None
    assert (cfg.proxy.addr, cfg.proxy.target, cfg.proxy.db, cfg.proxy.max_lag) == (
        ":8080", "localhost:8081", "store.db", 2.0)
    assert cfg.proxy.passthrough == ("*.css",)
    # LiteFS's rule: no target, no proxy (and then addr and db are not needed), so that
    # `target: ${APP_ADDR:-}` turns the proxy off on a node.
    for text in ("proxy: {addr: ':8080'}\n", "proxy: {target: '${T:-}'}\n"):
        off = load(tmp_path, text).proxy
        assert off is not None and off.target is None


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load(tmp_path, "fuse: {dir: /x}\n")
    with pytest.raises(AttributeError):
        cfg.fuse.dir = "/y"  # type: ignore[misc]


def test_null_sections_mean_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, "fuse:\ndata:\nlog:\nreplica:\n")
    assert cfg.fuse == Config().fuse and cfg.replica is None


# ------------------------------------------------------------------------------------------
# exec
# ------------------------------------------------------------------------------------------


def test_exec_forms(tmp_path: Path) -> None:
    assert load(tmp_path, "exec: [myapp, --port, '8081']\n").exec == (
        ExecCommand(("myapp", "--port", "8081")),)
    assert load(tmp_path, "exec:\n  - cmd: migrate up\n    if-candidate: true\n"
                          "  - cmd: [app]\n").exec == (
        ExecCommand(("migrate", "up"), if_candidate=True), ExecCommand(("app",)))
    assert load(tmp_path, "exec: []\n").exec == ()


@pytest.mark.parametrize(("text", "needle"), [
    ("exec: {cmd: app}\n", "exec"),
    ("exec: [app, {cmd: x}]\n", "exec[1]"),
    ("exec: [{if-candidate: true}]\n", "missing cmd"),
    ("exec: \"app 'unclosed\"\n", "cannot split"),
    ("exec: [{cmd: app, if-candiate: true}]\n", "did you mean exec[0].if-candidate?"),
    ("exec: [app, 8081]\n", "exec[1]"),
    ("exec: ''\n", "empty"),
])
def test_exec_errors(tmp_path: Path, text: str, needle: str) -> None:
    assert needle in load_error(tmp_path, text)


# ------------------------------------------------------------------------------------------
# ${VAR} expansion
# ------------------------------------------------------------------------------------------


def test_env_expansion(tmp_path: Path) -> None:
    env = {"BUCKET": "bkt", "ROOT": "/srv", "EP": "minio:9000"}
    cfg = load(tmp_path, """
fuse: {dir: "${ROOT}/litefs"}
data: {dir: $ROOT/data}
replica:
  url: s3://${BUCKET}/p?endpoint=${EP}
""", env)
    assert cfg.fuse.dir == "/srv/litefs"
    assert cfg.data.dir == "/srv/data"
    assert cfg.replica is not None
    assert cfg.replica.bucket == "bkt"
    assert cfg.replica.endpoint == "http://minio:9000"


def test_env_default(tmp_path: Path) -> None:
    text = "fuse: {dir: '${MNT:-/litefs-default}'}\n"
    assert load(tmp_path, text, {}).fuse.dir == "/litefs-default"
    assert load(tmp_path, text, {"MNT": ""}).fuse.dir == "/litefs-default"
    assert load(tmp_path, text, {"MNT": "/m"}).fuse.dir == "/m"


def test_env_unset_is_an_error(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "replica:\n  bucket: ${MY_BUCKET}\n  type: s3\n")
    assert "MY_BUCKET" in msg and "replica.bucket" in msg and "not set" in msg
    assert str(tmp_path / "litefs.yml") in msg
    msg = load_error(tmp_path, "dbs:\n  - name: $DB_NAME\n")
    assert "DB_NAME" in msg and "dbs[0].name" in msg


def test_env_set_but_empty_without_default(tmp_path: Path) -> None:
    assert load(tmp_path, "lease: {hostname: '${H}'}\n", {"H": ""}).lease.hostname is None


def test_dollar_dollar_is_literal(tmp_path: Path) -> None:
    cfg = load(tmp_path, "http: {secret: 'pa$$word$${X}'}\n", {"X": "nope"})
    assert cfg.http.secret == "pa$word${X}"


def test_lone_dollar_is_literal(tmp_path: Path) -> None:
    assert load(tmp_path, "http: {secret: 'cost $5 $'}\n").http.secret == "cost $5 $"


def test_bad_braced_reference(tmp_path: Path) -> None:
    assert "unclosed" in load_error(tmp_path, "http: {secret: 'a${B'}\n")
    assert "${1x}" in load_error(tmp_path, "http: {secret: 'a${1x}'}\n")


def test_secrets_are_not_shown_in_errors(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "http: {secret: 918273645}\n")
    assert "http.secret" in msg and "918273645" not in msg and "quote it" in msg
    msg = load_error(tmp_path, "access-key-id: a\nsecret-access-key: [hunter2]\n")
    assert "secret-access-key" in msg and "hunter2" not in msg
    msg = load_error(tmp_path, "http: {secret: 'hunter2${'}\n")
    assert "unclosed" in msg and "hunter2" not in msg


def test_expanded_booleans(tmp_path: Path) -> None:
    text = ("lease: {candidate: '${IS_PRIMARY}', advertise-url: 'primary:20202'}\n"
            "fuse: {allow-other: $AO}\n")
    cfg = load(tmp_path, text, {"IS_PRIMARY": "false", "AO": "true"})
    assert cfg.lease.candidate is False and cfg.fuse.allow_other is True
    assert cfg.lease.advertise_url == "http://primary:20202"
    msg = load_error(tmp_path, text, {"IS_PRIMARY": "maybe", "AO": "true"})
    assert "lease.candidate" in msg and "'maybe'" in msg


def test_replica_needs_something_to_follow(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "lease: {candidate: false}\n", {})
    assert "lease.candidate" in msg and "lease.advertise-url" in msg and "replica.url" in msg
    cfg = load(tmp_path, "lease: {candidate: false}\nreplica: {url: 's3://b/p'}\n", {})
    assert cfg.lease.candidate is False and cfg.lease.advertise_url is None
    msg = load_error(tmp_path, "lease: {advertise-url: 'ftp://x'}\n", {})
    assert "lease.advertise-url" in msg and "http" in msg


def test_expansion_is_not_applied_to_keys(tmp_path: Path) -> None:
    assert "unknown key $X" in load_error(tmp_path, "$X: 1\n", {"X": "fuse"})


# ------------------------------------------------------------------------------------------
# Strict keys
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "path", "suggestion"), [
    ("fuse: {dri: /x}\n", "fuse.dri", "fuse.dir"),
    ("fsue: {dir: /x}\n", "fsue", "fuse"),
    ("replica: {url: 's3://b', endpiont: x}\n", "replica.endpiont", "replica.endpoint"),
    ("replica: {type: s3, bucket: b, forcePathStyle: true}\n", "replica.forcePathStyle",
     "replica.force-path-style"),
    ("fuse: {allow_other: true}\n", "fuse.allow_other", "fuse.allow-other"),
    ("dbs: [{name: a.db, replica: {type: file, path: /x, sync-interval: 1s, retension: 1h}}]\n",
     "dbs[0].replica.retension", "dbs[0].replica.retention"),
    ("replicas: [{url: 's3://b', regoin: x}]\n", "replicas[0].regoin", "replicas[0].region"),
    ("data: {spool-limt: 1GiB}\n", "data.spool-limt", "data.spool-limit"),
    ("exit-on-eror: true\n", "exit-on-eror", "exit-on-error"),
])
def test_unknown_key_names_path_and_suggestion(
    tmp_path: Path, text: str, path: str, suggestion: str
) -> None:
    msg = load_error(tmp_path, text)
    file = tmp_path / "litefs.yml"
    assert msg == f"unknown key {path} in {file}; did you mean {suggestion}?"


def test_unknown_key_example_message(tmp_path: Path) -> None:
    path = write(tmp_path, "replica:\n  url: s3://b/p\n  endpiont: x\n", "etc-litefs.yml")
    with pytest.raises(QuietError) as info:
        load_config(path, env={})
    assert check_error(info.value) == (
        f"unknown key replica.endpiont in {path}; did you mean replica.endpoint?")


def test_unknown_key_without_a_close_match_lists_valid_keys(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "dbs: [{path: /data/store.db}]\n")
    assert "unknown key dbs[0].path" in msg
    assert "name, replica, replicas" in msg
    msg = load_error(tmp_path, "zzzzzz: 1\n")
    assert "unknown key zzzzzz" in msg and "top level" in msg and "fuse" in msg


# ------------------------------------------------------------------------------------------
# Types
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "needles"), [
    ("fuse: [/litefs]\n", ["fuse", "a mapping", "a list"]),
    ("replica: [url]\n", ["replica", "a mapping", "a list"]),
    ("replica: 's3://b/p'\n", ["replica", "a mapping", "{url:"]),
    ("fuse: {allow-other: 'yes'}\n", ["fuse.allow-other", "true or false", "'yes'",
                                      "without quotes"]),
    ("fuse: {debug: 1}\n", ["fuse.debug", "true or false", "1", "an integer"]),
    ("exit-on-error: nope\n", ["exit-on-error", "true or false", "'nope'"]),
    ("fuse: {dir: 5}\n", ["fuse.dir", "a string", "5", "quote it"]),
    ("http: {addr: 20202}\n", ["http.addr", "':20202'"]),
    ("http: {addr: 'localhost'}\n", ["http.addr", "[host]:port"]),
    ("data: {retention: [1s]}\n", ["data.retention", "a duration"]),
    ("data: {retention: fast}\n", ["data.retention", "'fast'", "1s"]),
    ("data: {retention: 600}\n", ["data.retention", "600s"]),
    ("data: {spool-limit: lots}\n", ["data.spool-limit", "'lots'", "64MiB"]),
    ("data: {spool-limit: 0}\n", ["data.spool-limit", "more than 0"]),
    ("data: {spool-limit: true}\n", ["data.spool-limit", "a size"]),
    ("replica: {type: s3, bucket: b, sync-interval: 0s}\n", ["replica.sync-interval",
                                                              "longer than 0"]),
    ("replica: {type: s3, bucket: b, upload-rate: fast}\n", ["replica.upload-rate", "'fast'",
                                                              "N/s, N/m, N/h"]),
    ("replica: {type: s3, bucket: b, upload-rate: -1}\n", ["replica.upload-rate", "0 (no "
                                                            "limit) or more"]),
    ("replica: {type: s3, bucket: b, upload-rate: true}\n", ["replica.upload-rate", "a rate"]),
    ("replica: {type: s3, bucket: b, upload-burst: 0}\n", ["replica.upload-burst", "1 or more"]),
    ("replica: {type: s3, bucket: b, upload-burst: 2.5}\n", ["replica.upload-burst",
                                                            "a whole number"]),
    ("log: {level: verbose}\n", ["log.level", "'verbose'", "debug, info, warn, error"]),
    ("log: {format: xml}\n", ["log.format", "text, json"]),
    ("lease: {type: consul}\n", ["lease.type", "Consul", "type: etcd", "type: s3"]),
    ("lease: {type: zookeeper}\n", ["lease.type", "'zookeeper'", "static, etcd, s3"]),
    ("lease: {type: etcd, advertise-url: 'n:1'}\n", ["lease.etcd", "endpoints"]),
    ("lease: {type: etcd, advertise-url: 'n:1', etcd: {endpoints: [a:1], ttl: 1s}}\n",
     ["lease.etcd.ttl", "too short", "2s"]),
    ("lease: {type: etcd, etcd: {endpoints: [a:1]}}\n", ["lease.advertise-url", "candidate"]),
    ("lease: {type: etcd, advertise-url: 'n:1', etcd: {endpoints: 'ftp://x'}}\n",
     ["lease.etcd.endpoints", "host:port"]),
    ("lease: {advertise-url: 'n:1', s3: {ttl: 5s}}\n", ["lease.s3", "lease.type: s3"]),
    ("lease: {type: s3, advertise-url: 'n:1'}\n", ["lease.type", "replica.url"]),
    ("replication: {commit: sync}\n", ["replication.commit", "local, replica, bucket"]),
    ("replication: {commit: bucket}\n", ["replication.commit", "lease.type etcd or s3"]),
    ("dbs: {name: store.db}\n", ["dbs", "a list"]),
    ("dbs: [store.db]\n", ["dbs[0]", "a mapping", "'store.db'"]),
    ("dbs: [{replica: {url: 's3://b'}}]\n", ["dbs[0]", "missing name"]),
    ("dbs: [{name: a/b.db}]\n", ["dbs[0].name", "'a/b.db'"]),
    ("dbs: [{name: a.db}, {name: a.db}]\n", ["dbs[1].name", "dbs[0]"]),
    ("replicas: {url: 's3://b'}\n", ["replicas", "a list"]),
    ("proxy: {target: ':8081'}\n", ["proxy.addr", "is required when proxy.target is set"]),
    ("proxy: {addr: ':8080', target: ':8081'}\n", ["proxy.db", "is required"]),
    ("proxy: {addr: ':8080', target: ':8081', db: s.db, max-lag: 5}\n",
     ["proxy.max-lag", "5s"]),
    ("proxy: [':8080']\n", ["proxy", "a mapping"]),
    ("proxy: {addr: ':20202', target: ':8081', db: s.db}\n",
     ["proxy.addr", "also http.addr", "its own port"]),
    ("http: {addr: '127.0.0.1:9000'}\nproxy: {addr: ':9000', target: ':8081', db: s.db}\n",
     ["proxy.addr", "also http.addr"]),
    ("proxy: {addr: ':8080', target: ':8080', db: s.db}\n",
     ["proxy.target", "the proxy itself", "application's address"]),
    ("1: x\n", ["keys must be strings"]),
])
def test_wrong_types(tmp_path: Path, text: str, needles: list[str]) -> None:
    msg = load_error(tmp_path, text)
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert str(tmp_path / "litefs.yml") in msg


# ------------------------------------------------------------------------------------------
# Durations and sizes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("500ms", 0.5), ("5m", 300.0), ("1h", 3600.0), ("1h30m", 5400.0),
    ("1.5s", 1.5), ("2d", 172800.0), ("250us", 0.00025), ("0", 0.0), (0, 0.0),
])
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1", "10", "1x", "-1s", "1 s", "1s2", "fast", 5])
def test_parse_duration_rejects(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "nbytes"), [
    ("64MiB", 64 * 1024**2), ("64Mi", 64 * 1024**2), ("1GB", 10**9), ("100k", 100_000),
    ("100KB", 100_000), ("1GiB", 1024**3), ("1.5KiB", 1536), ("4096", 4096), (4096, 4096),
    ("10 MB", 10**7), ("2TiB", 2 * 1024**4), ("12b", 12),
])
def test_parse_size(text: str | int, nbytes: int) -> None:
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text", ["", "MiB", "1XB", "-1", "1 G B", -5])
def test_parse_size_rejects(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_durations_and_sizes_in_file(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
data: {retention: 90s, spool-limit: 100k}
replica:
  type: file
  path: /b
  sync-interval: 500ms
  retention: 72h
  snapshot-interval: 12h
  l1-interval: 10s
  l2-interval: 1m
  l3-interval: 30m
""")
    assert (cfg.data.retention, cfg.data.spool_limit) == (90.0, 100_000)
    rep = cfg.replica
    assert rep is not None
    assert (rep.sync_interval, rep.retention, rep.snapshot_interval) == (0.5, 259200.0, 43200.0)
    assert (rep.l1_interval, rep.l2_interval, rep.l3_interval) == (10.0, 60.0, 1800.0)


def test_replica_defaults(tmp_path: Path) -> None:
    rep = load(tmp_path, "replica: {url: 's3://b'}\n").replica
    assert rep is not None
    assert (rep.sync_interval, rep.retention, rep.snapshot_interval) == (1.0, 86400.0, 86400.0)
    assert (rep.l1_interval, rep.l2_interval, rep.l3_interval) == (30.0, 300.0, 3600.0)
    assert (rep.path, rep.endpoint, rep.region, rep.force_path_style) == ("", None, None, False)


# ------------------------------------------------------------------------------------------
# Replica: URL form vs expanded form
# ------------------------------------------------------------------------------------------


def test_url_form_equals_expanded_form(tmp_path: Path) -> None:
    url_form = load(tmp_path, f"""
replica:
  url: s3://my-bucket/some/path?endpoint={B2}&region=us-west-002&forcePathStyle=true
  sync-interval: 2s
""").replica
    expanded = load(tmp_path, f"""
replica:
  type: s3
  bucket: my-bucket
  path: /some/path/
  endpoint: {B2}
  region: us-west-002
  force-path-style: true
  sync-interval: 2s
""").replica
    assert url_form is not None
    assert url_form == expanded
    assert url_form.path == "some/path"
    assert url_form.endpoint == f"https://{B2}"
    assert url_form.sync_interval == 2.0


def test_url_force_path_style_spellings(tmp_path: Path) -> None:
    for spelling in ("forcePathStyle", "force-path-style"):
        rep = parse_replica_url(f"s3://b/p?endpoint=https://s3.amazonaws.com&{spelling}=true")
        assert rep.force_path_style is True
        rep = parse_replica_url(f"s3://b/p?endpoint=minio:9000&{spelling}=false")
        assert rep.force_path_style is False


def test_url_and_same_key_twice_is_an_error(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "replica: {url: 's3://b/p', bucket: c}\n")
    assert "replica.bucket" in msg and "replica.url" in msg


def test_url_plus_non_location_keys(tmp_path: Path) -> None:
    rep = load(tmp_path, "replica: {url: 's3://b/p?endpoint=minio:9000', region: r}\n").replica
    assert rep is not None and rep.region == "r" and rep.endpoint == "http://minio:9000"


def test_parse_replica_url_s3() -> None:
    rep = parse_replica_url("s3://my-bucket/backups/store.db?endpoint=127.0.0.1:9000&region=r")
    assert rep == ReplicaConfig(type="s3", bucket="my-bucket", path="backups/store.db",
                                endpoint="http://127.0.0.1:9000", region="r",
                                force_path_style=True)
    assert parse_replica_url("s3://b").path == ""


def test_parse_replica_url_file() -> None:
    assert parse_replica_url("file:///var/backups/store.db") == ReplicaConfig(
        type="file", path="/var/backups/store.db")
    assert parse_replica_url("/var/backups/store.db") == ReplicaConfig(
        type="file", path="/var/backups/store.db")
    assert parse_replica_url("file:///dir%20with%20space/").path == "/dir with space"


def test_url_round_trip() -> None:
    for url in (
        f"s3://b/x/y?endpoint=https://{B2}&region=us-west-002",
        "s3://b?endpoint=http://minio:9000&forcePathStyle=false",
        "s3://b/p",
        "file:///var/backups",
    ):
        rep = parse_replica_url(url)
        assert parse_replica_url(rep.url) == rep
    assert parse_replica_url(f"s3://b/x?endpoint={B2}").url == f"s3://b/x?endpoint=https://{B2}"


@pytest.mark.parametrize(("url", "needles"), [
    ("gs://bucket/path", ["gs://", "s3://", "file://"]),
    ("sftp://host/path", ["sftp://"]),
    ("relative/dir", ["s3://bucket/path", "file:///absolute/dir"]),
    ("s3://b/p?endpont=x", ["'endpont'", "endpoint, region, forcePathStyle, force-path-style"]),
    ("s3://b/p?forcePathStyle=maybe", ["forcePathStyle", "true or false"]),
    ("s3://b/p?region=a&region=b", ["twice"]),
    ("s3:///path", ["no bucket"]),
    ("s3://key:secret@b/p", ["credentials"]),
    ("file://host/dir", ["three slashes"]),
    ("file:///dir?x=1", ["no query parameters"]),
    ("s3://b/p?endpoint=http://", ["'http://'"]),
    ("s3://bad bucket/p", ["bucket"]),
])
def test_parse_replica_url_errors(url: str, needles: list[str]) -> None:
    with pytest.raises(QuietError) as info:
        parse_replica_url(url)
    msg = check_error(info.value)
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_url_error_in_file_names_key(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "dbs: [{name: a.db, replica: {url: 'gs://x'}}]\n")
    assert msg.startswith(f"dbs[0].replica.url in {tmp_path / 'litefs.yml'}: ")
    msg = load_error(tmp_path, "replica: {url: 's3://b?endpoint=ht!tp://x'}\n")
    assert "replica.url" in msg and "'ht!tp://x'" in msg


def test_file_replicas(tmp_path: Path) -> None:
    a = load(tmp_path, "replica: {url: 'file:///var/backups'}\n").replica
    b = load(tmp_path, "replica: {url: /var/backups/}\n").replica
    c = load(tmp_path, "replica: {type: file, path: /var/backups}\n").replica
    assert a == b == c == ReplicaConfig(type="file", path="/var/backups")


@pytest.mark.parametrize(("text", "needles"), [
    ("replica: {type: file}\n", ["replica", "needs path"]),
    ("replica: {type: s3, path: x}\n", ["replica", "needs bucket"]),
    ("replica: {path: /x}\n", ["replica", "url:", "type:"]),
    ("replica: {type: gcs, bucket: b}\n", ["replica.type", "'gcs'", "s3 or file"]),
    ("replica: {type: file, path: /x, bucket: b}\n", ["replica.bucket", "s3"]),
    ("replica: {type: file, path: /x, endpoint: e}\n", ["replica.endpoint", "s3"]),
    ("replica: {type: s3, bucket: b, endpoint: 'ht!tp://x'}\n", ["replica.endpoint",
                                                                  "'ht!tp://x'"]),
    ("replica: {type: s3, bucket: b, force-path-style: 'no'}\n", ["replica.force-path-style"]),
])
def test_replica_errors(tmp_path: Path, text: str, needles: list[str]) -> None:
    msg = load_error(tmp_path, text)
    for needle in needles:
        assert needle in msg, (needle, msg)


# ------------------------------------------------------------------------------------------
# replica / replicas
# ------------------------------------------------------------------------------------------


def test_replicas_spelling_is_accepted(tmp_path: Path) -> None:
    a = load(tmp_path, "replicas:\n  - url: s3://b/p?endpoint=minio:9000\n")
    b = load(tmp_path, "replica:\n  url: s3://b/p?endpoint=minio:9000\n")
    assert a.replica is not None and a.replica == b.replica
    assert load(tmp_path, "replicas: []\n").replica is None


def test_replica_and_replicas_is_an_error(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "replica: {url: 's3://a'}\nreplicas: [{url: 's3://b'}]\n")
    assert "replica" in msg and "replicas" in msg and "one of them" in msg
    msg = load_error(tmp_path, "dbs:\n  - name: x.db\n    replica: {url: 's3://a'}\n"
                               "    replicas: [{url: 's3://b'}]\n")
    assert "dbs[0].replica" in msg and "dbs[0].replicas" in msg


def test_more_than_one_replica_is_an_error(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "replicas: [{url: 's3://a'}, {url: 's3://b'}]\n")
    assert "replicas" in msg and "2 entries" in msg and "at most 1" in msg


# ------------------------------------------------------------------------------------------
# replica_for
# ------------------------------------------------------------------------------------------


def test_replica_for_joins_db_name(tmp_path: Path) -> None:
    cfg = load(tmp_path, "replica: {url: 's3://b/backups'}\n")
    rep = cfg.replica_for("store.db")
    assert rep is not None and rep.path == "backups/store.db" and rep.bucket == "b"
    assert cfg.replica is not None and cfg.replica.path == "backups"  # unchanged
    root = load(tmp_path, "replica: {url: 's3://b'}\n").replica_for("store.db")
    assert root is not None and root.path == "store.db"
    trailing = load(tmp_path, "replica: {url: 's3://b/backups/'}\n").replica_for("x.db")
    assert trailing is not None and trailing.path == "backups/x.db"


def test_replica_for_file_replica(tmp_path: Path) -> None:
    cfg = load(tmp_path, "replica: {url: 'file:///var/backups/'}\n")
    rep = cfg.replica_for("store.db")
    assert rep == ReplicaConfig(type="file", path="/var/backups/store.db")


def test_replica_for_override(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
replica: {url: 's3://b/backups?endpoint=minio:9000'}
dbs:
  - name: store.db
  - name: special.db
    replica: {url: 's3://other/exact/place?region=eu'}
  - name: listed.db
    replicas: [{type: file, path: /bk/listed}]
""")
    special = cfg.replica_for("special.db")
    assert special is not None
    assert (special.bucket, special.path, special.region) == ("other", "exact/place", "eu")
    store = cfg.replica_for("store.db")
    assert store is not None and (store.bucket, store.path) == ("b", "backups/store.db")
    assert cfg.replica_for("listed.db") == ReplicaConfig(type="file", path="/bk/listed")
    unlisted = cfg.replica_for("unlisted.db")
    assert unlisted is not None and unlisted.path == "backups/unlisted.db"
    assert cfg.db("store.db") is not None and cfg.db("nope.db") is None


def test_replica_for_without_default(tmp_path: Path) -> None:
    cfg = load(tmp_path, "dbs:\n  - name: a.db\n    replica: {type: file, path: /a}\n"
                         "  - name: b.db\n")
    assert cfg.replica_for("a.db") == ReplicaConfig(type="file", path="/a")
    assert cfg.replica_for("b.db") is None


# ------------------------------------------------------------------------------------------
# Endpoints
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    (B2, f"https://{B2}"),
    ("s3.amazonaws.com", "https://s3.amazonaws.com"),
    ("abc.r2.cloudflarestorage.com", "https://abc.r2.cloudflarestorage.com"),
    ("8.8.8.8:9000", "https://8.8.8.8:9000"),
    ("127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("127.1.2.3", "http://127.1.2.3"),
    ("localhost:9000", "http://localhost:9000"),
    ("LOCALHOST:9000", "http://localhost:9000"),
    ("minio:9000", "http://minio:9000"),
    ("minio", "http://minio"),
    ("10.1.2.3:9000", "http://10.1.2.3:9000"),
    ("172.16.0.5", "http://172.16.0.5"),
    ("172.31.255.255", "http://172.31.255.255"),
    ("172.32.0.1", "https://172.32.0.1"),
    ("192.168.1.10:9000", "http://192.168.1.10:9000"),
    ("nas.local:9000", "http://nas.local:9000"),
    ("minio.internal", "http://minio.internal"),
    ("[::1]:9000", "http://[::1]:9000"),
    ("::1", "http://[::1]"),
    ("[fd12::1]:9000", "http://[fd12::1]:9000"),
    ("[2001:db8::1]:9000", "https://[2001:db8::1]:9000"),
    ("http://minio:9000", "http://minio:9000"),
    ("https://minio:9000/", "https://minio:9000"),
    ("HTTP://Minio:9000", "http://minio:9000"),
    ("http://s3.example.com", "http://s3.example.com"),
    (" https://s3.example.com ", "https://s3.example.com"),
])
def test_normalize_endpoint(raw: str, expected: str) -> None:
    assert normalize_endpoint(raw) == expected


@pytest.mark.parametrize("raw", [
    "http://", "ht!tp://x", "ftp://x", "", "   ", "host:port", "host:99999", "a b",
    "http://user:pw@host", "host?x=1", "://x", "-bad-.com!",
])
def test_normalize_endpoint_rejects(raw: str) -> None:
    with pytest.raises(QuietError) as info:
        normalize_endpoint(raw)
    msg = check_error(info.value)
    assert repr(raw) in msg


def test_force_path_style_defaults(tmp_path: Path) -> None:
    def fps(extra: str) -> bool:
        rep = load(tmp_path, f"replica: {{type: s3, bucket: b{extra}}}\n").replica
        assert rep is not None
        return rep.force_path_style

    assert fps("") is False  # AWS default endpoint
    assert fps(f", endpoint: {B2}") is True
    assert fps(", endpoint: minio:9000") is True
    assert fps(", endpoint: s3.us-east-1.amazonaws.com") is False
    assert fps(", endpoint: https://s3.amazonaws.com") is False
    assert fps(f", endpoint: {B2}, force-path-style: false") is False
    assert fps(", endpoint: s3.amazonaws.com, force-path-style: true") is True
    assert fps(", endpoint: ''") is False  # empty endpoint = none


# ------------------------------------------------------------------------------------------
# Credentials
# ------------------------------------------------------------------------------------------

LITEFS_ENV = {"LITEFS_ACCESS_KEY_ID": "lf-id", "LITEFS_SECRET_ACCESS_KEY": "lf-secret"}
LITESTREAM_ENV = {"LITESTREAM_ACCESS_KEY_ID": "ls-id",
                  "LITESTREAM_SECRET_ACCESS_KEY": "ls-secret"}


def replica_of(tmp_path: Path, text: str) -> ReplicaConfig:
    rep = load(tmp_path, text).replica
    assert rep is not None
    return rep


def test_credentials_from_replica_win(tmp_path: Path) -> None:
    rep = replica_of(tmp_path, "access-key-id: top-id\nsecret-access-key: top-secret\n"
                               "replica: {url: 's3://b', access-key-id: r-id, "
                               "secret-access-key: r-secret}\n")
    env = {**LITEFS_ENV, **LITESTREAM_ENV}
    assert resolve_credentials(rep, env) == ("r-id", "r-secret")
    assert "r-secret" not in repr(rep)


def test_credentials_top_level_beat_env(tmp_path: Path) -> None:
    cfg = load(tmp_path, "access-key-id: top-id\nsecret-access-key: top-secret\n"
                         "replica: {url: 's3://b'}\n"
                         "dbs: [{name: a.db, replica: {url: 's3://c'}}]\n")
    env = {**LITEFS_ENV, **LITESTREAM_ENV}
    assert (cfg.access_key_id, cfg.secret_access_key) == ("top-id", "top-secret")
    for name in ("a.db", "b.db"):
        rep = cfg.replica_for(name)
        assert rep is not None
        assert resolve_credentials(rep, env) == ("top-id", "top-secret")


def test_credentials_env_order(tmp_path: Path) -> None:
    rep = replica_of(tmp_path, "replica: {url: 's3://b'}\n")
    assert resolve_credentials(rep, {**LITEFS_ENV, **LITESTREAM_ENV}) == ("lf-id", "lf-secret")
    assert resolve_credentials(rep, LITESTREAM_ENV) == ("ls-id", "ls-secret")
    assert resolve_credentials(rep, {}) == (None, None)
    empty = {"LITEFS_ACCESS_KEY_ID": "", "LITEFS_SECRET_ACCESS_KEY": "", **LITESTREAM_ENV}
    assert resolve_credentials(rep, empty) == ("ls-id", "ls-secret")
    aws_only = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}
    assert resolve_credentials(rep, aws_only) == (None, None)  # boto3's default chain


def test_credentials_env_half_pair_is_an_error() -> None:
    rep = parse_replica_url("s3://b")
    with pytest.raises(QuietError) as info:
        resolve_credentials(rep, {"LITEFS_ACCESS_KEY_ID": "x", **LITESTREAM_ENV})
    msg = check_error(info.value)
    assert "LITEFS_ACCESS_KEY_ID" in msg and "LITEFS_SECRET_ACCESS_KEY" in msg


def test_credentials_file_half_pair_is_an_error(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "access-key-id: x\n")
    assert "secret-access-key" in msg and "both or neither" in msg
    msg = load_error(tmp_path, "replica: {url: 's3://b', secret-access-key: s}\n")
    assert "replica.access-key-id" in msg


def test_credentials_from_env_expansion(tmp_path: Path) -> None:
    text = "replica:\n  url: s3://b\n  access-key-id: ${K}\n  secret-access-key: $S\n"
    rep = load(tmp_path, text, {"K": "kid", "S": "sec"}).replica
    assert rep is not None
    assert resolve_credentials(rep, LITEFS_ENV) == ("kid", "sec")


def test_file_replica_ignores_top_level_credentials(tmp_path: Path) -> None:
    rep = replica_of(tmp_path, "access-key-id: a\nsecret-access-key: b\n"
                               "replica: {url: /var/backups}\n")
    assert rep.access_key_id is None


# ------------------------------------------------------------------------------------------
# Every error is one line with the CONFIG code
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "fuse: {dri: x}\n",
    "fuse: [x]\n",
    "replica: {url: 'gs://x'}\n",
    "replica: {url: 's3://b', bucket: c}\n",
    "replica: {type: s3, bucket: b, endpoint: 'http://'}\n",
    "replica: {url: '${NOPE}'}\n",
    "data: {retention: 1y}\n",
    "replica: {url: 's3://a'}\nreplicas: [{url: 's3://b'}]\n",
    "replicas: [{url: 's3://a'}, {url: 's3://b'}]\n",
    "fuse:\n  dir: [\n",
    "fuse: {dir: 'a\nb', debug: [1]}\n",
])
def test_every_error_is_a_one_line_config_error(tmp_path: Path, text: str) -> None:
    msg = load_error(tmp_path, text)
    assert re.search(r"\S", msg)


# ------------------------------------------------------------------------------------------
# Every key works or is refused (issue #9 5b)
# ------------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "config.md"
PACKAGE = Path(config_mod.__file__).resolve().parent.parent
SECTIONS = {"fuse", "data", "log", "http", "http.tls", "lease", "replication"}
BASE = "replica:\n  type: s3\n  bucket: b\n"  # what the replica keys' entries add to
_AGE_IDENTITY = pyrage.x25519.Identity.generate()  # replica.age needs keys that parse
AGE_PUBLIC, AGE_SECRET = str(_AGE_IDENTITY.to_public()), str(_AGE_IDENTITY)

PX = "proxy: {addr: ':8080', target: 'localhost:8081', db: store.db"


def server_settings(cfg: Config) -> ProxySettings:
    """What the mount runs the proxy with (app.py's ProxySettings.from_config)."""
    settings = ProxySettings.from_config(cfg.proxy)
    assert settings is not None
    return settings


# key: (a file that sets it to a value other than its default, what that value becomes,
# the value, and the code that acts on it: "module.py: text"). Keys in NOT_SUPPORTED_YET
# are checked to be refused instead.
ETCD_OPEN = ("lease:\n  type: etcd\n  advertise-url: 'n1:20202'\n"
             "  etcd: {endpoints: ['e:2379']")  # entries add `, key: value}`
ETCD = ETCD_OPEN + "}"
S3L = BASE + "lease: {type: s3, advertise-url: 'n1:20202', s3: {"  # entries add `k: v}}`
BEHAVIOUR: dict[str, tuple[str, object, object, str]] = {
    "fuse.dir": ("fuse: {dir: /m}", lambda c: c.fuse.dir, "/m", "cli.py: cfg.fuse.dir"),
    "fuse.allow-other": ("fuse: {allow-other: true}", lambda c: c.fuse.allow_other, True,
                         "cli.py: cfg.fuse.allow_other"),
    "fuse.debug": ("fuse: {debug: true}", lambda c: c.fuse.debug, True,
                   "cli.py: cfg.fuse.debug"),
    "data.dir": ("data: {dir: /d}", lambda c: c.data.dir, "/d", "cli.py: cfg.data.dir"),
    "data.retention": ("data: {retention: 1h}", lambda c: c.data.retention, 3600.0,
                       "app.py: config.data.retention"),
    "data.spool-limit": ("data: {spool-limit: 1MiB}", lambda c: c.data.spool_limit, 1 << 20,
                         "app.py: spool_limit=self.config.data.spool_limit"),
    "data.quarantine-limit": ("data: {quarantine-limit: 1MiB}",
                              lambda c: c.data.quarantine_limit, 1 << 20,
                              "app.py: quarantine_limit=opts.config.data.quarantine_limit"),
    "exit-on-error": ("exit-on-error: false", lambda c: c.exit_on_error, False,
                      "cli.py: if cfg.exit_on_error"),
    "exec": ("exec: app", lambda c: c.exec[0].argv, ("app",), "cli.py: cfg.exec"),
    "exec[].cmd": ("exec: [{cmd: app -v}]", lambda c: c.exec[0].argv, ("app", "-v"),
                   "cli.py: .argv"),
    "exec[].if-candidate": ("exec: [{cmd: m, if-candidate: true}, {cmd: a}]",
                            lambda c: c.exec[0].if_candidate, True, "app.py: .if_candidate"),
    "log.level": ("log: {level: debug}", lambda c: c.log.level, "debug", "cli.py: cfg.log.level"),
    "log.format": ("log: {format: json}", lambda c: c.log.format, "json",
                   "cli.py: cfg.log.format"),
    "http.addr": ("http: {addr: ':9'}", lambda c: c.http.addr, ":9", "app.py: config.http.addr"),
    "http.secret": ("http: {secret: s}", lambda c: c.http.secret, "s",
                    "app.py: config.http.secret"),
    "http.allow-insecure": ("http: {allow-insecure: true}", lambda c: c.http.allow_insecure,
                            True, "app.py: allow_insecure=config.http.allow_insecure"),
    "http.tls.cert": ("http: {tls: {cert: /c, key: /k}}", lambda c: c.http.tls.cert, "/c",
                      "http_tls.py: tls.cert"),
    "http.tls.key": ("http: {tls: {cert: /c, key: /k}}", lambda c: c.http.tls.key, "/k",
                     "http_tls.py: tls.key"),
    "http.tls.ca": ("http: {tls: {ca: /a}}", lambda c: c.http.tls.ca, "/a",
                    "http_tls.py: tls.ca"),
    "http.tls.client-ca": ("http: {tls: {cert: /c, key: /k, client-ca: /a}}",
                           lambda c: c.http.tls.client_ca, "/a", "http_tls.py: tls.client_ca"),
    "http.tls.client-cert": ("http: {tls: {client-cert: /c, client-key: /k}}",
                             lambda c: c.http.tls.client_cert, "/c",
                             "http_tls.py: tls.client_cert"),
    "http.tls.client-key": ("http: {tls: {client-cert: /c, client-key: /k}}",
                            lambda c: c.http.tls.client_key, "/k",
                            "http_tls.py: tls.client_key"),
    "http.metrics-public": ("http: {metrics-public: true}", lambda c: c.http.metrics_public,
                            True, "app.py: config.http.metrics_public"),
    "lease.candidate": ("lease: {candidate: false, advertise-url: 'p:1'}",
                        lambda c: c.lease.candidate, False, "app.py: config.lease.candidate"),
    "lease.advertise-url": ("lease: {advertise-url: 'p:1'}", lambda c: c.lease.advertise_url,
                            "http://p:1", "app.py: config.lease.advertise_url"),
    "lease.type": (ETCD, lambda c: c.lease.settings.type, "etcd",
                   "settings.py: if settings.type == \"etcd\""),
    "lease.hostname": (ETCD + "\n  hostname: n1", lambda c: c.lease.settings.hostname, "n1",
                       "cluster.py: settings.hostname"),
    "lease.promote": (ETCD + "\n  promote: true", lambda c: c.lease.settings.promote, True,
                      "elector.py: self.settings.promote"),
    "lease.demote-delay": (ETCD + "\n  demote-delay: 3s",
                           lambda c: c.lease.settings.demote_delay, 3.0,
                           "elector.py: self.settings.demote_delay"),
    "lease.etcd": (ETCD, lambda c: c.lease.settings.etcd.endpoints, ("http://e:2379",),
                   "settings.py: e = settings.etcd"),
    "lease.etcd.endpoints": (ETCD, lambda c: c.lease.settings.etcd.endpoints,
                             ("http://e:2379",), "settings.py: EtcdLease(e.endpoints"),
    "lease.etcd.key": (ETCD_OPEN + ", key: k/p}", lambda c: c.lease.settings.etcd.key, "k/p",
                       "settings.py: e.key"),
    "lease.etcd.ttl": (ETCD_OPEN + ", ttl: 3s}", lambda c: c.lease.settings.etcd.ttl, 3.0,
                       "settings.py: ttl=e.ttl"),
    "lease.etcd.lock-delay": (ETCD_OPEN + ", lock-delay: 2s}",
                              lambda c: c.lease.settings.etcd.lock_delay, 2.0,
                              "settings.py: lock_delay=e.lock_delay"),
    "lease.s3": (S3L + "}}", lambda c: c.lease.settings.s3.key, "litefs-lease.json",
                 "settings.py: s = settings.s3"),
    "lease.s3.key": (S3L + "key: l.json}}", lambda c: c.lease.settings.s3.key, "l.json",
                     "settings.py: BucketLease(bucket, s.key"),
    "lease.s3.ttl": (S3L + "ttl: 4s}}", lambda c: c.lease.settings.s3.ttl, 4.0,
                     "settings.py: ttl=s.ttl"),
    "lease.s3.lock-delay": (S3L + "lock-delay: 0s}}", lambda c: c.lease.settings.s3.lock_delay,
                            0.0, "settings.py: lock_delay=s.lock_delay"),
    "lease.s3.max-clock-skew": (S3L + "max-clock-skew: 2s}}",
                                lambda c: c.lease.settings.s3.max_clock_skew, 2.0,
                                "settings.py: max_clock_skew=s.max_clock_skew"),
    "replication.commit": (ETCD + "\nreplication: {commit: replica}",
                           lambda c: c.replication.commit, "replica",
                           "cluster.py: cfg.replication.commit"),
    "replication.commit-timeout": (ETCD + "\nreplication: {commit-timeout: 2s}",
                                   lambda c: c.replication.commit_timeout, 2.0,
                                   "cluster.py: cfg.replication.commit_timeout"),
    "replica": (BASE, lambda c: c.replica_for("x.db").bucket, "b",
                "app.py: config.replica_for("),
    "replicas": ("replicas: [{url: 's3://b'}]", lambda c: c.replica_for("x.db").bucket, "b",
                 "app.py: config.replica_for("),
    "replica.url": ("replica: {url: 's3://u/p'}", lambda c: c.replica_for("x.db").path, "p/x.db",
                    "replica_clients.py: replica.path"),
    "replica.type": ("replica: {type: file, path: /b}", lambda c: c.replica_for("x.db").type,
                     "file", "replica_clients.py: replica.type"),
    "replica.bucket": (BASE, lambda c: c.replica_for("x.db").bucket, "b",
                       "replica_clients.py: replica.bucket"),
    "replica.path": (BASE + "  path: p", lambda c: c.replica_for("x.db").path, "p/x.db",
                     "replica_clients.py: replica.path"),
    "replica.endpoint": (BASE + "  endpoint: minio:9", lambda c: c.replica_for("x").endpoint,
                         "http://minio:9", "replica_clients.py: endpoint=replica.endpoint"),
    "replica.region": (BASE + "  region: r", lambda c: c.replica_for("x").region, "r",
                       "replica_clients.py: region=replica.region"),
    "replica.force-path-style": (BASE + "  force-path-style: true",
                                 lambda c: c.replica_for("x").force_path_style, True,
                                 "replica_clients.py: replica.force_path_style"),
    "replica.access-key-id": (BASE + "  access-key-id: k\n  secret-access-key: s",
                              lambda c: resolve_credentials(c.replica_for("x"), {}), ("k", "s"),
                              "replica_clients.py: find_credentials(replica"),
    "replica.sync-interval": (BASE + "  sync-interval: 5s",
                              lambda c: c.replica_for("x").sync_interval, 5.0,
                              "app.py: sync_interval=replica.sync_interval"),
    "replica.batch-window": (BASE + "  batch-window: 0s",
                             lambda c: c.replica_for("x").batch_window, 0.0,
                             "app.py: \"batch_window\", replica.batch_window"),
    "replica.upload-rate": (BASE + "  upload-rate: 300/m",
                            lambda c: c.replica_for("x").upload_rate, 5.0,
                            "app.py: RequestBudget(replica.upload_rate"),
    "replica.upload-burst": (BASE + "  upload-burst: 2",
                             lambda c: c.replica_for("x").upload_burst, 2,
                             "app.py: replica.upload_burst)"),
    "replica.retention": (BASE + "  retention: 1h", lambda c: c.replica_for("x").retention,
                          3600.0, "app.py: replica.retention"),
    "replica.snapshot-interval": (BASE + "  snapshot-interval: 1h",
                                  lambda c: c.replica_for("x").snapshot_interval, 3600.0,
                                  "app.py: replica.snapshot_interval"),
    "replica.l1-interval": (BASE + "  l1-interval: 1s", lambda c: c.replica_for("x").l1_interval,
                            1.0, "app.py: replica.l1_interval"),
    "replica.l2-interval": (BASE + "  l2-interval: 1s", lambda c: c.replica_for("x").l2_interval,
                            1.0, "app.py: replica.l2_interval"),
    "replica.l3-interval": (BASE + "  l3-interval: 1s", lambda c: c.replica_for("x").l3_interval,
                            1.0, "app.py: replica.l3_interval"),
    "replica.validation-interval": (BASE + "  validation-interval: 1h",
                                    lambda c: c.replica_for("x").validation_interval, 3600.0,
                                    "app.py: replica.validation_interval"),
    "replica.age": (BASE + f"  age: {{recipients: [{AGE_PUBLIC}]}}",
                    lambda c: c.replica_for("x").age.recipients, (AGE_PUBLIC,),
                    "replica_clients.py: AgeReplicaClient(client, replica.age.keys)"),
    "replica.age.recipients": (BASE + f"  age: {{recipients: [{AGE_PUBLIC}]}}",
                               lambda c: c.replica_for("x").age.recipients, (AGE_PUBLIC,),
                               "age.py: load_recipients(keys.recipients)"),
    "replica.age.identities": (BASE + f"  age: {{identities: ['{AGE_SECRET}']}}",
                               lambda c: c.replica_for("x").age.identities, (AGE_SECRET,),
                               "age.py: load_identities(keys.identities)"),
    "dbs": ("dbs: [{name: a.db, replica: {url: 's3://b/a'}}]",
            lambda c: c.replica_for("a.db").path, "a", "app.py: config.dbs"),
    "dbs[].name": ("dbs: [{name: a.db, replica: {url: 's3://b/a'}}]",
                   lambda c: c.db("a.db") is not None, True, "app.py: d.name"),
    "dbs[].replica": ("dbs: [{name: a.db, replica: {url: 's3://b/a'}}]",
                      lambda c: c.replica_for("a.db").path, "a", "app.py: config.replica_for("),
    "dbs[].replicas": ("dbs: [{name: a.db, replicas: [{url: 's3://b/a'}]}]",
                       lambda c: c.replica_for("a.db").path, "a", "app.py: config.replica_for("),
    "access-key-id": ("access-key-id: k\nsecret-access-key: s\n" + BASE,
                      lambda c: resolve_credentials(c.replica_for("x"), {}), ("k", "s"),
                      "replica_clients.py: find_credentials(replica"),
    "proxy": (PX + "}", lambda c: server_settings(c).target, "localhost:8081",
              "app.py: ProxySettings.from_config(config.proxy)"),
    "proxy.addr": (PX + "}", lambda c: server_settings(c).addr, ":8080",
                   "server.py: s.addr.rpartition"),
    "proxy.target": (PX + "}", lambda c: server_settings(c).target, "localhost:8081",
                     "server.py: settings.target.rpartition"),
    "proxy.db": (PX + "}", lambda c: server_settings(c).db, "store.db",
                 "server.py: settings.db"),
    "proxy.max-lag": (PX + ", max-lag: 2s}", lambda c: server_settings(c).max_lag, 2.0,
                      "server.py: self.settings.max_lag"),
    "proxy.passthrough": (PX + ", passthrough: ['*.css']}",
                          lambda c: server_settings(c).is_passthrough("/a.css"), True,
                          "server.py: .is_passthrough("),
    "proxy.always-forward": (PX + ", always-forward: [/login]}",
                             lambda c: server_settings(c).is_always_forward("/login"), True,
                             "server.py: .is_always_forward("),
    "proxy.primary-redirect-timeout": (PX + ", primary-redirect-timeout: 1s}",
                                       lambda c: server_settings(c).primary_redirect_timeout,
                                       1.0, "server.py: s.primary_redirect_timeout"),
    "proxy.debug": (PX + ", debug: true}", lambda c: server_settings(c).debug, True,
                    "server.py: settings.debug"),
    "proxy.read-timeout": (PX + ", read-timeout: 3s}",
                           lambda c: server_settings(c).read_timeout, 3.0,
                           "server.py: read_timeout=s.read_timeout"),
    "proxy.read-header-timeout": (PX + ", read-header-timeout: 2s}",
                                  lambda c: server_settings(c).header_timeout_first, 2.0,
                                  "server.py: s.header_timeout_first"),
    "proxy.write-timeout": (PX + ", write-timeout: 4s}",
                            lambda c: server_settings(c).write_timeout, 4.0,
                            "server.py: self.settings.write_timeout"),
    "proxy.idle-timeout": (PX + ", idle-timeout: 7s}",
                           lambda c: server_settings(c).idle_timeout, 7.0,
                           "server.py: idle_timeout=s.idle_timeout"),
    "proxy.txid-timeout": (PX + ", txid-timeout: 1s}",
                           lambda c: server_settings(c).txid_timeout, 1.0,
                           "server.py: self.settings.txid_timeout"),
    "proxy.fly-replay": (PX + ", fly-replay: true}", lambda c: server_settings(c).fly_replay,
                         True, "server.py: s.fly_replay"),
    "proxy.max-header-size": (PX + ", max-header-size: 32KiB}",
                              lambda c: server_settings(c).max_header_size, 32 * 1024,
                              "server.py: max_header_size=s.max_header_size"),
    "proxy.primary-url": (PX + ", primary-url: 'p:8080'}",
                          lambda c: server_settings(c).primary_url, "http://p:8080",
                          "server.py: override=settings.primary_url"),
}
BEHAVIOUR["secret-access-key"] = BEHAVIOUR["access-key-id"]
BEHAVIOUR["replica.secret-access-key"] = BEHAVIOUR["replica.access-key-id"]
REFUSED: dict[str, str] = {}  # keys in NOT_SUPPORTED_YET, with a config using each
# Keys whose code lives in another change that is not merged here yet: the key is parsed and
# exposed, and the named change acts on it. Remove an entry when that change is merged.
PENDING: dict[str, str] = {}


def documented_keys() -> set[str]:
    """The keys in the reference tables of docs/config.md (`| `key` | ...`)."""
    reference = DOCS.read_text().split("\n## Reference\n")[1].split("\n## ")[0]
    return set(re.findall(r"^\| `([a-z0-9.\[\]-]+)` \|[^|\n]+\|[^|\n]+\|.+\|$", reference, re.M))


def walked_keys() -> set[str]:
    """Every key the loader accepts; `dbs[].replica.*` are `replica.*` (one table)."""
    return {k for k in config_mod.schema_keys()
            if k not in SECTIONS and not k.startswith("dbs[].replica.")}


def test_every_key_is_documented_and_every_documented_key_exists() -> None:
    assert documented_keys() == walked_keys()


def test_the_example_shows_every_key() -> None:
    text = EXAMPLE.read_text()
    shown = set(re.findall(r"^[#\s-]*([a-z][a-z0-9-]*):", text, re.M))
    assert not {k for k in walked_keys() if k.replace("[]", "").rsplit(".", 1)[-1] not in shown}


@pytest.mark.parametrize("key", sorted(walked_keys()))
def test_every_key_changes_behaviour_or_is_refused(tmp_path: Path, key: str) -> None:
    if key in REFUSED:
        assert key in config_mod.NOT_SUPPORTED_YET
        assert load_error(tmp_path, REFUSED[key] + "\n").startswith(f"not supported yet: {key}")
        return
    text, read, value, consumer = BEHAVIOUR[key]
    assert read(load(tmp_path, text + "\n")) == value  # type: ignore[operator]
    module, code = consumer.split(": ", 1)
    found = any(code in p.read_text() for p in PACKAGE.rglob(module))
    assert found or key in PENDING, f"nothing in {module} reads {key} ({code!r})"


@pytest.mark.parametrize(("text", "needles"), [
    ("http: {tls: {cert: /c}}\n", ["http.tls.key", "http.tls.cert is set", "both or neither"]),
    ("http: {tls: {key: /k}}\n", ["http.tls.cert", "http.tls.key is set"]),
    ("http: {tls: {client-key: /k}}\n", ["http.tls.client-cert", "both or neither"]),
    ("http: {tls: {client-ca: /a}}\n", ["http.tls.client-ca", "need TLS on the server"]),
    ("http: {tls: {cert: 5, key: /k}}\n", ["http.tls.cert", "a string"]),
    ("http: {tls: {crt: /c}}\n", ["unknown key http.tls.crt", "http.tls.cert"]),
    ("http: {allow-insecure: 'yes'}\n", ["http.allow-insecure", "true or false"]),
])
def test_http_tls_rules(tmp_path: Path, text: str, needles: list[str]) -> None:
    msg = load_error(tmp_path, text)
    assert all(n in msg for n in needles), msg


def test_http_tls_defaults_and_full_form(tmp_path: Path) -> None:
    assert Config().http.tls.cert is None and Config().http.allow_insecure is False
    cfg = load(tmp_path, "http: {allow-insecure: true, tls: {cert: /c, key: /k, ca: /a, "
                         "client-ca: /b, client-cert: /d, client-key: /e}}\n")
    tls = cfg.http.tls
    assert (tls.cert, tls.key, tls.ca, tls.client_ca, tls.client_cert, tls.client_key) == (
        "/c", "/k", "/a", "/b", "/d", "/e")
    assert cfg.http.allow_insecure and "/k" not in repr(cfg) and "/e" not in repr(cfg)
