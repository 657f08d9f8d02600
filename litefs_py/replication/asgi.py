"""The ASGI shapes shared by litefs's HTTP endpoints (replication API, /metrics listener,
the proxy's Hypercorn engine), and the one lifespan answer they all give."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge the server's start-up and shutdown (nothing to set up or tear down);
    returns at shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
