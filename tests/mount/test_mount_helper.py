"""mount/mount.litefs, called as mount(8) calls an external helper:
`mount.litefs SPEC DIR [-sfnv] [-o OPTIONS]`. Its -o options (config=, data-dir=,
allow_other, log=) reach `litefs mount`; generic fstab options are accepted; mistakes get
mount(8)'s exit codes (1 usage, 32 mount failure) and a message."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from litefs_py.store.ltx_log import read_log
from tests.mount.harness import force_unmount, is_mounted
from tests.s3_server import free_port

HELPER = Path(__file__).resolve().parents[2] / "mount" / "mount.litefs"


def helper(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               LITEFS_LOG=str(tmp / "default.log"))
    return subprocess.run(["sh", str(HELPER), *args], capture_output=True, text=True,
                          timeout=90, env=env)


def mount_options(path: Path) -> list[str]:
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == str(path):
                return fields[3].split(",")
    return []


def litefs_pid(mount_dir: Path) -> int:
    """The background `litefs mount` the helper started for `mount_dir`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mount" in argv and str(mount_dir).encode() in argv and any(
                a.endswith(b"litefs") for a in argv[:2]):
            return int(entry)
    raise AssertionError(f"no litefs process for {mount_dir}")


def unmount_and_wait(mount_dir: Path) -> None:
    """What `umount DIR` does to a FUSE mount; litefs then finishes and exits by itself."""
    pid = litefs_pid(mount_dir)
    subprocess.run(["fusermount3", "-u", str(mount_dir)], check=True, timeout=30)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists():
        status = Path(f"/proc/{pid}/stat").read_text().split()[2] \
            if Path(f"/proc/{pid}/stat").exists() else "X"
        if status == "Z":
            break  # exited; its parent (gone) leaves reaping to init
        assert time.monotonic() < deadline, "litefs did not exit after the unmount"
        time.sleep(0.1)


def test_fstab_options_reach_litefs(tmp_path: Path) -> None:
    mnt, data, log = tmp_path / "mnt", tmp_path / "data-from-o", tmp_path / "litefs.log"
    config = tmp_path / "litefs.yml"
    # The file names other directories: -o data-dir= must win over data.dir.
    config.write_text(f"fuse: {{dir: {str(tmp_path / 'elsewhere')!r}}}\n"
                      f"data: {{dir: {str(tmp_path / 'data-from-file')!r}}}\n"
                      f"http: {{addr: '127.0.0.1:{free_port()}'}}\n")
    mnt.mkdir()
    try:
        # As mount(8) runs the helper for:
        #   litefs  DIR  litefs  config=FILE,data-dir=DIR,allow_other,log=FILE,_netdev  0 0
        r = helper("litefs", str(mnt), "-o",
                   f"rw,config={config},data-dir={data},allow_other,log={log},_netdev",
                   tmp=tmp_path)
        assert r.returncode == 0, (r.stderr, log.read_text() if log.exists() else "")
        assert is_mounted(mnt)
        assert "allow_other" in mount_options(mnt)
        con = sqlite3.connect(mnt / "app.db")
        con.execute("CREATE TABLE t(x)")
        con.commit()
        con.close()  # an open file keeps the mount busy
        assert read_log(data / "dbs" / "app.db" / "ltx")
        assert not (tmp_path / "data-from-file").exists()
        assert f"mounted {mnt}" in log.read_text()
        unmount_and_wait(mnt)
        assert "unmounted" in log.read_text()
    finally:
        force_unmount(mnt)


def test_spec_is_the_config_file(tmp_path: Path) -> None:
    mnt, data = tmp_path / "mnt", tmp_path / "data"
    config = tmp_path / "litefs.yml"
    config.write_text(f"data: {{dir: {str(data)!r}}}\n"
                      f"http: {{addr: '127.0.0.1:{free_port()}'}}\n")
    mnt.mkdir()
    try:
        # /etc/fstab: FILE  DIR  litefs  defaults,_netdev  0 0 (output to $LITEFS_LOG)
        r = helper(str(config), str(mnt), "-o", "defaults,_netdev,noatime", tmp=tmp_path)
        assert r.returncode == 0, r.stderr
        assert is_mounted(mnt) and "allow_other" not in mount_options(mnt)
        assert (data / "dbs").is_dir()
        assert "mounted" in (tmp_path / "default.log").read_text()
        unmount_and_wait(mnt)
    finally:
        force_unmount(mnt)


def test_mistakes_get_mount_exit_codes(tmp_path: Path) -> None:
    config = tmp_path / "litefs.yml"
    config.write_text("data: {dir: /nonexistent}\n")
    mnt = str(tmp_path / "mnt")

    r = helper(str(config), mnt, "-o", "frobnicate", tmp=tmp_path)
    assert r.returncode == 1 and "unknown option frobnicate" in r.stderr
    # -s (sloppy) ignores it; -f (fake) stops before mounting; -v shows the command.
    r = helper(str(config), mnt, "-sfv", "-o", f"frobnicate,allow_other,data-dir={tmp_path}",
               tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ignoring unknown option frobnicate" in r.stderr
    assert (f"litefs mount --mount-dir {mnt} --config {config} --data-dir {tmp_path} "
            "--allow-other") in r.stderr
    assert not is_mounted(Path(mnt))
    r = helper(str(config), mnt, "-o", "ro", tmp=tmp_path)
    assert r.returncode == 32 and "lease.candidate: false" in r.stderr
    r = helper(str(tmp_path / "missing.yml"), mnt, tmp=tmp_path)
    assert r.returncode == 32 and "missing.yml not found" in r.stderr
    r = helper(str(config), tmp=tmp_path)
    assert r.returncode == 1 and "needs SPEC and DIR" in r.stderr
    # litefs itself refuses (the mount directory is not empty): 32 and where to look.
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    r = helper(str(config), str(tmp_path / "full"), "-o", f"data-dir={tmp_path / 'd'}",
               tmp=tmp_path)
    assert r.returncode == 32 and "litefs exited; see" in r.stderr
    assert "not empty" in r.stderr
