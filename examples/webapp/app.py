"""Notes: a small web app on SQLite, the kind people run on one volume with backups.

A plain ASGI application (no framework: the routes are few) served by Hypercorn. It knows
nothing of litefs; it opens `/litefs/store.db` (or `NOTES_DB`) like any SQLite app.

    GET    /                    the HTML page: the notes, a form to add one, delete buttons
    POST   /notes               the page's form (author, body) -> 303 back to /
    POST   /notes/{id}/delete   the page's delete button -> 303 back to /
    GET    /api/notes           JSON list, newest first (?limit=N, default 100, at most 1000)
    POST   /api/notes           JSON {"body": ..., "author": ...} (or a form) -> 201 + the note
    GET    /api/notes/{id}      one note, or 404
    DELETE /api/notes/{id}      204, or 404
    GET    /healthz             200 {"ok": true, ...} once the database is open and migrated,
                                else 503 (what a load balancer or a proxy polls)
    GET    /api/notes/events    Server-Sent Events: each new note as it is added
                                (?after=ID or Last-Event-ID to resume, ?limit=N to stop)
    POST   /api/uploads         a streamed upload of any size (read in chunks, never held
                                whole): 201 {"bytes", "sha256", "chunks", "note"}; records a
                                note saying what arrived

Reads are GET, writes are POST and DELETE, so a proxy in front can send writes to the primary
and serve reads anywhere. Run it with `python app.py` (binds $NOTES_BIND, default
127.0.0.1:8081; SIGTERM or SIGINT stop it gracefully, exit status 0) or with
`hypercorn --bind :8081 app:app` from this directory. Run `python migrate.py` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import json
import logging
import os
import re
import signal
import sqlite3
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import notes_db

log = logging.getLogger("notes")

MAX_BODY_BYTES = 64 * 1024  # a request body larger than this is refused (413)
MAX_UPLOAD_BYTES = 1 << 30  # a streamed upload larger than this is refused (413)
EVENTS_POLL = 0.1  # seconds between looks for new notes in an event stream
EVENTS_KEEPALIVE = 15.0  # seconds of silence before an SSE comment keeps proxies from timing out
MAX_NOTE_CHARS = 10_000
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


# ---- the database, one connection per worker thread -----------------------------------------

_local = threading.local()


def _con() -> sqlite3.Connection:
    con: sqlite3.Connection | None = getattr(_local, "con", None)
    if con is None:
        con = _local.con = notes_db.connect()
    return con


async def db(fn: Callable[[sqlite3.Connection], Any]) -> Any:
    """Run `fn(connection)` in a worker thread: SQLite calls block, the event loop must not."""
    return await asyncio.to_thread(_run_with_fresh_retry, fn)


def _run_with_fresh_retry(fn: Callable[[sqlite3.Connection], Any]) -> Any:
    try:
        return fn(_con())
    except sqlite3.Error as exc:
        if not _readonly(exc):
            raise
    # A connection opened while this node was a read replica stays read-only after the node
    # is promoted to primary (SQLite fell back to a read-only open): a write refused as
    # read-only is tried once more on a new connection (on a replica it fails again; the
    # refused statement changed nothing, so trying again cannot apply it twice).
    old: sqlite3.Connection | None = getattr(_local, "con", None)
    _local.con = None
    if old is not None:
        old.close()
    return fn(_con())


def _note(row: sqlite3.Row) -> dict[str, Any]:
    return {"id": row["id"], "author": row["author"], "body": row["body"],
            "created_at": row["created_at"]}


def list_notes(con: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    rows = con.execute("SELECT id, author, body, created_at FROM notes "
                       "ORDER BY created_at DESC, id DESC LIMIT ?", (limit,))
    return [_note(r) for r in rows]


def get_note(con: sqlite3.Connection, note_id: int) -> dict[str, Any] | None:
    row = con.execute("SELECT id, author, body, created_at FROM notes WHERE id = ?",
                      (note_id,)).fetchone()
    return None if row is None else _note(row)


def create_note(con: sqlite3.Connection, author: str, body: str) -> dict[str, Any]:
    # BEGIN IMMEDIATE takes the write lock up front: a deferred transaction that reads first
    # can fail to upgrade (SQLITE_BUSY without waiting) when another writer got there first.
    con.execute("BEGIN IMMEDIATE")
    try:
        cur = con.execute("INSERT INTO notes(author, body) VALUES (?, ?)", (author, body))
        note = get_note(con, int(cur.lastrowid or 0))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    assert note is not None
    return note


def delete_note(con: sqlite3.Connection, note_id: int) -> bool:
    con.execute("BEGIN IMMEDIATE")
    try:
        deleted = con.execute("DELETE FROM notes WHERE id = ?", (note_id,)).rowcount
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return deleted > 0


def notes_after(con: sqlite3.Connection, after: int, limit: int) -> list[dict[str, Any]]:
    rows = con.execute("SELECT id, author, body, created_at FROM notes WHERE id > ? "
                       "ORDER BY id LIMIT ?", (after, limit))
    return [_note(r) for r in rows]


def health(con: sqlite3.Connection) -> dict[str, Any]:
    version = notes_db.schema_version(con)
    doc: dict[str, Any] = {"ok": version == notes_db.LATEST, "db": notes_db.db_path(),
                           "schema_version": version}
    if version:
        doc["notes"] = con.execute("SELECT count(*) FROM notes").fetchone()[0]
    # litefs shows each database's position next to it (NAME-pos: TXID/checksum).
    try:
        with open(notes_db.db_path() + "-pos") as f:
            doc["litefs_txid"] = f.read().strip().split("/")[0]
    except OSError:
        pass
    return doc


# ---- HTTP ----------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, str]:
        fields = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[0] for k, v in fields.items()}

    def wants_json(self) -> bool:
        return self.headers.get("content-type", "").split(";")[0].strip() == "application/json"


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def json_response(status: int, doc: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps(doc).encode() + b"\n", "application/json", headers)


def redirect(location: str) -> Response:
    # 303 See Other: the browser follows a form POST with a GET (no resubmission on reload).
    return Response(303, b"", "text/plain", (("location", location),))


def note_input(req: Request) -> tuple[str, str]:
    """(author, body) from a JSON or form request body; 400 with the reason otherwise."""
    if req.wants_json():
        try:
            doc = json.loads(req.body or b"null")
        except ValueError as exc:
            raise HTTPError(400, f"invalid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise HTTPError(400, 'expected a JSON object {"body": "...", "author": "..."}')
        body, author = doc.get("body"), doc.get("author")
    else:
        fields = req.form()
        body, author = fields.get("body"), fields.get("author")
    if not isinstance(body, str) or not body.strip():
        raise HTTPError(400, "body is required (the text of the note)")
    if author is not None and not isinstance(author, str):
        raise HTTPError(400, "author must be a string")
    if len(body) > MAX_NOTE_CHARS:
        raise HTTPError(400, f"body is longer than {MAX_NOTE_CHARS} characters")
    author = (author or "").strip()[:100] or "anonymous"
    return author, body.strip()


def limit_param(req: Request) -> int:
    text = req.query.get("limit", [str(DEFAULT_LIMIT)])[0]
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise HTTPError(400, f"limit must be a number from 1 to {MAX_LIMIT}")
    return int(text)


async def page(req: Request) -> Response:
    notes = await db(lambda con: list_notes(con, DEFAULT_LIMIT))
    items = "\n".join(
        f'<li><p>{html.escape(n["body"])}</p><small>{html.escape(n["author"])}, '
        f'{html.escape(n["created_at"])} · <a href="/api/notes/{n["id"]}">#{n["id"]}</a></small>'
        f'<form method="post" action="/notes/{n["id"]}/delete">'
        f'<button type="submit">delete</button></form></li>' for n in notes)
    body = _PAGE.format(items=items or "<li><p><em>No notes yet.</em></p></li>",
                        db=html.escape(notes_db.db_path()))
    return Response(200, body.encode(), "text/html; charset=utf-8")


async def form_create(req: Request) -> Response:
    author, body = note_input(req)
    await db(lambda con: create_note(con, author, body))
    return redirect("/")


async def form_delete(req: Request, note_id: int) -> Response:
    await db(lambda con: delete_note(con, note_id))
    return redirect("/")


async def api_list(req: Request) -> Response:
    limit = limit_param(req)
    return json_response(200, await db(lambda con: list_notes(con, limit)))


async def api_create(req: Request) -> Response:
    author, body = note_input(req)
    note = await db(lambda con: create_note(con, author, body))
    return json_response(201, note, (("location", f"/api/notes/{note['id']}"),))


async def api_get(req: Request, note_id: int) -> Response:
    note = await db(lambda con: get_note(con, note_id))
    if note is None:
        raise HTTPError(404, f"no note {note_id}")
    return json_response(200, note)


async def api_delete(req: Request, note_id: int) -> Response:
    if not await db(lambda con: delete_note(con, note_id)):
        raise HTTPError(404, f"no note {note_id}")
    return Response(204)


async def healthz(req: Request) -> Response:
    try:
        doc = await db(health)
    except sqlite3.Error as exc:
        return json_response(503, {"ok": False, "db": notes_db.db_path(), "error": str(exc)})
    if not doc["ok"]:
        doc["error"] = (f"schema at version {doc['schema_version']}, expected "
                        f"{notes_db.LATEST}: run migrate.py")
    return json_response(200 if doc["ok"] else 503, doc)


# ---- streaming routes (they read the request / write the response as it goes) -------------


async def _start(send: Send, status: int, content_type: str,
                 extra: tuple[tuple[str, str], ...] = ()) -> None:
    headers = [(b"content-type", content_type.encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def events(scope: Scope, receive: Receive, send: Send, headers: dict[str, str]) -> None:
    """Server-Sent Events: every note added after `?after=ID` (or the Last-Event-ID a
    reconnecting browser sends), as it appears; `?limit=N` ends the stream after N."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    after_text = query.get("after", [headers.get("last-event-id", "")])[0] or "0"
    limit_text = query.get("limit", ["0"])[0]
    if not after_text.isdigit() or not limit_text.isdigit():
        resp = json_response(400, {"error": "after and limit must be numbers"})
        await _start(send, resp.status, resp.content_type)
        await send({"type": "http.response.body", "body": resp.body})
        return
    after, limit = int(after_text), int(limit_text)
    await _start(send, 200, "text/event-stream", (("cache-control", "no-store"),))
    # A first comment right away: the client (and every proxy between) sees the stream open.
    await send({"type": "http.response.body", "body": b": notes\n\n", "more_body": True})
    sent = 0
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.ensure_future(watch())
    quiet_since = asyncio.get_running_loop().time()
    try:
        while not gone.is_set() and (not limit or sent < limit):
            batch, start = (limit - sent if limit else 100), after
            notes = await db(lambda con, start=start, batch=batch: notes_after(con, start, batch))
            now = asyncio.get_running_loop().time()
            for n in notes:
                event = f"id: {n['id']}\nevent: note\ndata: {json.dumps(n)}\n\n"
                await send({"type": "http.response.body", "body": event.encode(),
                            "more_body": True})
                after, sent, quiet_since = n["id"], sent + 1, now
            if now - quiet_since > EVENTS_KEEPALIVE:
                await send({"type": "http.response.body", "body": b": keep-alive\n\n",
                            "more_body": True})
                quiet_since = now
            if not notes:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), EVENTS_POLL)
    finally:
        watcher.cancel()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def upload(scope: Scope, receive: Receive, send: Send, headers: dict[str, str]) -> None:
    """A streamed upload: hashed chunk by chunk as it arrives (never held whole), then one
    note records its size and SHA-256 (a write: on a replica the proxy sends it here from the
    primary's side)."""
    digest, size, chunks = hashlib.sha256(), 0, 0
    resp: Response | None = None
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            chunks += 1
            if size > MAX_UPLOAD_BYTES:
                resp = json_response(413, {"error": f"upload larger than {MAX_UPLOAD_BYTES} "
                                                    "bytes"})
                break
            digest.update(chunk)
        if not message.get("more_body"):
            break
    if resp is None:
        author = (headers.get("x-author") or "uploader").strip()[:100]
        text = f"uploaded {size} bytes (sha256 {digest.hexdigest()})"
        try:
            note = await db(lambda con: create_note(con, author, text))
            resp = json_response(201, {"bytes": size, "sha256": digest.hexdigest(),
                                       "chunks": chunks, "note": note})
        except sqlite3.Error as exc:
            resp = json_response(503 if _readonly(exc) else 500, {"error": str(exc)})
    await _start(send, resp.status, resp.content_type,
                 (("content-length", str(len(resp.body))),))
    await send({"type": "http.response.body", "body": resp.body})


StreamHandler = Callable[[Scope, Receive, Send, dict[str, str]], Awaitable[None]]
STREAM_ROUTES: dict[tuple[str, str], StreamHandler] = {
    ("GET", "/api/notes/events"): events,
    ("POST", "/api/uploads"): upload,
}


Handler = Callable[..., Awaitable[Response]]
# (path pattern, {method: handler}); a pattern's groups are passed as int arguments.
ROUTES: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
    (re.compile(r"/"), {"GET": page}),
    (re.compile(r"/notes"), {"POST": form_create}),
    (re.compile(r"/notes/(\d+)/delete"), {"POST": form_delete}),
    (re.compile(r"/api/notes"), {"GET": api_list, "POST": api_create}),
    (re.compile(r"/api/notes/(\d+)"), {"GET": api_get, "DELETE": api_delete}),
    (re.compile(r"/healthz"), {"GET": healthz}),
]


async def dispatch(req: Request) -> Response:
    for pattern, methods in ROUTES:
        m = pattern.fullmatch(req.path)
        if m is None:
            continue
        method = "GET" if req.method == "HEAD" else req.method
        handler = methods.get(method)
        if handler is None:
            allow = ", ".join(sorted({*methods, "HEAD"} if "GET" in methods else methods))
            raise HTTPError(405, f"{req.method} is not allowed on {req.path}",
                            (("allow", allow),))
        return await handler(req, *(int(g) for g in m.groups()))
    raise HTTPError(404, f"no such page: {req.path}")


def _readonly(exc: sqlite3.Error) -> bool:
    return "readonly" in str(exc) or getattr(exc, "sqlite_errorname", "") == "SQLITE_READONLY"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI entry point."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    streaming = STREAM_ROUTES.get((scope["method"], scope["path"]))
    if streaming is not None:
        await streaming(scope, receive, send, headers)
        return
    try:
        body = await _read_body(receive, headers)
        req = Request(scope["method"], scope["path"],
                      parse_qs(scope.get("query_string", b"").decode("latin-1")), headers, body)
        resp = await dispatch(req)
    except HTTPError as exc:
        resp = json_response(exc.status, {"error": exc.message}, exc.headers)
    except sqlite3.Error as exc:
        if _readonly(exc):
            # A read replica (its database is read-only): writes belong to the primary.
            resp = json_response(503, {"error": "this node's database is read-only (a replica):"
                                                " send writes to the primary"})
        else:
            log.exception("database error on %s %s", scope["method"], scope["path"])
            resp = json_response(500, {"error": f"database error: {exc}"})
    out_headers = [(b"content-type", resp.content_type.encode()),
                   (b"content-length", str(len(resp.body)).encode())]
    out_headers += [(k.encode(), v.encode()) for k, v in resp.headers]
    await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
    await send({"type": "http.response.body",
                "body": b"" if scope["method"] == "HEAD" else resp.body})


async def _read_body(receive: Receive, headers: dict[str, str]) -> bytes:
    if int(headers.get("content-length", "0") or 0) > MAX_BODY_BYTES:
        raise HTTPError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Notes</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; }}
form.new {{ display: grid; gap: .5rem; margin-bottom: 2rem; }}
textarea {{ min-height: 4rem; }}
ul {{ list-style: none; padding: 0; }}
li {{ border-top: 1px solid #ddd; padding: .5rem 0; }}
li p {{ margin: 0 0 .25rem; white-space: pre-wrap; }}
li form {{ display: inline; }}
small {{ color: #666; }}
</style>
</head>
<body>
<h1>Notes</h1>
<form class="new" method="post" action="/notes">
<input name="author" placeholder="your name" maxlength="100">
<textarea name="body" placeholder="write a note" required maxlength="10000"></textarea>
<button type="submit">Add note</button>
</form>
<ul>
{items}
</ul>
<p><small>SQLite database: {db} · JSON API: <a href="/api/notes">/api/notes</a> ·
<a href="/healthz">/healthz</a></small></p>
</body>
</html>
"""


def main() -> int:
    """Serve with Hypercorn until SIGTERM or SIGINT; then finish the requests in flight and
    exit 0 (what a supervisor such as `litefs mount` passes on as the app's status)."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = Config()
    config.bind = [os.environ.get("NOTES_BIND", "127.0.0.1:8081")]
    config.accesslog = "-" if os.environ.get("NOTES_ACCESS_LOG") else None
    # Hypercorn's own messages go through the logging set up above (one format, one stream).
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 5.0
    # Hypercorn's default accept backlog (100) overflows when a proxy in front opens a few
    # hundred connections at once (the kernel then resets some); servers usually use 2048.
    config.backlog = 2048

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            # Idempotent: in a terminal Ctrl-C reaches both litefs (which passes it on) and
            # this process, so the signal may arrive twice.
            loop.add_signal_handler(signum, stop.set)
        log.info("serving %s on http://%s/", notes_db.db_path(), config.bind[0])
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        log.info("stopped")

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
