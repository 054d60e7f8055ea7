"""One error body for every refusal: ``{"error": str, "detail": str}``, as docs.json documents it.

BentoML 1.4.39 answers a validation error with ``detail`` as a list of pydantic errors and a
BentoMLException (NotFound, Conflict, ...) raised in an API as a one-element list ``[{"error": ...}]``,
while its OpenAPI describes an object whose ``detail`` is a string. This ASGI middleware rewrites
error responses (status >= 400) into that documented object, so clients and schema agree.

BentoML also logs every refusal at ERROR with a traceback, and pydantic's carries the refused input
(``input_value='jane@example.com'``): ``install_refusal_logging`` makes a refusal one INFO line that names
the fields and kinds of error only, never a value; service faults keep BentoML's ERROR and traceback.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from http import HTTPStatus
from typing import Any

from serving.auth import OPEN, OPEN_PREFIX

# pydantic names the model it validates ("1 validation error for DecideRequestIODescriptor", "instance of
# DecideRequest"): internal class names, which the documented body does not carry.
VALIDATION = re.compile(r"(\d+) validation errors? for \w+")
MODEL_TYPE = re.compile(r"a valid dictionary or instance of \w+")


def problems(errors: list[Any]) -> str:
    """Pydantic errors as one line: ``customer_id: String should match pattern ...; at: ...``."""
    parts = []
    for e in errors:
        if not isinstance(e, dict):
            parts.append(str(e))
            continue
        where = ".".join(str(x) for x in e.get("loc", ()))
        msg = MODEL_TYPE.sub("a JSON object", str(e.get("msg", "")))
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def error_body(raw: bytes, status: int) -> bytes:
    """The documented error object for any error response body."""
    try:
        data: Any = json.loads(raw)
    except ValueError:
        data = raw.decode(errors="replace").strip()
    if isinstance(data, list) and len(data) == 1:  # BentoMLException raised in an API
        data = data[0]
    if isinstance(data, dict):
        error, detail = data.get("error"), data.get("detail") if "error" in data else None
        error = error if error is not None else data.get("detail")
    else:
        error, detail = data, None
    error = str(error) if error else HTTPStatus(status).phrase
    if (count := VALIDATION.fullmatch(error)) is not None:
        error = f"invalid request: {count[1]} problem{'s' if count[1] != '1' else ''}"
    body: dict[str, str] = {"error": error}
    if isinstance(detail, list):
        body["detail"] = problems(detail)
    elif detail is not None:
        body["detail"] = str(detail)
    return json.dumps(body).encode()


class ErrorBodyMiddleware:
    """ASGI middleware: error responses of the API get the documented ``{"error", "detail"}`` body."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN or scope["path"].startswith(OPEN_PREFIX):
            await self.app(scope, receive, send)
            return
        start: dict | None = None
        chunks: list[bytes] = []

        async def rewrite(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the whole body is known
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = error_body(b"".join(chunks), start["status"])
            skip = {b"content-length", b"content-type"}
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in skip]
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)


log = logging.getLogger("nexttouch.serving")


def refusal(exc: BaseException | None) -> tuple[int, str] | None:
    """Status and a value-free summary of a client error (``customer_id: value_error``); None for a fault."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        return 400, "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['type']}" for e in errors)
    if isinstance(exc, BentoMLException) and exc.error_code.value < 500:
        return exc.error_code.value, type(exc).__name__  # its message may echo what the client sent
    return None


def install_refusal_logging() -> None:
    """Swap BentoML's exception logging for one that logs refusals as one line without values."""
    from _bentoml_impl.server import app

    bentoml_log = app.log_exception
    if getattr(bentoml_log, "refusals_quiet", False):
        return

    def log_exception(request: Any, exc_info: Any = True) -> None:
        refused = refusal(sys.exc_info()[1])
        if refused is None:
            bentoml_log(request, exc_info)
            return
        log.info("%s %s refused with %d: %s", request.method, request.url.path, *refused)

    log_exception.refusals_quiet = True  # type: ignore[attr-defined]
    app.log_exception = log_exception
