"""A request-body size limit (BentoML has none): larger bodies get 413 before any parsing.

A body announced by Content-Length is judged by its header; a streamed body (no Content-Length) is read
up to the limit and refused as soon as it passes it. A refused body is drained (up to ``DRAIN_FACTOR``
times the limit) before the answer, so the client reads the 413 instead of a reset connection.
"""

from __future__ import annotations

import json
from typing import Any

from nexttouch.settings import load_settings

DRAIN_FACTOR = 16  # beyond this many times the limit the connection is simply closed


class BodyLimitMiddleware:
    """ASGI middleware: request bodies over ``settings.max_body_bytes`` get 413 with a clear message."""

    def __init__(self, app: Any, limit: int | None = None) -> None:
        self.app = app
        self.limit = limit if limit is not None else load_settings().max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if not length.isdigit():
                await _answer(send, 400, "Content-Length is not a number")
            elif int(length) > self.limit:
                await _drain(receive, self.limit * DRAIN_FACTOR)
                await _answer(send, 413, self._message(f"{int(length)} bytes"))
            else:
                await self.app(scope, receive, send)
            return
        chunks, size = [], 0  # streamed: read it here, up to the limit
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                if message.get("more_body", False):
                    await _drain(receive, self.limit * DRAIN_FACTOR - size)
                await _answer(send, 413, self._message(f"over {self.limit} bytes"))
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _message(self, size: str) -> str:
        return (
            f"request body of {size} is over the limit of {self.limit} bytes (NEXTTOUCH_MAX_BODY_BYTES); "
            "send smaller requests (fewer items, shorter values)"
        )


async def _drain(receive: Any, budget: int) -> None:
    """Read and drop what the client still sends, up to ``budget`` bytes."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _answer(send: Any, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
