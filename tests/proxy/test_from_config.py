"""`litefs mount --config FILE` with a `proxy:` section, as a user writes it: the proxy starts
with the mount and serves the app behind it (no test hook: the mount reads the section)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.proxy.harness import WEBAPP, ProxyMount
from tests.s3_server import free_port

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]

CONFIG = """\
http:
  addr: "127.0.0.1:{http_port}"
lease: {{type: static, candidate: true}}
exec:
  - cmd: [env, "NOTES_DB={db}", "{python}", "{webapp}/migrate.py"]
    if-candidate: true
  - cmd: [env, "NOTES_DB={db}", "NOTES_BIND=127.0.0.1:{app_port}", "{python}", "{webapp}/app.py"]
proxy:
  addr: "127.0.0.1:{proxy_port}"
  target: "${{APP_ADDR}}"          # from the environment, as in a container
  db: store.db
  passthrough: ["/healthz"]
  debug: true
"""


def test_mount_runs_the_proxy_of_its_config_file(tmp_path: Path) -> None:
    app_port, proxy_port = free_port(), free_port()
    mount_dir = tmp_path / "mnt"
    config = tmp_path / "litefs.yml"
    config.write_text(CONFIG.format(http_port=free_port(), app_port=app_port,
                                    proxy_port=proxy_port, db=mount_dir / "store.db",
                                    python=sys.executable, webapp=WEBAPP))
    mount = ProxyMount(mount_dir, tmp_path / "data", tmp_path / "litefs.log",
                       ["--config", str(config)], env={"APP_ADDR": f"127.0.0.1:{app_port}"})
    mount.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{proxy_port}", trust_env=False,
                          timeout=30) as c:
            deadline = time.monotonic() + 60
            while True:  # the proxy listens before the app starts: 502 until it does
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, mount.log()[-4000:]
                time.sleep(0.1)
            resp = c.post("/api/notes", json={"body": "through the proxy", "author": "t"})
            assert resp.status_code == 201, resp.text
            assert int(c.cookies["__txid"], 16) >= 1  # the proxy's read-your-writes cookie
            got = c.get(f"/api/notes/{resp.json()['id']}")
            assert got.status_code == 200 and got.json()["body"] == "through the proxy"
            health = c.get("/litefs/health").json()
            assert health["role"] == "primary" and health["db"] == "store.db"
        log = mount.log()
        assert f"HTTP proxy on 127.0.0.1:{proxy_port} -> application at 127.0.0.1:{app_port}" \
            in log
        assert "proxy: GET /healthz: passthrough" in log  # passthrough and debug: true
    finally:
        assert mount.stop(timeout=60.0) == 0, mount.log()[-4000:]
