"""The README's set-up-and-demo command works on a fresh Debian 12 that has only Python.

A minimal Debian root (debootstrap minbase + python3 + ca-certificates: no venv module, no
compiler, no FUSE, no git) is built once and cached (tests/deploy/rootfs.py); each run takes
a throw-away overlay of it, clones this repository into /root/project, and runs the first
command of the README's "Two commands" section there, as root, with /dev/fuse bound in. It
must exit 0 having installed everything it needed itself.

Cost: about 4 minutes to build the base the first time (cached under /var/tmp afterwards),
then a few minutes per run for apt, pip (pyfuse3 and the C modules are compiled each time)
and the demo. The full output of the run is in the test's temporary directory, and its tail
in the failure message.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests.deploy import rootfs

README = rootfs.REPO / "README.md"
TIMEOUT = 1500  # seconds for the command; a cold run with downloads takes ~6 minutes


def readme_commands() -> list[str]:
    """The commands of the README's "Two commands" section, in order (indented or fenced
    code lines)."""
    text = README.read_text()
    m = re.search(r"^##+ [^\n]*Two commands[^\n]*\n(.*?)(?=^##+ |\Z)", text, re.S | re.M)
    if m is None:
        pytest.fail("README.md has no '## Two commands' section: this test runs its first "
                    "command (set up and demo) on a fresh root; update the test if it moved")
    commands, fenced = [], False
    for line in m.group(1).splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if (fenced or line.startswith("    ")) and line.strip():
            commands.append(line.strip().removeprefix("$ "))
    return commands


def test_readme_names_the_commands() -> None:
    commands = readme_commands()
    assert len(commands) >= 2, commands
    assert commands[1] == "bash scripts/test.sh", "the test command is what CI runs"


@pytest.mark.slow
def test_readme_demo_on_a_fresh_debian_root(tmp_path: Path) -> None:
    rootfs.require_host()
    demo = readme_commands()[0]
    log = tmp_path / "fresh-root.log"
    t0 = time.monotonic()
    try:
        base = rootfs.base_root(log)
    except rootfs.RootfsError as exc:
        pytest.fail(f"could not build the fresh Debian root: {exc}\n"
                    f"{log.read_text(errors='replace')[-3000:]}")
    work = tmp_path / "run"
    try:
        result = rootfs.run_in_fresh_root(base, work, demo, timeout=TIMEOUT, log=log)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the upper layer holds everything installed
    built = f"built in {base.seconds:.0f} s" if base.seconds else "cached"
    print(f"fresh root: base {built}; `{demo}` took {result.seconds:.0f} s; "
          f"total {time.monotonic() - t0:.0f} s; log {log}")
    tail = result.output[-6000:]
    assert result.returncode == 0, f"`{demo}` exited {result.returncode} on a fresh root:\n{tail}"
    # It set itself up (nothing was there before) ...
    assert "setup: installing with apt-get" in result.output, tail
    # ... and the demo did its work: the database came back from the replica.
    assert re.search(r"restor", result.output, re.I), tail
