"""A command-line client for the notes app's JSON API (used by scripts/demo.sh).

    python client.py [--url URL] wait [--timeout S]   until GET /healthz answers 200
    python client.py [--url URL] add BODY... [--author A]
    python client.py [--url URL] list [--limit N]
    python client.py [--url URL] delete ID

URL defaults to $NOTES_URL, else http://127.0.0.1:8081. Exit status 0 on success, 1 when the
server answered with an error, 5 when it could not be reached.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import httpx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Talk to the notes app's JSON API.")
    parser.add_argument("--url", default=os.environ.get("NOTES_URL", "http://127.0.0.1:8081"))
    sub = parser.add_subparsers(dest="command", required=True)
    wait = sub.add_parser("wait", help="wait until the app is up and migrated")
    wait.add_argument("--timeout", type=float, default=60.0)
    add = sub.add_parser("add", help="add notes, one per BODY")
    add.add_argument("body", nargs="+")
    add.add_argument("--author", default="demo")
    listing = sub.add_parser("list", help="list the notes, newest first")
    listing.add_argument("--limit", type=int, default=100)
    delete = sub.add_parser("delete", help="delete a note")
    delete.add_argument("id", type=int)
    args = parser.parse_args(argv)

    # trust_env=False: talk to the app directly, never through an HTTP proxy from the env.
    with httpx.Client(base_url=args.url, timeout=10.0, trust_env=False) as c:
        try:
            if args.command == "wait":
                return _wait(c, args.timeout)
            if args.command == "add":
                for body in args.body:
                    r = c.post("/api/notes", json={"body": body, "author": args.author})
                    if r.status_code != 201:
                        return _failed(r)
                    note = r.json()
                    print(f"added note #{note['id']}: {note['body']!r} by {note['author']}")
            elif args.command == "list":
                r = c.get("/api/notes", params={"limit": args.limit})
                if r.status_code != 200:
                    return _failed(r)
                for note in r.json():
                    print(f"#{note['id']:<4} {note['created_at']}  {note['author']}: "
                          f"{note['body']}")
            elif args.command == "delete":
                r = c.delete(f"/api/notes/{args.id}")
                if r.status_code != 204:
                    return _failed(r)
                print(f"deleted note #{args.id}")
        except httpx.TransportError as exc:
            print(f"client: cannot reach {args.url}: {exc}", file=sys.stderr)
            return 5
    return 0


def _wait(c: httpx.Client, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = c.get("/healthz")
            if r.status_code == 200:
                return 0
            last = f"HTTP {r.status_code}: {r.text.strip()}"
        except httpx.TransportError as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.2)
    print(f"client: {c.base_url} not healthy after {timeout:.0f}s ({last})", file=sys.stderr)
    return 1


def _failed(r: httpx.Response) -> int:
    print(f"client: {r.request.method} {r.request.url.path}: HTTP {r.status_code} "
          f"{r.text.strip()}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
