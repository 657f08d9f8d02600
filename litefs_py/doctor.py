"""`litefs doctor`: check that this machine and a replica can run litefs, one line per check.

Each check ends `ok`, `warn` (works for this configuration, but worth knowing), `skip` (not
tried because an earlier check failed) or `FAIL` (with the fix). Nothing here changes a
replica beyond one probe object, written and deleted again under a name Litestream and
litefs never read: `.litefs-doctor-<random>` directly under the replica path (a database
path holds level directories; a base path holds one directory per database).
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from .config import CREDENTIAL_ENV, Config, ReplicaConfig, find_credentials
from .errors import QuietError
from .storage.base import ReplicaClient
from .storage.endpoint import normalize_endpoint
from .storage.errors import (
    AccessDeniedError,
    EndpointUnreachableError,
    NoSuchBucketError,
    ObjectNotFoundError,
    StorageError,
)

OK, WARN, SKIP, FAIL = "ok", "warn", "skip", "FAIL"
MAX_CLOCK_SKEW = 30.0  # seconds; beyond it restores by --timestamp and retention go wrong
PROBE_PREFIX = ".litefs-doctor-"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # OK, WARN, SKIP or FAIL
    detail: str
    fix: str | None = None
    replica: str | None = None  # the replica this check is about, if any

    def line(self) -> str:
        where = f" [{self.replica}]" if self.replica else ""
        text = f"{self.status:<4}  {self.name}{where}: {self.detail}"
        if self.fix and self.status in (FAIL, WARN):
            text += f" -> fix: {self.fix}"
        return text

    def to_json(self) -> dict[str, object]:
        return {"check": self.name, "status": self.status, "detail": self.detail,
                "fix": self.fix, "replica": self.replica}


@dataclass(frozen=True, slots=True)
class Target:
    """One replica to probe: how it was configured and where its credentials come from."""

    replica: ReplicaConfig
    credentials: str | None  # where the keys were found (s3 only); None: the AWS chain
    label: str = field(default="")
    # The lease is kept in the bucket (lease.type s3): conditional writes are then required.
    lease_in_bucket: bool = False


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "checks": [c.to_json() for c in self.checks]}


# ---- credentials and endpoints ---------------------------------------------------------------


def _mask(key_id: str) -> str:
    return key_id if len(key_id) <= 8 else f"{key_id[:4]}…{key_id[-4:]}"


def credentials_source(replica: ReplicaConfig, config: Config | None,
                       env: Mapping[str, str]) -> str | None:
    """Where `find_credentials` finds the keys of an s3 replica (the one lookup order: the
    config file, then LITEFS_*, then LITESTREAM_*); None when it finds none (the AWS default
    chain then looks further). A half-set pair raises the configuration error."""
    creds = find_credentials(replica, env)
    if creds.access_key_id is None:
        return None
    if replica.access_key_id is not None:
        file = f" in {config.source}" if config is not None and config.source else ""
        top = config is not None and config.access_key_id == replica.access_key_id
        key = "access-key-id/secret-access-key" + (" (top level)" if top else " (replica)")
        return f"key {_mask(creds.access_key_id)} from {key}{file}"
    secret_var = dict(CREDENTIAL_ENV)[creds.source]
    return (f"key {_mask(creds.access_key_id)} from the environment ({creds.source}/"
            f"{secret_var})")


def aws_chain_source(env: Mapping[str, str]) -> str | None:
    """What the AWS default chain would use, as far as can be told without asking it."""
    key_id = env.get("AWS_ACCESS_KEY_ID")
    if key_id:
        return (f"key {_mask(key_id)} from the environment (AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY, the AWS default chain)")
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        return "a web-identity or container role (the AWS default chain)"
    path = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials")
    if path.is_file():
        profile = env.get("AWS_PROFILE") or "default"
        return f"{path}, profile {profile} (the AWS default chain)"
    return None


def endpoint_detail(replica: ReplicaConfig, client: ReplicaClient) -> tuple[str, str | None]:
    """(what the endpoint is and why that scheme, a warning or None)."""
    region = getattr(client, "region", None) or replica.region or "?"
    style = "path-style" if replica.force_path_style else "virtual-hosted"
    if replica.endpoint is None:
        url = getattr(client, "endpoint_url", "AWS S3")
        return f"{url} (AWS; no endpoint given), region {region}, {style}", None
    parts = urlsplit(replica.endpoint)
    host = parts.hostname or ""
    bare = parts.netloc  # what a user writes without a scheme
    default = urlsplit(normalize_endpoint(bare)).scheme
    if default == "http":
        why = (f"{host} is a loopback or private address, so a bare host gets http://; "
               "public hosts get https://")
    else:
        why = f"{host} is a public host, so a bare host gets https://"
    detail = f"{replica.endpoint} ({why}), region {region}, {style}"
    if parts.scheme == "http" and default == "https":
        return detail, (f"plain http:// to the public host {host}: keys are signed but the "
                        "data travels unencrypted; write https:// or leave the scheme off")
    return detail, None


def fix_for(exc: StorageError) -> str:
    if isinstance(exc, NoSuchBucketError):
        return "create the bucket, or correct the bucket name (replica.bucket or the URL)"
    if isinstance(exc, AccessDeniedError):
        return ("check the credentials (LITEFS_ACCESS_KEY_ID/LITEFS_SECRET_ACCESS_KEY or the "
                "config's access-key-id) and that the key may list, read, write and delete")
    if isinstance(exc, EndpointUnreachableError):
        return ("check replica.endpoint (host, port, http:// or https://) and that this "
                "machine can reach it")
    return "see the message; `litefs doctor` again after fixing it"


# ---- replica checks -----------------------------------------------------------------------------

ClientFactory = Callable[[ReplicaConfig], ReplicaClient]



def check_replica(report: Report, target: Target, client_for: ClientFactory,
                  env: Mapping[str, str]) -> None:
    replica = target.replica
    label = target.label or replica.url
    try:
        client = client_for(replica)
    except QuietError as exc:  # e.g. only one of a key pair is set
        report.add(Check("credentials", FAIL, exc.message, "set both keys of the pair, or "
                         "neither" if "set both" in exc.message else "correct the replica's "
                         "configuration", label))
        return
    try:
        _check_replica(report, target, client, label, env)
    finally:
        close = getattr(client, "close", None)
        if close is not None:
            close()


def _check_replica(report: Report, target: Target, client: ReplicaClient, label: str,
                   env: Mapping[str, str]) -> None:
    replica = target.replica
    is_s3 = replica.type == "s3"
    # Listing first: it decides what the credential and endpoint lines say.
    list_error: StorageError | None = None
    try:
        client.check()
    except StorageError as exc:
        list_error = exc

    if is_s3:
        source = target.credentials or aws_chain_source(env)
        if isinstance(list_error, AccessDeniedError):
            report.add(Check("credentials", FAIL,
                             f"{source or 'none found'}: {list_error.message}",
                             fix_for(list_error), label))
        elif source is None and list_error is None:
            report.add(Check("credentials", OK, "none in the config or environment; the AWS "
                             "default chain found some (an instance role?)", None, label))
        elif source is None:
            report.add(Check("credentials", FAIL, "none found: not in the config file, not "
                             "in LITEFS_*/LITESTREAM_*/AWS_* variables, no ~/.aws/credentials",
                             "set LITEFS_ACCESS_KEY_ID and LITEFS_SECRET_ACCESS_KEY", label))
        elif list_error is not None:
            report.add(Check("credentials", OK, f"{source} (not verified: the listing "
                             "failed)", None, label))
        else:
            report.add(Check("credentials", OK, source, None, label))
        detail, warning = endpoint_detail(replica, client)
        if isinstance(list_error, EndpointUnreachableError):
            report.add(Check("endpoint", FAIL, f"{detail}: {list_error.message}",
                             fix_for(list_error), label))
        elif warning is not None:
            report.add(Check("endpoint", WARN, detail, warning, label))
        else:
            report.add(Check("endpoint", OK, detail, None, label))

    if list_error is not None:
        report.add(Check("list", FAIL, list_error.message, fix_for(list_error), label))
        for name in ("put", "get", "delete", "conditional writes", "clock"):
            report.add(Check(name, SKIP, "not tried: listing failed", None, label))
        return
    report.add(Check("list", OK, f"listed {client.description}", None, label))

    for check in _probe(client, label, target.lease_in_bucket):
        report.add(check)

    if not is_s3:
        report.add(Check("clock", OK, "not applicable: a directory replica has no clock of "
                         "its own", None, label))
        return
    before = time.time()
    try:
        server = client.server_time()
    except StorageError as exc:
        report.add(Check("clock", FAIL, exc.message, fix_for(exc), label))
        return
    after = time.time()
    if server is None:
        report.add(Check("clock", WARN, "the server sent no Date header; skew unknown",
                         "make sure this machine's clock is synchronised (NTP)", label))
        return
    # The Date header has one-second resolution and is truncated: compare with the middle of
    # the request, allowing for that second.
    skew = server.timestamp() + 0.5 - (before + after) / 2
    local = datetime.fromtimestamp((before + after) / 2, tz=UTC).strftime("%H:%M:%S")
    text = (f"this machine is {abs(skew):.0f}s {'behind' if skew > 0 else 'ahead of'} the "
            f"server (server {server.astimezone(UTC):%H:%M:%S} UTC, here {local} UTC)")
    if abs(skew) > MAX_CLOCK_SKEW:
        report.add(Check("clock", FAIL, text,
                         f"synchronise the clock (NTP: `timedatectl set-ntp true`, chrony); "
                         f"more than {MAX_CLOCK_SKEW:.0f}s off breaks --timestamp restores and "
                         f"retention, more than 15 minutes and S3 refuses every request",
                         label))
    else:
        report.add(Check("clock", OK, text, None, label))


def _probe(client: ReplicaClient, label: str, lease_in_bucket: bool = False
           ) -> Iterator[Check]:
    """put, get, conditional writes and delete of probe objects (removed again)."""
    key = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    fresh = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    data = f"litefs doctor probe {datetime.now(tz=UTC).isoformat()}\n".encode()
    try:
        client.put_object(key, data)
    except StorageError as exc:
        yield Check("put", FAIL, exc.message, fix_for(exc), label)
        for name in ("get", "delete", "conditional writes"):
            yield Check(name, SKIP, "not tried: the probe could not be written", None, label)
        return
    yield Check("put", OK, f"wrote {key}", None, label)
    try:
        try:
            got = client.get_object(key)
        except StorageError as exc:
            yield Check("get", FAIL, exc.message, fix_for(exc), label)
        else:
            if got == data:
                yield Check("get", OK, f"read {key} back, {len(got)} bytes, same content",
                            None, label)
            else:
                yield Check("get", FAIL, f"read {key} back but got {len(got)} different bytes",
                            "a proxy or gateway between here and the storage changes objects",
                            label)
        yield _conditional(client, key, fresh, data, label, lease_in_bucket)
    finally:
        for name in (fresh, key):
            deleted: Check | None
            try:
                client.delete_object(name)
                deleted = None
            except StorageError as exc:
                deleted = Check("delete", FAIL, exc.message, fix_for(exc), label)
            if name == key:
                if deleted is None:
                    deleted = _confirm_deleted(client, key, label)
                yield deleted
            elif deleted is not None and deleted.status == FAIL:
                yield deleted


def _conditional(client: ReplicaClient, key: str, fresh: str, data: bytes,
                 label: str, lease_in_bucket: bool = False) -> Check:
    name = "conditional writes"
    # Optional, unless the lease is kept in this bucket: then two nodes could both win it.
    missing = FAIL if lease_in_bucket else WARN
    use_other = ("lease.type is s3, which needs them: use lease.type etcd (or static), or "
                 "storage that honours If-None-Match/If-Match" if lease_in_bucket else
                 "only leases kept in the bucket need conditional writes; use another lease "
                 "type with this storage")
    try:
        refused = not client.put_object(key, b"overwritten\n", if_none_match=True)
        created = client.put_object(fresh, data, if_none_match=True)
    except StorageError as exc:
        return Check(name, missing, f"If-None-Match: * on PUT failed: {exc.message}",
                     use_other, label)
    if refused and created:
        return Check(name, OK, "a create-if-absent write (S3: PUT with If-None-Match: *) is "
                     "refused for an existing object and accepted for a new one", None, label)
    if not refused:
        return Check(name, missing, "the server ignored If-None-Match: * and overwrote an "
                     "existing object", use_other, label)
    return Check(name, FAIL, "PUT with If-None-Match: * was refused for a new object",
                 "the storage answers conditional writes wrongly; report it to its provider",
                 label)


def _confirm_deleted(client: ReplicaClient, key: str, label: str) -> Check:
    try:
        client.get_object(key)
    except ObjectNotFoundError:
        return Check("delete", OK, f"deleted {key} (and it is gone)", None, label)
    except StorageError as exc:
        return Check("delete", FAIL, f"after deleting {key}: {exc.message}", fix_for(exc),
                     label)
    return Check("delete", FAIL, f"deleted {key}, but it can still be read",
                 "the key may read but not delete: allow s3:DeleteObject (retention and "
                 "compaction need it)", label)


# ---- this machine -----------------------------------------------------------------------------


def check_fuse(report: Report, dev: Path = Path("/dev/fuse")) -> None:
    try:
        st = dev.stat()
    except OSError:
        report.add(Check("/dev/fuse", FAIL, f"{dev} does not exist",
                         "load the kernel module (`modprobe fuse`); in a container run it "
                         "with `--device /dev/fuse --cap-add SYS_ADMIN`"))
        return
    if not stat.S_ISCHR(st.st_mode):
        report.add(Check("/dev/fuse", FAIL, f"{dev} is not a character device",
                         "remove it and load the fuse kernel module (`modprobe fuse`)"))
    elif not os.access(dev, os.R_OK | os.W_OK):
        report.add(Check("/dev/fuse", FAIL, f"{dev} is not readable and writable by uid "
                         f"{os.geteuid()}", "run litefs as root, or give this user access "
                         "to /dev/fuse"))
    else:
        report.add(Check("/dev/fuse", OK, f"{dev} is a character device this user can open"))


def check_fusermount(report: Report, path: str | None = None) -> None:
    found = shutil.which("fusermount3", path=path)
    if found is None:
        report.add(Check("fusermount3", FAIL, "not on PATH (litefs unmounts with it)",
                         "install FUSE 3 (Debian/Ubuntu: `apt-get install fuse3`)"))
    else:
        report.add(Check("fusermount3", OK, found))


def check_free_space(report: Report, data_dir: Path, need: int) -> None:
    existing = data_dir
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        usage = shutil.disk_usage(existing)
    except OSError as exc:
        report.add(Check("free space", FAIL, f"cannot read the free space of {existing}: "
                         f"{exc.strerror or exc}", "check the data directory's path"))
        return
    where = str(data_dir) if existing == data_dir else f"{data_dir} (not there yet; on " \
        f"{existing}'s filesystem)"
    text = (f"{_size(usage.free)} free of {_size(usage.total)} for {where}; up to "
            f"{_size(need)} of not-yet-uploaded LTX files may be spooled there "
            f"(data.spool-limit)")
    if usage.free < need:
        report.add(Check("free space", FAIL, text, "free space on that filesystem, point "
                         "data.dir elsewhere, or lower data.spool-limit"))
    else:
        report.add(Check("free space", OK, text))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


# ---- the whole run ----------------------------------------------------------------------------


def replica_targets(config: Config, env: Mapping[str, str]) -> list[Target]:
    """Every distinct replica location of a configuration: the default replica (its base
    path) and each database's own."""
    seen: set[str] = set()
    targets = []
    replicas = [config.replica] if config.replica is not None else []
    replicas += [db.replica for db in config.dbs if db.replica is not None]
    for replica in replicas:
        if replica.url in seen:
            continue
        seen.add(replica.url)
        targets.append(Target(replica, credentials_source(replica, config, env)
                              if replica.type == "s3" else None,
                              lease_in_bucket=_lease_in_bucket(config)))
    return targets


def _lease_in_bucket(config: Config) -> bool:
    lease_type: str = config.lease.type  # a wider type: the Literal grows with lease types
    return lease_type == "s3"


def run(config: Config | None, config_error: QuietError | None, replica_url: str | None,
        data_dir: Path, *, env: Mapping[str, str] = os.environ) -> Report:
    from .config import parse_replica_url
    from .replica_clients import client_for

    report = Report()
    if config_error is not None:
        report.add(Check("config", FAIL, config_error.message,
                         "correct the file (docs/config.md lists every key)"))
    targets: list[Target] = []
    if replica_url is not None:
        try:
            replica = parse_replica_url(replica_url)
        except QuietError as exc:
            report.add(Check("replica URL", FAIL, exc.message, "write s3://BUCKET/PATH?"
                             "endpoint=HOST, file:///DIR or /DIR"))
        else:
            targets.append(Target(replica, credentials_source(replica, None, env)
                                  if replica.type == "s3" else None, replica_url))
        if config is not None and config.source is not None:
            report.add(Check("config", OK, f"{config.source} (for data.dir and "
                             "data.spool-limit; the replica is the URL given)"))
    elif config is not None:
        targets = replica_targets(config, env)
        if config.source is None:
            report.add(Check("config", FAIL, "no configuration file found (./litefs.yml, "
                             "/etc/litefs.yml)", "give --config FILE or a REPLICA-URL"))
        elif not targets:
            report.add(Check("config", WARN, f"{config.source}: no replica configured; "
                             "databases are kept locally only", "add `replica: {url: ...}` "
                             "to have them backed up"))
        else:
            names = ", ".join(t.replica.url for t in targets)
            report.add(Check("config", OK, f"{config.source}: {len(targets)} replica "
                             f"location(s): {names}"))
    for target in targets:
        check_replica(report, target, lambda r: client_for(r, env), env)
    check_fuse(report)
    check_fusermount(report, env.get("PATH"))
    need = config.data.spool_limit if config is not None else Config().data.spool_limit
    check_free_space(report, data_dir, need)
    return report
