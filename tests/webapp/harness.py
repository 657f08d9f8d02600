"""Run the example web app (examples/webapp) the way it is deployed: started by a real
`litefs mount` from its `exec:` (migrate, then the server), talked to over real HTTP.

`NotesMount(tmp, replica_url).start()` writes a litefs.yml, starts the mount, waits until
`GET /healthz` answers 200 and returns; `stop()` sends SIGTERM (litefs passes it to the app)
and returns litefs's exit status. Ports are free loopback ports; nothing outlives the test.
Reusable by other tests that need a real app behind litefs (e.g. an HTTP proxy's).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.mount.harness import force_unmount, is_mounted
from tests.s3_server import free_port

REPO = Path(__file__).resolve().parents[2]
WEBAPP = REPO / "examples" / "webapp"
START_TIMEOUT = 60.0


class NotesMount:
    def __init__(self, tmp: Path, replica_url: str | None = None, *, data_dir: Path | None = None,
                 name: str = "notes") -> None:
        self.tmp = tmp
        self.mount_dir = tmp / f"{name}-mnt"
        self.data_dir = data_dir or tmp / f"{name}-data"
        self.config_path = tmp / f"{name}.yml"
        self.log_path = tmp / f"{name}.log"
        self.replica_url = replica_url
        self.app_port = free_port()
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.app_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def db_path(self) -> Path:
        return self.mount_dir / "store.db"

    def write_config(self) -> None:
        replica = f"replica: {{url: {self.replica_url!r}}}\n" if self.replica_url else ""
        self.config_path.write_text(
            f"fuse: {{dir: {str(self.mount_dir)!r}}}\n"
            f"data: {{dir: {str(self.data_dir)!r}}}\n"
            f"http: {{addr: '127.0.0.1:{self.http_port}'}}\n"
            f"{replica}"
            "exec:\n"
            f"  - cmd: [{sys.executable!r}, {str(WEBAPP / 'migrate.py')!r}]\n"
            "    if-candidate: true\n"
            f"  - cmd: [{sys.executable!r}, {str(WEBAPP / 'app.py')!r}]\n")

    def start(self) -> NotesMount:
        self.write_config()
        env = dict(os.environ, NOTES_DB=str(self.db_path),
                   NOTES_BIND=f"127.0.0.1:{self.app_port}")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "litefs_py", "mount", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        with self.client() as c:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"litefs mount exited with {self.proc.returncode}:\n"
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

    def stop(self, timeout: float = 60.0) -> int | None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        force_unmount(self.mount_dir)
        return None if proc is None else proc.returncode

    def mounted(self) -> bool:
        return is_mounted(self.mount_dir)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> NotesMount:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
