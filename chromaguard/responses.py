"""Small ASGI responses the front door answers itself."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Iterable

Send = Callable[[dict[str, Any]], Awaitable[None]]


async def send_json(send: Send, status: int, payload: Any,
                    headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *headers],
    })
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, status: int, error: str, message: str,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """An error in the shape Chroma itself uses, so the official client shows the message."""
    await send_json(send, status, {"error": error, "message": message}, headers)
