"""A Litestream configuration file, read by `litefs mount --config` as it is, or turned into
litefs.yml by `litefs config convert` (both go through `convert_tree`).

Litestream names each database by its real path (`dbs[].path: /var/lib/app/store.db`). Under
litefs the app keeps opening that same path, which is now on the FUSE mount: the directory of
the paths becomes `fuse.dir` and each file name a `dbs[].name` with its replica. So every path
must be absolute and in one directory, and that directory must be empty when litefs first
mounts over it: move the old files aside and litefs restores each database from its replica
(Litestream 0.5 backups are read as they are).

Values are copied as written, `${VAR}` included; a reference without a default becomes
`${VAR:-}` because Litestream reads an unset variable as empty where litefs.yml stops.
"""

from __future__ import annotations

import posixpath
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import yaml

from . import schema as s
from . import schema_keys, url_location

# Litestream keys with no litefs counterpart, and why nothing is lost by dropping them.
_DROPPED = {
    "meta-path": "litefs keeps its state in data.dir",
    "meta-dir": "litefs keeps its state in data.dir",
    "max-sync-wal-bytes": "litefs ships every commit as it happens",
    "max-sync-ltx-files": "litefs-py batches uploads by replica batch-window",
    "monitor-interval": "litefs sees every commit through the mount; there is nothing to poll",
    "checkpoint-interval": "litefs does not checkpoint the app's WAL; SQLite does",
    "busy-timeout": "litefs takes no SQLite locks on the app's database",
    "min-checkpoint-page-count": "litefs does not checkpoint the app's WAL; SQLite does",
    "max-checkpoint-page-count": "litefs does not checkpoint the app's WAL; SQLite does",
    "truncate-page-n": "litefs does not checkpoint the app's WAL; SQLite does",
    "restore-if-db-not-exists": "litefs always restores a missing database from its replica "
                                "before the mount serves it",
    "name": "litefs-py has one replica per database",
    "retention-check-interval": "litefs-py enforces retention on its own schedule",
    "l0-retention": "litefs-py keeps uploaded LTX files for data.retention (default 10m)",
    "l0-retention-check-interval": "litefs-py enforces retention on its own schedule",
    "shutdown-sync-timeout": "litefs drains uploads for up to 10s at shutdown; what is left "
                             "goes out on the next start",
    "shutdown-sync-interval": "litefs drains uploads for up to 10s at shutdown",
    "socket": "litefs has no control socket; see `litefs status`",
    "verify-compaction": "litefs-py checks every compacted file it writes",
    "stderr": "litefs always logs to stderr",
}
# Litestream keys litefs-py refuses, with what to do instead (the same wording as litefs.yml's
# NOT_SUPPORTED_YET).
_REFUSED = {
    "mcp-addr": "litefs-py has no MCP server; remove the key",
    "validation": "run `litefs restore -o /tmp/check.db URL` on a schedule to check backups",
    "validation-interval": "run `litefs restore -o /tmp/check.db URL` on a schedule to check "
                           "backups",
    "heartbeat-url": "watch `litefs status --json` (replica lag and errors) instead",
    "heartbeat-interval": "watch `litefs status --json` (replica lag and errors) instead",
    "skip-verify": "TLS verification stays on: use an http:// endpoint for a local server, or "
                   "AWS_CA_BUNDLE for a private CA",
    "auto-recover": "litefs never resets state on its own; `litefs recover NAME` does it",
    "age": "client-side encryption is not supported (Litestream 0.5 refuses it too)",
    "sign-payload": "litefs-py always signs payloads",
    "require-content-md5": "litefs-py sets checksums itself",
    "part-size": "litefs-py uploads each LTX file in one request",
    "storage-class": "litefs-py writes the bucket's default storage class; use a lifecycle "
                     "rule on the bucket instead",
    "concurrency": "litefs-py uploads each LTX file in one request",
    "sse-customer-algorithm": "server-side encryption keys are not supported",
    "sse-customer-key": "server-side encryption keys are not supported",
    "sse-customer-key-path": "server-side encryption keys are not supported",
    "sse-kms-key-id": "server-side encryption keys are not supported",
    **dict.fromkeys(
        ("account-name", "account-key", "sas-token", "host", "user", "password", "key-path",
         "concurrent-writes", "host-key", "webdav-url", "webdav-username", "webdav-password",
         "jwt", "seed", "creds", "nkey", "username", "token", "tls", "root-cas", "client-cert",
         "client-key", "max-reconnects", "reconnect-wait", "timeout"),
        "litefs-py replicates to S3 (and S3-compatible services such as B2, R2, MinIO) and to "
        "directories; Azure, SFTP, NATS and WebDAV replicas are not supported"),
    "dir": "list each database with its path (they must share one directory), or leave them "
           "out and give a top-level replica: every database under the mount is backed up",
    "pattern": "directory replication: list each database with its path",
    "recursive": "directory replication: list each database with its path",
    "watch": "directory replication: list each database with its path",
}
# Litestream's top-level replica settings; `retention` is also its {enabled: ...} section.
_GLOBAL_REPLICA = ("sync-interval", "retention", "snapshot-interval", "region", "bucket",
                   "endpoint", "force-path-style")
_S3_ONLY = ("bucket", "endpoint", "region", "force-path-style")
_TOP = ("access-key-id", "secret-access-key", "addr", "logging", "exec", "dbs", "levels",
        "snapshot", *_GLOBAL_REPLICA)
_DB = ("path", "snapshot", "replica", "replicas")
_REPLICA = tuple(k.removeprefix("replica.") for k in schema_keys()
                 if k.startswith("replica."))  # litefs's replica keys include Litestream's
_LITESTREAM_ONLY = {"addr", "logging", "levels", "snapshot", "mcp-addr"}
_LITEFS_ONLY = {"fuse", "data", "lease", "http", "log", "proxy", "exit-on-error"}
_VAR_RE = re.compile(r"\$(\$|\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")


class Converted(NamedTuple):
    tree: dict[str, Any]  # the litefs.yml document (values as written, `${VAR:-}` for `${VAR}`)
    notes: tuple[str, ...]  # what changed, one line each
    keymap: dict[str, str]  # a key of `tree` → the key in the Litestream file, for errors


def is_litestream(raw: object) -> bool:
    """Whether a YAML document is a Litestream configuration file: Litestream's top-level keys,
    or databases named by `path` with a replica. A file with keys of both kinds is an error."""
    if not isinstance(raw, dict):
        return False
    dbs = raw.get("dbs")
    marks = sorted(k for k in raw if k in _LITESTREAM_ONLY) + [
        f"dbs[{i}].path" for i, db in enumerate(dbs if isinstance(dbs, list) else [])
        if isinstance(db, dict) and {"path", "dir"} & db.keys()
        and {"replica", "replicas"} & db.keys()]
    ours = sorted(k for k in raw if k in _LITEFS_ONLY)
    if marks and ours:
        raise s.error(f"{ours[0]} is a litefs.yml key but {marks[0]} is Litestream's: use one "
                      "format (`litefs config convert FILE` writes a Litestream file as "
                      "litefs.yml)")
    return bool(marks)


def convert_tree(raw: Mapping[str, Any], source: Path) -> Converted:
    """A Litestream document → the litefs.yml document that does the same, or QuietError
    (CONFIG) naming the Litestream key that has no counterpart."""
    return _Converter(str(source)).convert(raw)


class _Converter:
    def __init__(self, source: str) -> None:
        self.where = f" in {source}"
        self.notes: list[str] = []
        self.keymap: dict[str, str] = {}

    def fail(self, key: str, detail: str) -> NoReturn:
        raise s.error(f"{key}{self.where}: {detail}")

    def keys(self, m: object, key: str, allowed: tuple[str, ...], expected: str = "a mapping"
             ) -> dict[str, Any]:
        """`m` as a mapping of Litestream keys: dropped ones noted, refused ones refused."""
        if m is None:
            return {}
        if not isinstance(m, dict):
            self.fail(key, f"expected {expected}, got {s.show_value(m)} ({s.kind(m)})")
        out = {}
        for k, v in m.items():
            full = s.join(key, str(k))
            if k in _REFUSED:
                raise s.error(f"not supported yet: {full}{self.where} — {_REFUSED[k]}")
            if k in _DROPPED:
                self.notes.append(f"{full}: dropped — {_DROPPED[k]}")
            elif k in allowed:
                out[k] = _defaults_for_unset(v)
            else:
                raise s.error(s.unknown_key_message(key, str(k), allowed + tuple(_DROPPED),
                                                    self.where))
        return out

    def convert(self, raw: Mapping[str, Any]) -> Converted:
        top = self.keys(raw, "", _TOP)
        tree: dict[str, Any] = {}
        if "exec" in top:
            tree["exec"] = top["exec"]
        logging = self.keys(top.get("logging"), "logging", ("level", "type"))
        if logging:
            tree["log"] = {"level": logging["level"]} if "level" in logging else {}
            if "type" in logging:
                tree["log"]["format"] = logging["type"]
                self.keymap["log.format"] = "logging.type"
            self.keymap["log.level"] = "logging.level"
        if "addr" in top:
            tree["http"] = {"addr": top["addr"]}
            self.keymap["http.addr"] = "addr"
            self.notes.append("addr: now http.addr, where litefs serves its HTTP API "
                              "(replication and status; /metrics comes with the metrics "
                              "issue)")
        for k in ("access-key-id", "secret-access-key"):
            if k in top:
                tree[k] = top[k]
        defaults = self.replica_defaults(top)
        dbs = top.get("dbs")
        if dbs is not None and not isinstance(dbs, list):
            self.fail("dbs", f"expected a list of {{path: ..., replica: ...}}, got "
                             f"{s.show_value(dbs)} ({s.kind(dbs)})")
        entries = [self.db(i, db, defaults) for i, db in enumerate(dbs or [])]
        if entries:
            dirs = [d for d, _ in entries]
            for i, d in enumerate(dirs):
                if d != dirs[0]:
                    self.fail(f"dbs[{i}].path", f"is in {d} but dbs[0].path is in {dirs[0]}: "
                              "litefs serves the databases of one directory (its mount, "
                              "fuse.dir); put them in one directory, or run one litefs per "
                              "directory")
            tree["fuse"] = {"dir": dirs[0]}
            self.keymap["fuse.dir"] = "dbs[0].path"
            tree["dbs"] = [db for _, db in entries]
            self.notes.insert(0, f"dbs[].path: the app opens the same paths, now on the litefs "
                                 f"mount at {dirs[0]} (fuse.dir); that directory must be empty "
                                 "when litefs first mounts it: move the old files aside and "
                                 "each database is restored from its replica")
        if any("$" in str(v) for v in _leaves(raw)):
            self.notes.append("${VAR} became ${VAR:-}: Litestream reads an unset variable as "
                              "empty, where litefs.yml would stop")
        return Converted({k: tree[k] for k in _ORDER if k in tree}, tuple(self.notes),
                         self.keymap)

    def replica_defaults(self, top: dict[str, Any]) -> dict[str, tuple[Any, str]]:
        """Litestream's top-level replica settings → {litefs replica key: (value, their key)}."""
        out = {k: (top[k], k) for k in _GLOBAL_REPLICA if k in top}
        if isinstance(top.get("retention"), dict):  # Litestream 0.5: retention: {enabled: ...}
            del out["retention"]
            enabled = self.keys(top["retention"], "retention", ("enabled",)).get("enabled")
            if enabled is False or str(enabled).lower() == "false":
                raise s.error(f"not supported yet: retention.enabled false{self.where} — "
                              "litefs-py always enforces retention; set a long "
                              "snapshot.retention (e.g. 8760h) to keep backups longer")
            self.notes.append("retention.enabled: dropped — litefs-py always enforces "
                              "retention (snapshot.retention, default 24h)")
        levels = top.get("levels")
        if levels is not None:
            if not isinstance(levels, list) or len(levels) > 3:
                self.fail("levels", "litefs-py compacts into three levels: give at most three "
                                    "{interval: ...} entries (l1, l2, l3)")
            for i, level in enumerate(levels):
                level = self.keys(level, f"levels[{i}]", ("interval",))
                if "interval" in level:
                    out[f"l{i + 1}-interval"] = (level["interval"], f"levels[{i}].interval")
        return out | self.snapshot(top.get("snapshot"), "snapshot")

    def snapshot(self, raw: object, key: str) -> dict[str, tuple[Any, str]]:
        """`snapshot: {interval, retention}` → the replica's snapshot-interval and retention."""
        m = self.keys(raw, key, ("interval", "retention"))
        return {ours: (m[theirs], f"{key}.{theirs}") for theirs, ours in
                (("interval", "snapshot-interval"), ("retention", "retention")) if theirs in m}

    def db(self, i: int, raw: object, defaults: dict[str, tuple[Any, str]]
           ) -> tuple[str, dict[str, Any]]:
        """One `dbs[]` entry → (its directory, the litefs `dbs[]` entry)."""
        key = f"dbs[{i}]"
        m = self.keys(raw, key, _DB, "a mapping {path: ..., replica: ...}")
        defaults = defaults | self.snapshot(m.get("snapshot"), f"{key}.snapshot")
        path = m.get("path")
        if not path:
            self.fail(key, "missing path (the database file the app opens, e.g. "
                           "/var/lib/app/store.db)")
        if not isinstance(path, str):
            self.fail(f"{key}.path", f"expected a string, got {s.show_value(path)} "
                                     f"({s.kind(path)})")
        directory, _, name = path.rpartition("/")
        if not path.startswith(("/", "$")) or directory.count("{") > directory.count("}"):
            self.fail(f"{key}.path", f"{s.show_value(path)} must be an absolute path whose "
                                     "directory and file name are apart, e.g. "
                                     "/var/lib/app/store.db or ${DATA}/store.db")
        out: dict[str, Any] = {"name": name}
        self.keymap[f"{key}.name"] = f"{key}.path"
        if "replica" in m and "replicas" in m:
            out["replicas"], out["replica"] = m["replicas"], m["replica"]  # the loader says so
        elif "replicas" in m and isinstance(m["replicas"], list) and len(m["replicas"]) == 1:
            out["replica"] = self.replica(f"{key}.replicas[0]", m["replicas"][0], defaults,
                                          f"{key}.replica")
            self.keymap[f"{key}.replica"] = f"{key}.replicas[0]"
        elif "replicas" in m:
            out["replicas"] = m["replicas"]  # none or several: the loader says what is wrong
        elif "replica" in m:
            out["replica"] = self.replica(f"{key}.replica", m["replica"], defaults,
                                          f"{key}.replica")
        else:
            self.fail(key, "missing replica (Litestream needs one per database too)")
        return posixpath.normpath(directory or "/") if "$" not in directory else directory, out

    def replica(self, key: str, raw: object, defaults: dict[str, tuple[Any, str]],
                ours: str) -> dict[str, Any]:
        """One replica, with the top-level settings it does not set itself."""
        m = self.keys(raw, key, _REPLICA)
        from_url = url_location(str(m["url"])) if "url" in m else {}
        if not {"url", "type", "bucket"} & m.keys():
            m["type"] = "file"  # Litestream's default, even with a top-level bucket
        is_s3 = from_url.get("type", m.get("type", "s3")) == "s3"
        for k, (value, theirs) in defaults.items():
            if k not in m and k not in from_url and (is_s3 or k not in _S3_ONLY):
                m[k] = value
                self.keymap[s.join(ours, k)] = theirs
        return m


_ORDER = ("fuse", "exec", "log", "http", "access-key-id", "secret-access-key", "dbs")


def _defaults_for_unset(value: Any) -> Any:
    """`$VAR` / `${VAR}` → `${VAR:-}` in every string (Litestream reads unset as empty)."""
    if isinstance(value, str):
        return _VAR_RE.sub(lambda m: "$$" if m.group(1) == "$" else
                           "${" + m.group(1).strip("{}") + ":-}", value)
    if isinstance(value, dict):
        return {k: _defaults_for_unset(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_defaults_for_unset(v) for v in value]
    return value


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


def to_yaml(converted: Converted, source: Path) -> str:
    """The litefs.yml text of a converted file, with what changed as comments at the top."""
    lines = [f"# litefs.yml written by `litefs config convert` from {source}",
             "# (docs/config.md). What changed from the Litestream file:"]
    for note in converted.notes or ("nothing: every key means the same here",):
        lines += textwrap.wrap(note, 96, initial_indent="#   - ", subsequent_indent="#     ")
    body = yaml.safe_dump(converted.tree, sort_keys=False, default_flow_style=False,
                          allow_unicode=True)
    return "\n".join(lines) + "\n\n" + body


__all__ = ["Converted", "convert_tree", "is_litestream", "to_yaml"]
