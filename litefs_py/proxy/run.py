"""`litefs run -- CMD`: run a command whose SQLite writes must reach the primary.

On the primary (or where no litefs mount makes the node a replica) CMD simply runs here. On
a read replica its writes would fail ("attempt to write a readonly database"), so:

- without `--on-primary`, litefs refuses before starting CMD, naming the primary;
- with `--on-primary`, CMD runs on the primary's node instead, through the primary's
  replication API (`POST /litefs/v1/run`, authenticated with the replication secret, which is
  required for it): its output and exit status come back here as it runs. It gets the
  primary's environment plus `--env` variables, no standard input, the same working
  directory if that exists there (else /). Interrupting `litefs run` (Ctrl-C, SIGTERM)
  stops CMD on the primary (SIGTERM, then SIGKILL after 5 s).

The wire format is the replication stream's framing (stream_protocol.py): frames of type
"stdout"/"stderr" (payload: the bytes) and a last "exit" (`status`: CMD's exit status,
128+N when signal N killed it; `error` when it could not be started: 126/127).

LiteFS's own answer, forwarding a replica's SQLite writes to the primary under a HALT lock,
is not built; docs/proxy.md says what it would take.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import trio

from ..errors import ExitCode, QuietError
from ..replication.stream_protocol import FrameReader, ProtocolError, encode_frame

log = logging.getLogger("litefs.run")

RUN_PATH = "/litefs/v1/run"
MAX_RUN_REQUEST = 1 << 20
KILL_GRACE = 5.0

Scope = dict[str, Any]


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


# ---- the primary's side ------------------------------------------------------------------


def make_run_endpoint(secret: str | None) -> Any:
    """The ASGI handler for POST /litefs/v1/run on the replication API (which has already
    checked the secret when one is set)."""

    async def endpoint(scope: Scope, receive: Any, send: Any) -> None:
        async def reply(status: int, message: str) -> None:
            body = json.dumps({"error": message}).encode() + b"\n"
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        if not secret:
            await reply(403, "running commands for other nodes needs the replication secret: "
                             "set http.secret (or LITEFS_SECRET) on every node")
            return
        raw = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if len(raw) > MAX_RUN_REQUEST:
                await reply(413, "request too large")
                return
            if not message.get("more_body"):
                break
        try:
            req = json.loads(bytes(raw))
            argv = req["argv"]
            env = req.get("env") or {}
            cwd = req.get("cwd") or "/"
            if (not isinstance(argv, list) or not argv
                    or not all(isinstance(a, str) for a in argv)
                    or not isinstance(env, dict)
                    or not all(isinstance(k, str) and isinstance(v, str)
                               for k, v in env.items())
                    or not isinstance(cwd, str)):
                raise ValueError("expected {argv: [str, ...], env: {str: str}, cwd: str}")
        except (ValueError, KeyError, TypeError) as exc:
            await reply(400, f"bad run request: {exc}")
            return
        if not await trio.Path(cwd).is_dir():
            cwd = "/"
        client = scope.get("client") or ("?", 0)
        log.info("running %s for %s (litefs run --on-primary)", argv, client[0])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-litefs-stream"),
                                (b"cache-control", b"no-store")]})

        async def frame(header: dict[str, Any], payload: bytes = b"") -> None:
            await send({"type": "http.response.body", "body": encode_frame(header, payload),
                        "more_body": True})

        try:
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env={**os.environ, **env}, cwd=cwd,
                start_new_session=True)
        except OSError as exc:
            code = 126 if isinstance(exc, PermissionError) else 127
            await frame({"type": "exit", "status": code,
                         "error": f"cannot start {argv[0]}: {exc.strerror or exc}"})
            await send({"type": "http.response.body", "body": b""})
            return
        gone = False
        try:
            async with trio.open_nursery() as nursery:
                async def pump(stream: Any, kind: str) -> None:
                    async for chunk in stream:
                        await frame({"type": kind}, chunk)

                watcher = trio.CancelScope()

                async def watch() -> None:
                    nonlocal gone
                    with watcher:
                        while (await receive())["type"] != "http.disconnect":
                            pass
                        gone = True
                        log.info("the client of %s went away; stopping it", argv)
                        nursery.cancel_scope.cancel()

                nursery.start_soon(pump, proc.stdout, "stdout")
                nursery.start_soon(pump, proc.stderr, "stderr")
                nursery.start_soon(watch)
                await proc.wait()
                watcher.cancel()  # the pumps end with the output left in the pipes
            if not gone:
                await frame({"type": "exit", "status": _exit_status(proc.returncode or 0)})
                await send({"type": "http.response.body", "body": b""})
        finally:
            if proc.returncode is None:
                with trio.CancelScope(shield=True):
                    await _stop(proc)

    return endpoint


async def _stop(proc: trio.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with trio.move_on_after(KILL_GRACE):
        await proc.wait()
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    await proc.wait()


# ---- the command line's side -------------------------------------------------------------


def node_role(mount_dir: Path) -> tuple[str, str | None]:
    """("replica", primary URL or None) or ("primary", None) from the mount's virtual files;
    QuietError when there is no litefs mount there."""
    if (mount_dir / ".lag").exists():
        try:
            primary = (mount_dir / ".primary").read_text().strip() or None
        except OSError:
            primary = None
        return "replica", primary
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[1] == str(mount_dir) and fields[0] == "litefs":
                return "primary", None
    raise QuietError(f"no litefs mount at {mount_dir} (is `litefs mount` running? "
                     f"--mount-dir or fuse.dir names it)", ExitCode.NOT_FOUND)


def run_on_primary(primary_url: str, secret: str | None, argv: list[str],
                   env: dict[str, str]) -> int:
    """Run `argv` on the primary's node; its output to ours, its exit status returned."""
    import sys

    import httpx

    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    doc = {"argv": argv, "env": env, "cwd": os.getcwd()}
    url = primary_url.rstrip("/") + RUN_PATH
    reader = FrameReader()
    status: int | None = None
    try:
        with httpx.Client(trust_env=False, timeout=httpx.Timeout(10.0, read=None)) as client, \
                client.stream("POST", url, json=doc, headers=headers) as resp:
            if resp.status_code != 200:
                resp.read()
                try:
                    why = resp.json().get("error", resp.text)
                except ValueError:
                    why = resp.text.strip()
                raise QuietError(f"the primary at {primary_url} refused to run the command "
                                 f"({resp.status_code}): {why}", ExitCode.FAILED)
            for data in resp.iter_raw():
                for frame in reader.feed(data):
                    if frame.type == "stdout":
                        sys.stdout.buffer.write(frame.payload)
                        sys.stdout.buffer.flush()
                    elif frame.type == "stderr":
                        sys.stderr.buffer.write(frame.payload)
                        sys.stderr.buffer.flush()
                    elif frame.type == "exit":
                        status = int(frame.header.get("status", 1))
                        if frame.header.get("error"):
                            print(f"litefs: on the primary: {frame.header['error']}",
                                  file=sys.stderr)
    except httpx.HTTPError as exc:
        raise QuietError(f"cannot run the command on the primary at {primary_url}: {exc}",
                         ExitCode.IO) from None
    except ProtocolError as exc:
        raise QuietError(f"the primary at {primary_url} sent a broken answer: {exc}",
                         ExitCode.IO) from None
    if status is None:
        raise QuietError(f"the connection to the primary at {primary_url} ended before the "
                         "command's exit status arrived (it may still have run)", ExitCode.IO)
    return status
