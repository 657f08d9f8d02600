"""`python -m tests.proxy.node --proxy-config FILE MOUNT-ARGS...`: `litefs mount` with the HTTP
proxy, for the tests.

Until config.py's schema carries `proxy:` (the lead wires `proxy.parse_proxy_settings` into
the config), this is the proxy's entry point: it reads the `proxy:` mapping from FILE and runs
the real `litefs mount` command line with it (the mount's own `MountOptions.proxy` hook).
"""

from __future__ import annotations

import dataclasses
import sys

import yaml

import litefs_py.app as app
from litefs_py.cli import main as cli_main
from litefs_py.proxy import parse_proxy_settings


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] != "--proxy-config":
        sys.exit("usage: python -m tests.proxy.node --proxy-config FILE MOUNT-ARGS...")
    with open(argv[1]) as f:
        doc = yaml.safe_load(f) or {}
    settings = parse_proxy_settings(doc.get("proxy"))
    real = app.run_mount

    def run_mount(opts: app.MountOptions) -> int:
        return real(dataclasses.replace(opts, proxy=settings))

    app.run_mount = run_mount  # cli.mount imports it from litefs_py.app when it runs
    cli_main(["mount", *argv[2:]], prog_name="litefs")


if __name__ == "__main__":
    main(sys.argv[1:])
