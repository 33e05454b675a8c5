"""Requests to an ASGI app in-process, without a server or an HTTP client."""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message


def served(app: ASGIApp, path: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, body and headers of `app`'s answer to an empty POST to `path`."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 9093),
        "app": app,
    }
    anyio.run(app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, sorted(start["headers"])
