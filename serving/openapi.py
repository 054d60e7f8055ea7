"""The service's OpenAPI description, completed with what BentoML 1.4 leaves out.

BentoML generates ``/docs.json`` from the APIs' pydantic models but documents only 200, 400, 404 and 500,
knows nothing of the API key, and omits the plain ``GET /model`` route. The answers our middlewares and
endpoints give are part of the contract, so clients and fuzzers (schemathesis) must find them here:
401 (API key), 413 (body and batch limits), 415 (a body that is not JSON), 431 (headers too large),
409 (conflicting feedback), 503 (decision log unavailable), 504 (request timeout), every one with the
``{"error", "detail"}`` body of ``serving/error_bodies.py``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from nexttouch.api import ModelInfo
from serving.auth import OPEN

SCHEME = "ApiKey"
ERROR = "Error"
LOGGED = ("/decide", "/decide/batch", "/feedback", "/events")  # answers that need a commit of the log
_REASONS = {
    401: "Missing, wrong or several X-API-Key headers",
    409: "The decision already has a different outcome",
    413: "Request body over NEXTTOUCH_MAX_BODY_BYTES, or a batch over NEXTTOUCH_BATCH_LIMIT",
    415: "The request body is not application/json",
    431: "Request headers over NEXTTOUCH_MAX_HEADER_BYTES in all",
    503: "The decision log cannot commit: nothing was decided or kept (retry later)",
    504: "The request took longer than NEXTTOUCH_REQUEST_TIMEOUT_S",
}


def _error(status: int) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{ERROR}"}
    return {"description": _REASONS[status], "content": {"application/json": {"schema": ref}}}


def complete(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of BentoML's spec with the API key, every error answer and ``GET /model`` documented."""
    spec = copy.deepcopy(spec)
    components = spec.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    schemas = components.setdefault("schemas", {})
    schemas[ERROR] = {
        "type": "object",
        "title": ERROR,
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
        "description": "Every error answer: what went wrong and, where known, the details.",
    }
    info = ModelInfo.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(info.pop("$defs", {}))
    schemas["ModelInfo"] = info
    spec["paths"]["/model"] = {
        "get": {
            "tags": ["Service APIs"],
            "description": "The champion the service decides with, the catalog and the feature service.",
            "operationId": "nexttouch__model",
            "responses": {
                "200": {
                    "description": "Successful Response",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ModelInfo"}}},
                },
                "503": {**_error(503), "description": "The service is still starting"},
            },
        }
    }
    for path, item in spec["paths"].items():
        if path in OPEN:
            continue
        for method, op in item.items():
            op["responses"] = {str(k): v for k, v in op.get("responses", {}).items()}  # BentoML's keys are ints
            op["security"] = [{SCHEME: []}]
            codes = [401, 431, 504]
            if method == "post":
                codes += [413, 415]
            if path in LOGGED:
                codes.append(503)
            if path == "/feedback":
                codes.append(409)
            for status in codes:
                op["responses"].setdefault(str(status), _error(status))
    return spec


class OpenApiMiddleware:
    """ASGI middleware: ``GET /docs.json`` answers the completed spec (built once, on first request)."""

    def __init__(self, app: Any, spec: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self._spec = spec
        self._body: bytes | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/docs.json" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        if self._body is None:
            self._body = json.dumps(complete(self._spec())).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self._body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else self._body})
