#!/usr/bin/env bash
# Set up litefs-py on this machine; safe to run again (it installs only what is missing).
#
#   bash scripts/setup.sh           what running litefs needs: a C compiler, FUSE 3 and its
#                                   headers, the Python headers and venv module, the sqlite3
#                                   shell; then a virtualenv in .venv with litefs-py (editable,
#                                   with its dev extra) and its two C modules compiled
#   bash scripts/setup.sh --test    also what the test suite needs (scripts/test.sh passes it):
#                                   iproute2, git, CPython's test package, etcd, podman + runc,
#                                   debootstrap, chromium (Debian's; the proxy's browser test)
#
# Debian 12 and Ubuntu 24.04 (anything with apt-get) get the system packages installed, with
# sudo when not run as root. Elsewhere nothing is installed: the script lists what is missing
# and how it is called on common distributions, and stops.
#
# PYTHON=/path/to/python3 chooses the interpreter that creates .venv (default: python3 on
# PATH, which may be Debian's /usr/bin/python3 or e.g. a pyenv build). An existing .venv is
# kept; its interpreter is the one whose packages (headers, test suite) are checked.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
tests=0
for arg in "$@"; do
    case $arg in
        --test|--tests) tests=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "setup: unknown argument $arg" >&2; usage >&2; exit 2 ;;
    esac
done
[ "${LITEFS_SETUP_TESTS:-0}" = 1 ] && tests=1
say() { echo "setup: $*" >&2; }
die() { say "$*"; exit 1; }

# ---- which Python: the venv's if there is a working one, else the one creating it -------------
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && .venv/bin/python -c '' 2>/dev/null; then
    PY_FOR_FACTS=.venv/bin/python
else
    command -v "$PY" >/dev/null || die "no $PY on PATH: install Python 3.11 or newer (Debian: apt-get install python3)"
    PY_FOR_FACTS=$PY
fi
# version; base prefix (/usr for a distribution's Python); has ensurepip; has Python.h;
# has CPython's test.test_sqlite3 (the mount tests run it)
read -r pyver pybase has_ensurepip has_headers has_testsuite < <("$PY_FOR_FACTS" - <<'PY'
import importlib.util, os, sys, sysconfig
def found(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False
inc = sysconfig.get_paths()["include"]
print("%d.%d" % sys.version_info[:2], sys.base_prefix, int(found("ensurepip")),
      int(os.path.exists(os.path.join(inc, "Python.h"))), int(found("test.test_sqlite3")))
PY
)
[ -n "${pyver:-}" ] || die "$PY_FOR_FACTS did not run; install Python 3.11 or newer"
case $pyver in 3.1[1-9]|3.[2-9][0-9]) ;; *) die "Python $pyver is too old: litefs-py needs 3.11 or newer (PYTHON=... to choose another)" ;; esac
system_python=0
[ "$pybase" = /usr ] && system_python=1

# ---- system packages ----------------------------------------------------------------------------
# Debian/Ubuntu package names. The venv and header packages are named after the exact Python
# version, so they match the interpreter even when several are installed.
want=(gcc libc6-dev pkg-config fuse3 libfuse3-dev sqlite3 ca-certificates)
if [ $system_python = 1 ]; then
    want+=("python$pyver-venv" "python$pyver-dev")
fi
if [ $tests = 1 ]; then
    # ip (network-namespace tests), git (the fresh-root test clones the repository), etcd
    # (lease tests), podman + runc (the image test; runc named so apt does not pick crun),
    # debootstrap and Debian's archive keys (the fresh-root and image tests build a Debian
    # root, also on Ubuntu), xz-utils (unpacking CPython's sources, below)
    want+=(iproute2 git etcd-server podman runc debootstrap debian-archive-keyring xz-utils)
    # chromium: headless, for the browser check of the example app through a replica's proxy
    # (tests/proxy/test_cluster.py). Debian's package; Ubuntu's `chromium-browser` is only a
    # stub that installs a snap, so there it is left to the user (the check below names it).
    if grep -qs '^ID=debian' /etc/os-release; then
        want+=(chromium)
    fi
    [ $system_python = 1 ] && [ "$has_testsuite" = 0 ] && want+=("libpython$pyver-testsuite")
fi

if command -v apt-get >/dev/null && command -v dpkg-query >/dev/null; then
    missing=()
    for pkg in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        SUDO=""
        if [ "$(id -u)" -ne 0 ]; then
            command -v sudo >/dev/null || die "need root to install ${missing[*]}: run as root, or install sudo"
            SUDO="sudo"
        fi
        say "installing with apt-get: ${missing[*]}"
        $SUDO apt-get update -qq
        # --no-install-recommends: the list is complete (podman's recommended extras, e.g.
        # rootless networking, are not used by the tests).
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    if [ $tests = 1 ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
        say "warning: no chromium (not installed on $(. /etc/os-release 2>/dev/null; echo "${ID:-this system}")); tests/proxy/test_cluster.py's browser check fails under CI until a chromium that runs without snap is on PATH"
    fi
else
    # Not Debian-like: check the commands and files, and say what to install by hand.
    problems=()
    command -v gcc >/dev/null || command -v cc >/dev/null || problems+=("a C compiler (gcc)")
    command -v pkg-config >/dev/null || command -v pkgconf >/dev/null || problems+=("pkg-config")
    pkg-config --exists fuse3 2>/dev/null || problems+=("the FUSE 3 headers (fuse3 .pc file)")
    command -v fusermount3 >/dev/null || problems+=("fusermount3 (FUSE 3)")
    command -v sqlite3 >/dev/null || problems+=("the sqlite3 shell")
    [ "$has_ensurepip" = 1 ] || problems+=("Python's venv/ensurepip for $pyver")
    [ "$has_headers" = 1 ] || problems+=("Python.h for $pyver")
    if [ $tests = 1 ]; then
        for tool in ip git etcd podman runc debootstrap chromium; do
            command -v "$tool" >/dev/null || problems+=("$tool")
        done
        [ "$has_testsuite" = 1 ] || problems+=("CPython's test package for $pyver (test.test_sqlite3)")
    fi
    if [ ${#problems[@]} -gt 0 ]; then
        cat >&2 <<EOF
setup: this is not a Debian/Ubuntu system, so nothing was installed. Missing:
$(printf '  - %s\n' "${problems[@]}")
Install them with your package manager, then run this again. Typical names:
  Fedora/RHEL: dnf install gcc pkgconf-pkg-config fuse3 fuse3-devel python3-devel sqlite
               (tests: iproute git etcd podman runc debootstrap python3-test chromium)
  Arch:        pacman -S gcc pkgconf fuse3 python sqlite
               (tests: iproute2 git etcd podman runc debootstrap chromium; Arch's python has the test package)
  Alpine:      apk add gcc musl-dev pkgconf fuse3 fuse3-dev python3-dev sqlite
               (tests: iproute2 git etcd podman runc debootstrap python3-tests chromium)
EOF
        exit 1
    fi
fi

# ---- checks apt cannot fix (a Python that is not the distribution's) -----------------------------
if [ $system_python = 0 ]; then
    [ "$has_ensurepip" = 1 ] || die "$PY_FOR_FACTS ($pybase) has no ensurepip, so it cannot make a venv; rebuild it with ensurepip, or use the system's: PYTHON=/usr/bin/python3 bash scripts/setup.sh"
    [ "$has_headers" = 1 ] || die "$PY_FOR_FACTS ($pybase) has no Python.h, so pyfuse3 cannot be built; use a full build of it, or the system's: PYTHON=/usr/bin/python3 bash scripts/setup.sh"
    if [ $tests = 1 ] && [ "$has_testsuite" = 0 ]; then
        say "warning: $PY_FOR_FACTS ($pybase) has no test package (test.test_sqlite3); tests/mount/test_cpython_sqlite3.py will fail under CI. Use a build with its test suite, or Debian's python3 with libpython$pyver-testsuite."
    fi
fi

# ---- the virtualenv ------------------------------------------------------------------------------
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c '' 2>/dev/null; then
    rm -rf .venv
    say "creating .venv with $("$PY" --version 2>&1) ($(command -v "$PY"))"
    "$PY" -m venv .venv
fi
# Reinstall only when the install inputs changed since the last successful install
# (setup.py and the C sources it builds, which must never go stale).
stamp=.venv/.litefs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
        || [ litefs_py/ltx/_frames.c -nt "$stamp" ] || [ litefs_py/sqlite/_walsum.c -nt "$stamp" ]; then
    say "installing litefs-py and its dependencies into .venv (a few minutes the first time)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
fi

# ---- CPython's own sqlite3 tests, for tests/mount/test_cpython_sqlite3.py -------------------------
# pyenv and python.org builds ship them (test.test_sqlite3). Debian's python3 does not, not even
# in libpython3.X-testsuite; the tests of the exact interpreter version are in the upstream
# tarball of Debian's source package, fetched with apt (deb-src entries made from this
# machine's apt sources) and unpacked into .venv/cpython-tests, where the test's runner finds
# them (as .venv/cpython-tests/test/test_sqlite3).
fetch_cpython_sqlite3_tests() {
    local dest=.venv/cpython-tests/test version tmp list
    [ -f "$dest/test_sqlite3/__init__.py" ] && return 0
    version=$(.venv/bin/python -c 'import platform; print(platform.python_version())')
    tmp=$(mktemp -d)
    list="$tmp/sources.list"
    # deb-src lines for the release suites this machine uses (not -security/-updates, whose
    # source pools mirrors often lack; the upstream tarball is the same).
    .venv/bin/python - "$list" <<'PYSRC'
import glob, re, sys
out = []
def add(uri, suite, comps):
    if not re.search(r"-(security|updates|backports|proposed)$", suite) and "/" not in suite:
        out.append(f"deb-src {uri} {suite} {' '.join(comps)}")
for f in glob.glob("/etc/apt/sources.list.d/*.sources"):
    for stanza in re.split(r"\n\s*\n", open(f).read()):
        fields = {}
        for line in stanza.splitlines():
            if ":" in line and not line.lstrip().startswith("#"):
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.split()
        if "deb" in fields.get("types", []):
            for uri in fields.get("uris", []):
                for suite in fields.get("suites", []):
                    add(uri, suite, fields.get("components", ["main"]))
for f in ["/etc/apt/sources.list", *glob.glob("/etc/apt/sources.list.d/*.list")]:
    try:
        lines = open(f).read().splitlines()
    except OSError:
        continue
    for line in lines:
        parts = re.sub(r"\[[^]]*\]", "", line).split()
        if len(parts) >= 4 and parts[0] == "deb":
            add(parts[1], parts[2], parts[3:])
open(sys.argv[1], "w").write("\n".join(dict.fromkeys(out)) + "\n")
PYSRC
    local apt_opts=(-o "Dir::Etc::SourceList=$list" -o Dir::Etc::SourceParts=/dev/null
                    -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache")
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/src"
    say "fetching CPython $version's sqlite3 tests (Debian's python3 does not ship them)"
    if apt-get "${apt_opts[@]}" update -qq >/dev/null 2>&1; then
        (cd "$tmp/src" && apt-get "${apt_opts[@]}" source --download-only -qq "python$pyver" \
            >/dev/null 2>&1) || true
    fi
    local tarball
    tarball=$(ls "$tmp"/src/python"$pyver"_*.orig.tar.* 2>/dev/null | head -n 1 || true)
    if [ -n "$tarball" ] && tar -C "$tmp" -xf "$tarball" --wildcards "*/Lib/test/test_sqlite3/*" \
            && [ -f "$(echo "$tmp"/*/Lib/test/test_sqlite3/__init__.py)" ]; then
        local top; top=$(dirname "$(echo "$tmp"/*/Lib/test/test_sqlite3/__init__.py)")
        case $tarball in
            *"_$version."orig*) ;;
            *) say "warning: the tests come from $(basename "$tarball"), the interpreter is $version" ;;
        esac
        mkdir -p "$dest"
        rm -rf "$dest/test_sqlite3"
        cp -r "$top" "$dest/test_sqlite3"
    else
        say "warning: could not fetch CPython's sqlite3 tests (apt-get source python$pyver); tests/mount/test_cpython_sqlite3.py will fail under CI"
    fi
    rm -rf "$tmp"
}
if [ $tests = 1 ] && [ $system_python = 1 ] && command -v apt-get >/dev/null \
        && ! .venv/bin/python -c 'import test.test_sqlite3' 2>/dev/null; then
    fetch_cpython_sqlite3_tests
fi
.venv/bin/litefs version >&2
