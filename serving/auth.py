"""API key check for every route but health and the API description.

The key comes from ``NEXTTOUCH_API_KEY`` and is compared in constant time; it is never logged.
The OpenAPI page (``/``, ``/docs.json`` and its static files) stays open: it describes the API and
holds no data, and a browser cannot send a header to read it.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from nexttouch.settings import load_settings

OPEN = frozenset({"/livez", "/readyz", "/healthz", "/", "/docs.json"})
OPEN_PREFIX = "/static_content/"
HEADER = b"x-api-key"


class ApiKeyMiddleware:
    """ASGI middleware: a request without the right ``X-API-Key`` gets 401 and never reaches the API."""

    def __init__(self, app: Any, key: str | None = None) -> None:
        self.app = app
        if key is None:
            settings = load_settings()
            key = settings.service_key()
            if key is None:
                raise RuntimeError(
                    f"no API key: set NEXTTOUCH_API_KEY or write one to {settings.api_key_file}; "
                    "the service does not run without one"
                )
        self._key = key.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN or scope["path"].startswith(OPEN_PREFIX):
            await self.app(scope, receive, send)
            return
        keys = [v for k, v in scope["headers"] if k == HEADER]
        given = keys[0] if len(keys) == 1 else b""
        if given and hmac.compare_digest(given, self._key):
            await self.app(scope, receive, send)
            return
        if len(keys) > 1:  # which one counts would depend on the proxy or framework in between: refused
            error = "several X-API-Key headers: send exactly one"
        else:
            error = "missing API key" if not given else "wrong API key"
        body = json.dumps({"error": error}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'ApiKey header="X-API-Key"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
