"""A minimal Debian root made with debootstrap, cached between runs, and a way to run a
command in a throw-away copy of it: what a new user's fresh machine looks like.

The base is `debootstrap --variant=minbase --include=python3,ca-certificates bookworm`:
Python and nothing else (no venv module, no compiler, no FUSE, no git, no sudo). It is built
once into `$LITEFS_ROOTFS_CACHE` (default /var/tmp/litefs-py-rootfs, about 180 MB, ~4 min)
and reused by later runs; `LITEFS_ROOTFS_REBUILD=1` rebuilds it.

`run_in_fresh_root` mounts an overlay of the base (so the base stays clean), puts a clone of
this repository at /root/project, and runs one command there with chroot, in its own mount
and PID namespaces: every mount (FUSE included) and every process the command leaves behind
goes away with them. /proc, /sys (read-only), /dev (with /dev/fuse) and /dev/pts are bound in.

Only network plumbing is copied from the host, because this network needs it: DNS, the apt
sources and the apt settings about proxies, TLS and Release validity, locally added CA
certificates, pip's settings that reach a registry (index, certificate, proxy, timeout; local
paths a fresh machine would not have are dropped) and the matching environment variables.
Downloaded .deb files and pip's HTTP cache are kept under the cache directory between runs
(`LITEFS_ROOTFS_NO_DOWNLOAD_CACHE=1` turns that off): every package is still installed and
every wheel built anew, only the bytes are not fetched again.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.needs import SETUP_HINT, missing

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("LITEFS_ROOTFS_CACHE", "/var/tmp/litefs-py-rootfs"))
SUITE = "bookworm"
INCLUDE = "python3,ca-certificates"
# The base must not have these: the project's set-up has to install them.
NOT_IN_BASE = ("python3-venv", "python3-pip", "gcc", "git", "sudo", "fuse3", "libfuse3-3")
STD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_PIP_KEYS = {"index-url", "extra-index-url", "trusted-host", "cert", "client-cert", "proxy",
             "timeout", "default-timeout", "retries"}
_ENV_KEYS = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
             "NO_PROXY", "ALL_PROXY", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST",
             "PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_DEFAULT_TIMEOUT", "PIP_TIMEOUT",
             "PIP_RETRIES", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
             "CURL_CA_BUNDLE")
_APT_CONF = re.compile(r"proxy|Check-Valid-Until|Check-Date|CaInfo|CaPath|Verify-Peer|"
                       r"Verify-Host", re.IGNORECASE)


class RootfsError(Exception):
    """The harness itself failed (not the command under test)."""


@dataclass(frozen=True)
class Base:
    root: Path
    built: str  # when, UTC
    seconds: float  # how long the build took (0 when the cached root was used)


@dataclass(frozen=True)
class RunResult:
    returncode: int
    output: str
    seconds: float


def require_host(*, extra_tools: dict[str, str] | None = None) -> None:
    """End the test (skip, or fail under CI=true; tests/needs.py) unless this host can build
    and use the root: root, the commands (tool -> Debian package), /dev/fuse."""
    if os.geteuid() != 0:
        missing("root (debootstrap, mounts and chroot need it)", "run the tests as root")
    need = {"debootstrap": "debootstrap", "unshare": "util-linux", "chroot": "coreutils",
            "git": "git", "mount": "mount", **(extra_tools or {})}
    lacking = sorted({pkg for tool, pkg in need.items() if shutil.which(tool) is None})
    if lacking:
        missing(f"commands from {', '.join(lacking)}",
                f"apt-get install {' '.join(lacking)} ({SETUP_HINT})")
    if not Path("/dev/fuse").exists():
        missing("/dev/fuse", "load the fuse module (modprobe fuse) or run on a host with FUSE")


def host_mirror() -> str:
    """The Debian archive this host's apt uses (reachable here), else Debian's default."""
    uris: list[str] = []
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in f.read_text(errors="replace").splitlines():
            if line.strip().lower().startswith("uris:"):
                uris += line.split(":", 1)[1].split()
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob(
            "*.list"))]:
        if f.is_file():
            for line in f.read_text(errors="replace").splitlines():
                fields = re.sub(r"\[[^]]*\]", "", line).split()
                if len(fields) >= 2 and fields[0] == "deb":
                    uris.append(fields[1])
    for uri in uris:
        if uri.rstrip("/").endswith("/debian"):
            return uri
    return "http://deb.debian.org/debian"


@contextlib.contextmanager
def _locked(path: Path, shared: bool) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def base_root(log: Path) -> Base:
    """The cached base root, built first if needed (concurrent callers wait for one build)."""
    home = CACHE / f"{SUITE}-minbase"
    root, done = home / "root", home / ".complete"
    rebuild = os.environ.get("LITEFS_ROOTFS_REBUILD") == "1"
    if done.is_file() and not rebuild:
        return Base(root, done.read_text().strip(), 0.0)
    with _locked(CACHE / ".lock", shared=False):
        if done.is_file() and not rebuild:
            return Base(root, done.read_text().strip(), 0.0)
        t0 = time.monotonic()
        tmp = home / "root.tmp"
        for old in (tmp, root):
            if old.exists():
                _check_nothing_mounted(old)
                shutil.rmtree(old)
        done.unlink(missing_ok=True)
        home.mkdir(parents=True, exist_ok=True)
        mirror = host_mirror()
        # Its own mount namespace: whatever debootstrap mounts in the target vanishes with it.
        cmd = ["unshare", "--mount", "--propagation", "private", "--",
               "debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, str(tmp),
               mirror]
        with log.open("ab") as out:
            out.write(f"$ {' '.join(cmd)}\n".encode())
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=1200, check=False)
        if proc.returncode != 0:
            raise RootfsError(f"debootstrap failed (exit {proc.returncode}); see {log}")
        # A just-installed machine: no trace of this host, no downloaded package lists.
        (tmp / "etc/resolv.conf").unlink(missing_ok=True)
        (tmp / "etc/hostname").write_text("fresh\n")
        (tmp / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\t\tlocalhost\n")
        for d in ("var/cache/apt", "var/lib/apt/lists"):
            for p in (tmp / d).rglob("*"):
                if p.is_file():
                    p.unlink()
        packages = subprocess.run(["chroot", str(tmp), "dpkg-query", "-W", "-f",
                                   "${Package}\n"], capture_output=True, text=True,
                                  check=True, timeout=60).stdout.split()
        extra = sorted(set(NOT_IN_BASE) & set(packages))
        if extra:
            raise RootfsError(f"the base root is not minimal: it has {extra}")
        tmp.rename(root)
        built = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        done.write_text(built + "\n")
        return Base(root, built, time.monotonic() - t0)


def _check_nothing_mounted(path: Path) -> None:
    prefix = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == prefix or mp.startswith(prefix + "/"):
                raise RootfsError(f"{mp} is mounted under {path}; not deleting it")


def _exists_in(root: Path, token: str) -> bool:
    path = token.removeprefix("file://") if token.startswith(("file://", "/")) else None
    return path is None or (root / path.lstrip("/")).exists()


def _keep_tokens(root: Path, value: str) -> str:
    """The space-separated tokens of `value` a fresh machine can use (local paths must exist
    in the root: the host's /opt/wheels or file:// indexes are not there)."""
    return " ".join(t for t in value.split() if _exists_in(root, t))


def clone_repo(dest: Path) -> str:
    """A clean clone of this repository at `dest`, with uncommitted changes to tracked files
    carried over (untracked files are not: a fresh clone would not have them). Returns HEAD."""
    git = ["git", "-c", "safe.directory=*"]
    subprocess.run([*git, "clone", "-q", "--no-hardlinks", str(REPO), str(dest)], check=True,
                   capture_output=True, timeout=300)
    head = subprocess.run([*git, "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip()
    subprocess.run([*git, "-C", str(dest), "checkout", "-q", "--detach", head], check=True,
                   capture_output=True, timeout=60)
    listed = subprocess.run([*git, "-C", str(REPO), "ls-files", "-z", "--cached"],
                            capture_output=True, check=True, timeout=60).stdout
    for raw in filter(None, listed.split(b"\0")):
        rel = os.fsdecode(raw)
        src, dst = REPO / rel, dest / rel
        if src.is_symlink() or not src.exists():
            dst.unlink(missing_ok=True)
            if src.is_symlink():
                dst.symlink_to(os.readlink(src))
            continue
        if src.is_file() and (not dst.is_file() or src.read_bytes() != dst.read_bytes()):
            shutil.copy2(src, dst)
    return head


def _plumb_network(base: Path, upper: Path, *, resolv: bool = True) -> list[str]:
    """Write the host's network settings into `upper` (an overlay's upper layer, or a copy of
    the base); returns what was done, one note each."""
    notes = []

    def put(rel: str, data: bytes) -> None:
        p = upper / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    if resolv:
        with contextlib.suppress(OSError):
            put("/etc/resolv.conf", Path("/etc/resolv.conf").read_bytes())
    copied_deb822 = False
    for f in [Path("/etc/apt/sources.list"),
              *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
              *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if not any(line.strip() and not line.lstrip().startswith("#")
                   for line in text.splitlines()):
            continue
        keyrings = re.findall(r"signed-by\s*[:=]\s*([^\]\s]+)", text, re.IGNORECASE)
        if any(k.startswith("/") and not (base / k.lstrip("/")).exists() for k in keyrings):
            notes.append(f"apt: not copying {f} (its keyring is not in a fresh root)")
            continue
        put(str(f), text.encode())
        copied_deb822 |= f.suffix == ".sources"
        notes.append(f"apt: copied {f}")
    if copied_deb822 and not Path("/etc/apt/sources.list").is_file():
        # debootstrap's one-line sources.list would repeat the host's deb822 entries
        put("/etc/apt/sources.list", b"# see sources.list.d\n")
    conf_d = Path("/etc/apt/apt.conf.d")
    for f in [Path("/etc/apt/apt.conf"), *(sorted(conf_d.iterdir()) if conf_d.is_dir() else [])]:
        if f.is_file():
            lines = [ln for ln in f.read_text(errors="replace").splitlines()
                     if not ln.lstrip().startswith(("#", "//"))]
            if any(_APT_CONF.search(ln) for ln in lines):
                put(str(f), f.read_bytes())
                notes.append(f"apt: copied {f}")
    local_ca = Path("/usr/local/share/ca-certificates")
    if local_ca.is_dir():
        for crt in sorted(local_ca.rglob("*.crt")):
            put(str(crt), crt.read_bytes())
            notes.append(f"CA: copied {crt}")
    # pip: only what reaches a registry
    pip_files = [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf"),
                 Path.home() / ".pip/pip.conf", Path.home() / ".config/pip/pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        pip_files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    kept: dict[str, dict[str, str]] = {}
    for f in pip_files:
        if not f.is_file():
            continue
        cp = configparser.RawConfigParser(strict=False)
        with contextlib.suppress(configparser.Error):
            cp.read(f)
        for section in cp.sections():
            for key, value in cp.items(section):
                k = key.replace("_", "-")
                good = _keep_tokens(base, value) if k in _PIP_KEYS else ""
                if good:
                    kept.setdefault(section, {})[k] = good
    if kept:
        put("/etc/pip.conf", "".join(
            f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items())
            for s, kv in kept.items()).encode())
        notes.append(f"pip: /etc/pip.conf {kept}")
    return notes


def _env(base: Path) -> dict[str, str]:
    env = {"HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash",
           "PATH": STD_PATH, "TERM": "dumb", "LANG": "C.UTF-8",
           "DEBIAN_FRONTEND": "noninteractive"}
    for key in _ENV_KEYS:
        value = os.environ.get(key)
        if value:
            good = _keep_tokens(base, value)
            if good:
                env[key] = good
    return env


# Runs as PID 1 of new mount + PID namespaces (unshare --kill-child): the overlay, the bind
# mounts and everything started inside vanish when it exits.
_INNER = r"""
set -eu
mount -t overlay litefs-fresh -o "lowerdir=$F_BASE,upperdir=$F_UPPER,workdir=$F_WORK" "$F_ROOT"
mount -t proc proc "$F_ROOT/proc"
mount --bind -o ro /sys "$F_ROOT/sys" 2>/dev/null || mount --rbind /sys "$F_ROOT/sys"
mount --bind /dev "$F_ROOT/dev"
mount --bind /dev/pts "$F_ROOT/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$F_ROOT/dev/shm"
if [ -n "$F_APT_CACHE" ]; then
    mkdir -p "$F_ROOT/var/cache/apt/archives"
    mount --bind "$F_APT_CACHE" "$F_ROOT/var/cache/apt/archives"
    for d in http http-v2; do
        mkdir -p "$F_PIP_CACHE/$d" "$F_ROOT/root/.cache/pip/$d"
        mount --bind "$F_PIP_CACHE/$d" "$F_ROOT/root/.cache/pip/$d"
    done
fi
if [ "$F_LOCAL_CA" = 1 ]; then
    chroot "$F_ROOT" /usr/sbin/update-ca-certificates >/dev/null
fi
set +e
env -i "$@" timeout -k 30 "$F_TIMEOUT" chroot "$F_ROOT" /bin/bash -lc "$F_CMD" </dev/null
rc=$?
# Leave no process behind before the namespace's mounts go (--kill-child does the rest).
kill -9 -1 2>/dev/null
exit $rc
"""


def run_in_fresh_root(base: Base, work: Path, command: str, *, timeout: int,
                      log: Path) -> RunResult:
    """Run `cd /root/project && COMMAND` in an overlay of `base` (upper layer under `work`).
    Output goes to `log` as it comes and is returned."""
    upper, ovl_work, root = work / "upper", work / "work", work / "root"
    for d in (upper, ovl_work, root):
        d.mkdir(parents=True)
    head = clone_repo(upper / "root/project")
    notes = _plumb_network(base.root, upper)
    local_ca = any(n.startswith("CA:") for n in notes)
    use_cache = os.environ.get("LITEFS_ROOTFS_NO_DOWNLOAD_CACHE") != "1"
    apt_cache, pip_cache = CACHE / "downloads/apt", CACHE / "downloads/pip"
    if use_cache:
        (apt_cache / "partial").mkdir(parents=True, exist_ok=True)
        pip_cache.mkdir(parents=True, exist_ok=True)
    env = _env(base.root)
    inner_env = {**{k: v for k, v in os.environ.items() if k == "PATH"},
                 "F_BASE": str(base.root), "F_UPPER": str(upper), "F_WORK": str(ovl_work),
                 "F_ROOT": str(root), "F_CMD": f"cd /root/project && {command}",
                 "F_TIMEOUT": str(timeout), "F_LOCAL_CA": "1" if local_ca else "0",
                 "F_APT_CACHE": str(apt_cache) if use_cache else "",
                 "F_PIP_CACHE": str(pip_cache)}
    cmd = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
           "--kill-child", "--", "bash", "-c", _INNER, "inner",
           *(f"{k}={v}" for k, v in env.items())]
    t0 = time.monotonic()
    with log.open("ab") as out:
        out.write(f"== fresh root: base built {base.built}; project = clone of {REPO} @ "
                  f"{head[:12]}\n".encode())
        out.write("".join(f"== {n}\n" for n in notes).encode())
        out.write(f"== env: {sorted(env)}\n== running: {inner_env['F_CMD']}\n".encode())
        out.flush()
        proc = subprocess.run(cmd, env=inner_env, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout + 120, check=False)
    seconds = time.monotonic() - t0
    text = log.read_text(errors="replace")
    return RunResult(proc.returncode, text, seconds)


def image_root(base: Base, dest: Path) -> Path:
    """A copy of the base root at `dest` with this network's apt, CA and pip settings (what a
    base image on this network needs to install packages); for `podman import`."""
    subprocess.run(["cp", "-a", f"{base.root}/.", str(dest)], check=True, timeout=600)
    notes = _plumb_network(base.root, dest, resolv=False)
    if any(n.startswith("CA:") for n in notes):
        subprocess.run(["chroot", str(dest), "/usr/sbin/update-ca-certificates"],
                       capture_output=True, check=True, timeout=120)
    return dest
