"""The container image: built from the Dockerfile with podman, then a real mount and a real
SQLite app inside it.

The Dockerfile's default base (the official Python image) cannot be pulled here, so the test
builds with `--build-arg BASE=` a local image made from the same debootstrap root as the
fresh-root test (Debian 12 + python3; tests/deploy/rootfs.py), with this network's apt, CA
and pip settings baked in. Checked:

- the runtime image says "compiled" for both C modules and has no compiler;
- the entrypoint refuses to start without /etc/litefs.yml (exit 3, saying what to mount);
- `litefs mount` with /etc/litefs.yml runs a SQLite app on /litefs/store.db, with a directory
  replica on a volume; `podman stop` (SIGTERM) ends the app, and the container exits 143;
- a new container with an empty data directory restores the database from that replica before
  the app starts, and the app's own exit status (7) is the container's.
- docs/deploy.md's `COPY --from=... /opt/litefs /opt/litefs` recipe: an app image on the same
  base, with only Debian's fuse3 added, mounts and passes its app's exit status on.

podman needs runc and a containers.conf (written by the test: runc, cgroupfs, file events,
bounded ulimits); its storage is kept under the rootfs cache directory so later runs reuse the
base image and the build's apt layer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy import rootfs

PODMAN_HOME = rootfs.CACHE / "podman"
IMAGE = "localhost/litefs-py-test/litefs:test"
BASE_IMAGE = "localhost/litefs-py-test/debian-python3"
IMPORT_REV = 2  # part of the base image's tag: bump when the import below changes
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

APP = """\
import signal, sqlite3, sys
db = sqlite3.connect("/litefs/store.db", isolation_level=None)
if sys.argv[1] == "write":
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(100):
        db.execute("INSERT INTO t(v) VALUES (?)", (f"row {i}",))
    print("app: wrote", db.execute("SELECT count(*) FROM t").fetchone()[0], flush=True)
    signal.pause()  # until `podman stop`: SIGTERM's default action ends the app
else:
    n = db.execute("SELECT count(*) FROM t").fetchone()[0]
    ok = db.execute("PRAGMA integrity_check").fetchone()[0]
    print("app: found", n, ok, flush=True)
    sys.exit(7)
"""

CONFIG = """\
fuse: {dir: /litefs}
data: {dir: /data/litefs}
replica: {type: file, path: /data/replica}
"""


class Podman:
    def __init__(self, conf: Path) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.base = ["podman", "--root", str(PODMAN_HOME / "storage"),
                     "--runroot", "/run/litefs-py-podman", "--storage-driver", "overlay"]

    def __call__(self, *args: str, timeout: float = 120,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.base, *args], capture_output=True, text=True,
                              errors="replace", env=self.env, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            pytest.fail(f"podman {' '.join(args)} exited {proc.returncode}:\n"
                        f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
        return proc


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    rootfs.require_host(extra_tools={"podman": "podman", "runc": "runc", "tar": "tar"})
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    PODMAN_HOME.mkdir(parents=True, exist_ok=True)
    return Podman(conf)


@pytest.fixture(scope="module")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("image")
    t0 = time.monotonic()
    base = rootfs.base_root(work / "debootstrap.log")
    # One local base image per base root (the tag is the root's build time).
    tag = f"{BASE_IMAGE}:{base.built.replace(':', '').replace('-', '').lower()}-{IMPORT_REV}"
    if podman("image", "exists", tag, check=False).returncode != 0:
        root = rootfs.image_root(base, work / "root")
        with subprocess.Popen(["tar", "-C", str(root), "-c", "."],
                              stdout=subprocess.PIPE) as tar:
            # An image from a tar file has no configuration: give it what a distribution's
            # base image has.
            proc = subprocess.run([*podman.base, "import",
                                   "--change", f"ENV PATH={rootfs.STD_PATH}",
                                   "--change", 'CMD ["/bin/bash"]', "-", tag], stdin=tar.stdout,
                                  capture_output=True, text=True, env=podman.env,
                                  timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr
        shutil.rmtree(root)
    t1 = time.monotonic()
    podman("build", "--pull=never", "--network", "host", "--build-arg", f"BASE={tag}",
           "--label", f"base={tag}",
           # pip in the build reaches PyPI through this network's TLS interception
           *(["-v", f"{HOST_CA}:{HOST_CA}:ro"] if Path(HOST_CA).is_file() else []),
           "-t", IMAGE, "-f", str(rootfs.REPO / "Dockerfile"), str(rootfs.REPO), timeout=1200)
    print(f"image: base image {t1 - t0:.0f} s (debootstrap {base.seconds:.0f} s), "
          f"podman build {time.monotonic() - t1:.0f} s")
    yield IMAGE
    # Earlier builds' images, now untagged, would pile up in the cache run after run.
    podman("image", "prune", "-f", check=False)


@pytest.fixture
def container_names(podman: Podman) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_runtime_image_is_compiled_and_has_no_compiler(podman: Podman, image: str) -> None:
    out = podman("run", "--rm", "--network", "none", "--entrypoint", "litefs", image,
                 "version").stdout
    assert "ltx codec: compiled" in out and "wal checksum: compiled" in out, out
    probe = podman("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                   "for c in gcc cc litefs fusermount3; do command -v $c; done; true")
    # no compiler; litefs from the venv; fusermount3 from Debian's fuse3 (/bin or /usr/bin)
    found = probe.stdout.split()
    assert len(found) == 2 and found[0] == "/opt/litefs/bin/litefs", probe
    assert found[1].endswith("/bin/fusermount3"), probe


def test_entrypoint_without_config_says_what_to_mount(podman: Podman, image: str) -> None:
    proc = podman("run", "--rm", "--network", "none", image, "true", check=False)
    assert proc.returncode == 3, proc
    assert "no config at /etc/litefs.yml" in proc.stderr, proc.stderr


def _wait_for_log(podman: Podman, name: str, text: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    logs = ""
    while time.monotonic() < deadline:
        p = podman("logs", name, check=False)
        logs = p.stdout + p.stderr
        if text in logs:
            return logs
        state = podman("inspect", "--format", "{{.State.Status}}", name, check=False)
        if state.stdout.strip() == "exited":
            break
        time.sleep(0.5)
    pytest.fail(f"{name}: {text!r} not seen in the container's output:\n{logs[-6000:]}")


def test_mount_app_sigterm_and_cold_start_restore(podman: Podman, image: str, tmp_path: Path,
                                                  container_names: list[str]) -> None:
    (tmp_path / "litefs.yml").write_text(CONFIG)
    (tmp_path / "app.py").write_text(APP)
    data = tmp_path / "data"
    data.mkdir()
    volumes = ["-v", f"{tmp_path / 'litefs.yml'}:/etc/litefs.yml:ro",
               "-v", f"{tmp_path / 'app.py'}:/app.py:ro", "-v", f"{data}:/data"]
    fuse = ["--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "--network", "none"]

    # 1. A SQLite app under the mount; `podman stop` sends SIGTERM.
    first = f"litefs-py-test-{uuid.uuid4().hex[:8]}"
    container_names.append(first)
    podman("run", "-d", "--name", first, *fuse, *volumes, image, "python3", "/app.py", "write")
    _wait_for_log(podman, first, "app: wrote 100")
    podman("stop", "-t", "60", first, timeout=120)
    status = podman("inspect", "--format", "{{.State.ExitCode}}", first).stdout.strip()
    logs = podman("logs", first).stderr
    assert status == "143", f"exit status {status} after SIGTERM (expected 143):\n{logs[-4000:]}"
    assert "Traceback" not in logs, logs[-6000:]
    replica = sorted(p.name for p in (data / "replica").rglob("*.ltx"))
    assert replica, f"nothing reached the replica:\n{logs[-4000:]}"

    # 2. A new container with no local data: the mount restores before the app starts.
    shutil.rmtree(data / "litefs")
    second = f"litefs-py-test-{uuid.uuid4().hex[:8]}"
    container_names.append(second)
    proc = podman("run", "--name", second, *fuse, *volumes, image, "python3", "/app.py", "check",
                  check=False, timeout=180)
    assert "app: found 100 ok" in proc.stdout, proc.stdout + proc.stderr[-4000:]
    assert proc.returncode == 7, f"the app's exit status is not passed on:\n{proc.stderr[-4000:]}"


APP_IMAGE_FILE = """\
ARG BASE
ARG LITEFS
FROM ${LITEFS} AS litefs

FROM ${BASE}
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fuse3 \\
 && rm -rf /var/lib/apt/lists/*
COPY --from=litefs /opt/litefs /opt/litefs
COPY --from=litefs /usr/local/bin/litefs-entrypoint /usr/local/bin/litefs-entrypoint
ENV PATH=/opt/litefs/bin:$PATH
ENTRYPOINT ["litefs-entrypoint"]
"""


def test_copy_from_into_an_app_image(podman: Podman, image: str, tmp_path: Path,
                                     container_names: list[str]) -> None:
    """docs/deploy.md's recipe: an app image on the same base takes /opt/litefs as it is."""
    context = tmp_path / "app-image"
    context.mkdir()
    (context / "Containerfile").write_text(APP_IMAGE_FILE)
    base_tag = podman("image", "inspect", "--format", "{{.Labels.base}}", image).stdout.strip()
    app = "localhost/litefs-py-test/app:test"
    podman("build", "--pull=never", "--network", "host", "--build-arg", f"BASE={base_tag}",
           "--build-arg", f"LITEFS={image}", "-t", app, str(context), timeout=600)
    out = podman("run", "--rm", "--network", "none", "--entrypoint", "litefs", app,
                 "version").stdout
    assert out.count(": compiled") == 2, out
    (tmp_path / "litefs.yml").write_text(CONFIG)
    data = tmp_path / "data"
    data.mkdir()
    name = f"litefs-py-test-{uuid.uuid4().hex[:8]}"
    container_names.append(name)
    proc = podman("run", "--name", name, "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN",
                  "--network", "none", "-v", f"{tmp_path / 'litefs.yml'}:/etc/litefs.yml:ro",
                  "-v", f"{data}:/data", app, "python3", "-c",
                  "import sqlite3; db = sqlite3.connect('/litefs/app.db'); "
                  "db.execute('CREATE TABLE t(x)'); db.commit(); raise SystemExit(5)",
                  check=False, timeout=180)
    assert proc.returncode == 5, proc.stdout + proc.stderr[-4000:]
    assert (data / "litefs/dbs/app.db/ltx").is_dir(), proc.stderr[-4000:]
