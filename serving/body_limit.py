"""Request limits BentoML does not have: header size (431), media type (415) and body size (413), all
checked before any parsing.

Headers over ``settings.max_header_bytes`` in all are refused. A POST body is JSON: another declared
media type (a form, multipart, which BentoML would parse as a form) is refused; no Content-Type is read as
JSON, as BentoML does.

A body announced by Content-Length is judged by its header; a streamed body (no Content-Length) is read
up to the limit and refused as soon as it passes it. A refused body is drained (up to ``DRAIN_FACTOR``
times the limit) before the answer, so the client reads the 413 instead of a reset connection.
"""

from __future__ import annotations

import json
from typing import Any

from nexttouch.settings import load_settings

DRAIN_FACTOR = 16  # beyond this many times the limit the connection is simply closed
JSON = b"application/json"


class RequestLimitMiddleware:
    """ASGI middleware: oversized headers get 431, a POST body that is not JSON 415, request bodies over
    ``settings.max_body_bytes`` 413; each with a clear message."""

    def __init__(self, app: Any, limit: int | None = None, header_limit: int | None = None) -> None:
        self.app = app
        if limit is None or header_limit is None:
            settings = load_settings()
            limit = settings.max_body_bytes if limit is None else limit
            header_limit = settings.max_header_bytes if header_limit is None else header_limit
        self.limit, self.header_limit = limit, header_limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = sum(len(k) + len(v) for k, v in scope["headers"])
        if size > self.header_limit:
            await _answer(send, 431, f"request headers of {size} bytes are over the limit of {self.header_limit} bytes")
            return
        media = next((v for k, v in scope["headers"] if k == b"content-type"), None)
        if scope["method"] == "POST" and media is not None and media.split(b";")[0].strip().lower() != JSON:
            await _drain(receive, self.limit)
            shown = media.split(b";")[0].strip()[:64].decode("latin-1")
            await _answer(send, 415, f"request body of type {shown!r} is not accepted: send application/json")
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
