"""Run the example web app (examples/webapp) the way it is deployed: started by a real
`litefs mount` from its `exec:` (migrate, then the server), talked to over real HTTP.

`NotesMount(tmp, replica_url).start()` writes a litefs.yml, starts the mount, waits until
`GET /healthz` answers 200 and returns; `stop()` sends SIGTERM (litefs passes it to the app)
and returns litefs's exit status. Ports are free loopback ports; nothing outlives the test.
Reusable by other tests that need a real app behind litefs (e.g. an HTTP proxy's).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx

from tests.mount.harness import LitefsMount, is_mounted
from tests.s3_server import free_port

REPO = Path(__file__).resolve().parents[2]
WEBAPP = REPO / "examples" / "webapp"
START_TIMEOUT = 60.0


class NotesMount:
    def __init__(self, tmp: Path, replica_url: str | None = None, *,
                 name: str = "notes") -> None:
        self.config_path = tmp / f"{name}.yml"
        self.replica_url = replica_url
        self.app_port = free_port()
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.app_port}"
        self.mount = LitefsMount(tmp / f"{name}-mnt", tmp / f"{name}-data", tmp / f"{name}.log",
                                 extra_args=["--config", str(self.config_path)])
        self.mount_dir, self.data_dir = self.mount.mount_dir, self.mount.data_dir

    @property
    def returncode(self) -> int | None:
        return None if self.mount.proc is None else self.mount.proc.returncode

    def write_config(self) -> None:
        replica = f"replica: {{url: {self.replica_url!r}}}\n" if self.replica_url else ""
        # The app's settings go on its command line (env VAR=... CMD), as in a container spec.
        env = ["env", f"NOTES_DB={self.mount_dir / 'store.db'}",
               f"NOTES_BIND=127.0.0.1:{self.app_port}", sys.executable]
        self.config_path.write_text(
            f"http: {{addr: '127.0.0.1:{self.http_port}'}}\n"
            f"{replica}"
            "exec:\n"
            f"  - cmd: {[*env, str(WEBAPP / 'migrate.py')]!r}\n"
            "    if-candidate: true\n"
            f"  - cmd: {[*env, str(WEBAPP / 'app.py')]!r}\n")

    def start(self) -> NotesMount:
        self.write_config()
        self.mount.start()  # returns once the mount serves; the app starts after migrate
        deadline = time.monotonic() + START_TIMEOUT
        with self.client() as c:
            while True:
                proc = self.mount.proc
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"litefs mount exited with {proc.returncode}:\n"
                                         f"{self.log()}")
                try:
                    if c.get("/healthz").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"the app did not answer /healthz within "
                                         f"{START_TIMEOUT}s:\n{self.log()}")
                time.sleep(0.1)

    def client(self) -> httpx.Client:
        # trust_env=False: no HTTP proxy from the environment between us and loopback.
        return httpx.Client(base_url=self.url, timeout=10.0, trust_env=False)

    def stop(self) -> int | None:
        """SIGTERM (litefs passes it to the app) and wait; litefs's exit status."""
        return self.mount.stop(timeout=60.0)

    def mounted(self) -> bool:
        return is_mounted(self.mount_dir)

    def log(self) -> str:
        return self.mount.log()

    def __enter__(self) -> NotesMount:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
