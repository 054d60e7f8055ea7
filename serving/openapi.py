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
import re
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
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


TITLE = "nexttouch decision API"
DESCRIPTION = """\
nexttouch decides the **next contact** for each customer of a brand: an app push, an invitation to
an event, a call from an advisor, or nothing for now. It chooses among the actions the contact
policy allows (consent, quiet hours, caps, cool-downs, capacity) the one of highest expected value
net of its cost, says why, and logs every decision so that its outcome trains the next model.

Every call but health and this page sends the key in the `X-API-Key` header (**Authorize** above).

### Example flow

1. **Decide**: `POST /decide` with `{"customer_id": "C0000002", "context": {"channel": "app"}}`
   (or `{"source": {"system": "app", "key": "..."}}`: any source system's key). The answer names
   the `action`, its `decision_id`, the values and the reasons.
2. **Act** on the answer: send the push, the invitation, or book the call (`send_at`, when given,
   is the earliest allowed time).
3. **Report the outcome**: `POST /feedback` with `{"decision_id": "...", "outcome": 1}`, or post
   the touches as they happen to `POST /events`, naming the `decision_id` they answer: both train
   the next model (and, with per-customer learning on, this customer's next decision).
4. `POST /decide/batch` decides for many customers in one call; `GET /model` tells which model
   version decides.

Every error answer is `{"error": "...", "detail": "..."}`.
"""
TAGS = {  # BentoML's tag -> ours
    "Service APIs": ("Decisions", "Decide, report outcomes and touches, and see the model that decides."),
    "Infrastructure": ("Operations", "Health and Prometheus metrics; health needs no key."),
}
# BentoML's error schemas: every error answer has our one error body instead.
BENTOML_ERRORS = ("InvalidArgument", "NotFound", "InternalServerError")
SUFFIX = "IODescriptor"  # BentoML names its input and output schemas <our model name>IODescriptor


def package_version() -> str:
    try:
        return version("nexttouch")
    except PackageNotFoundError:  # run from a source tree that is not installed (e.g. a Bento's src)
        return "unknown"


def _error(status: int) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{ERROR}"}
    return {"description": _REASONS[status], "content": {"application/json": {"schema": ref}}}


def complete(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of BentoML's spec with the API key, every error answer and ``GET /model`` documented."""
    spec = copy.deepcopy(spec)
    spec["info"] = {
        "title": TITLE,
        "version": package_version(),
        "description": DESCRIPTION,
        "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
    }
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
    _our_names(spec)
    return spec


def _our_names(spec: dict[str, Any]) -> None:
    """Our schema names and tags in place of BentoML's: ``DecideRequest``, not ``DecideRequestIODescriptor``;
    one ``Error`` schema for every error answer."""
    schemas = spec["components"]["schemas"]
    renamed = {name: name.removesuffix(SUFFIX) for name in schemas if name.endswith(SUFFIX)}
    for old, new in renamed.items():
        schema = schemas.pop(old)
        schemas.setdefault(new, {**schema, "title": new})  # an equal model of that name is kept as it is
    renamed |= dict.fromkeys((n for n in BENTOML_ERRORS if schemas.pop(n, None) is not None), ERROR)
    for item in spec["paths"].values():
        for op in item.values():
            op["tags"] = [TAGS.get(t, (t,))[0] for t in op.get("tags", [])]
            for status, answer in list(op.get("responses", {}).items()):
                if int(status) >= 400:  # BentoML's generic answers too: our body and wording
                    answer["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR}"}}}
            for content in [op.get("requestBody", {}), *op.get("responses", {}).values()]:
                for media in content.get("content", {}).values():
                    title = media.get("schema", {}).get("title", "")
                    if title.endswith(SUFFIX):  # BentoML inlines its descriptor: point at our schema
                        media["schema"] = {"$ref": f"#/components/schemas/{title.removesuffix(SUFFIX)}"}
    spec["tags"] = [{"name": name, "description": text} for name, text in TAGS.values()]
    text = json.dumps(spec)
    for old, new in renamed.items():
        text = text.replace(f'"#/components/schemas/{old}"', f'"#/components/schemas/{new}"')
    done = json.loads(re.sub(rf'"title": "(\w+){SUFFIX}"', r'"title": "\1"', text))
    used = set(re.findall(r'"#/components/schemas/(\w+)"', text))  # e.g. BentoML's TaskStatusResponse is not
    done["components"]["schemas"] = {k: v for k, v in done["components"]["schemas"].items() if k in used}
    spec.clear()
    spec.update(done)


# The Swagger UI page at ``/``, on the Swagger UI files BentoML serves: BentoML's own page is titled
# "BentoML Prediction Service", hides the API's title, links BentoML's repository and loads Google Tag
# Manager (a call out of the network, broken offline).
PAGE = f"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>{TITLE}</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css" />
    <style>body {{ margin: 0; background: #fafafa; }} .swagger-ui .topbar {{ display: none; }}</style>
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script src="./static_content/swagger-initializer.js" charset="UTF-8"></script>
  </body>
</html>
""".encode()


class OpenApiMiddleware:
    """ASGI middleware: ``GET /docs.json`` answers the completed spec (built once, on first request) and
    ``GET /`` the Swagger UI page that shows it."""

    def __init__(self, app: Any, spec: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self._spec = spec
        self._body: bytes | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in ("/docs.json", "/") or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        if path == "/":
            body, media = PAGE, b"text/html; charset=utf-8"
        else:
            if self._body is None:
                self._body = json.dumps(complete(self._spec())).encode()
            body, media = self._body, b"application/json"
        headers = [(b"content-type", media), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
