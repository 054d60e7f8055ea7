"""docs.json documents what the service really answers: the API key, every error status, GET /model."""

from __future__ import annotations

import json
import re

import pytest

from serving.openapi import ERROR, SCHEME, complete


@pytest.fixture(scope="module")
def spec() -> dict:
    from serving.service import NextTouch

    return complete(NextTouch.openapi_spec.asdict())


def _ops(spec: dict) -> dict[tuple[str, str], dict]:
    return {(m.upper(), p): op for p, item in spec["paths"].items() for m, op in item.items()}


def test_every_guarded_operation_documents_the_key_and_its_errors(spec: dict) -> None:
    ops = _ops(spec)
    assert spec["components"]["securitySchemes"][SCHEME] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    expected = {
        ("POST", "/decide"): {"200", "400", "401", "404", "413", "415", "431", "500", "503", "504"},
        ("POST", "/decide/batch"): {"200", "400", "401", "404", "413", "415", "431", "500", "503", "504"},
        ("POST", "/feedback"): {"200", "400", "401", "404", "409", "413", "415", "431", "500", "503", "504"},
        ("POST", "/events"): {"200", "400", "401", "404", "413", "415", "431", "500", "503", "504"},
        ("GET", "/model"): {"200", "401", "431", "503", "504"},
        ("GET", "/metrics"): {"200", "401", "431", "504"},
    }
    for key, codes in expected.items():
        assert set(ops[key]["responses"]) == codes, key
        assert ops[key]["security"] == [{SCHEME: []}], key
    for health in ("/livez", "/readyz", "/healthz"):
        assert "security" not in ops["GET", health] and set(ops["GET", health]["responses"]) == {"200"}


def test_error_answers_have_the_one_error_body(spec: dict) -> None:
    ref = {"$ref": f"#/components/schemas/{ERROR}"}
    for op in _ops(spec).values():
        for status in ("401", "409", "413", "415", "431", "503", "504"):
            if status in op["responses"]:
                assert op["responses"][status]["content"]["application/json"]["schema"] == ref
    assert spec["components"]["schemas"][ERROR]["required"] == ["error"]


def test_model_route_is_described_by_its_pydantic_model(spec: dict) -> None:
    from nexttouch.api import ModelInfo

    schema = spec["paths"]["/model"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ModelInfo"}
    assert spec["components"]["schemas"]["ModelInfo"]["required"] == ModelInfo.model_json_schema()["required"]


def test_completing_leaves_bentomls_spec_untouched() -> None:
    base = {"paths": {"/decide": {"post": {"responses": {"200": {"description": "ok"}}}}}}
    done = complete(base)
    assert base == {"paths": {"/decide": {"post": {"responses": {"200": {"description": "ok"}}}}}}
    assert set(done["paths"]["/decide"]["post"]["responses"]) == {"200", "401", "413", "415", "431", "503", "504"}


def test_the_page_presents_nexttouch_not_bentoml(spec: dict) -> None:
    from importlib.metadata import version

    info = spec["info"]
    assert info["title"] == "nexttouch decision API" and info["version"] == version("nexttouch")
    assert "POST /decide" in info["description"] and "POST /feedback" in info["description"]
    assert "X-API-Key" in info["description"]
    text = json.dumps(spec)
    for boilerplate in ("BentoML", "img.shields.io", "badgen.net", "contact@bentoml.com"):
        assert boilerplate not in text, boilerplate
    assert [t["name"] for t in spec["tags"]] == ["Decisions", "Operations"]
    assert {t for op in _ops(spec).values() for t in op["tags"]} == {"Decisions", "Operations"}


def test_schemas_carry_our_model_names(spec: dict) -> None:
    schemas = spec["components"]["schemas"]
    assert "IODescriptor" not in json.dumps(spec)
    assert {"DecideRequest", "DecideResponse", "DecideBatchRequest", "FeedbackRequest", "EventsRequest"} <= set(schemas)
    assert not {"InvalidArgument", "NotFound", "InternalServerError", "TaskStatusResponse"} & set(schemas)
    decide = _ops(spec)["POST", "/decide"]
    assert decide["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DecideRequest"
    }
    ok = decide["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/DecideResponse"}
    for status in ("400", "404", "500"):
        error = decide["responses"][status]["content"]["application/json"]["schema"]
        assert error == {"$ref": f"#/components/schemas/{ERROR}"}, status
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', json.dumps(spec)))
    assert refs <= set(schemas)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"customer_id": "C1", "context": {"channel": ["app"]}}, "context.channel: Input should be a valid string"),
        ([1, 2], "Input should be a JSON object"),
    ],
)
def test_a_refused_body_names_no_internal_class(body: object, problem: str) -> None:
    """The body BentoML makes of a validation error, as the client gets it through ErrorBodyMiddleware."""
    from pydantic import ValidationError

    from serving.error_bodies import error_body
    from serving.service import NextTouch

    descriptor = NextTouch.apis["decide"].input_spec
    with pytest.raises(ValidationError) as refused:
        descriptor.model_validate(body)
    exc = refused.value
    assert descriptor.__name__ in str(exc)  # what pydantic says, and the client must not read
    raw = {"error": f"{exc.error_count()} validation error for {exc.title}", "detail": exc.errors(include_input=False)}
    answer = json.loads(error_body(json.dumps(raw).encode(), 400))
    assert answer["error"] == "invalid request: 1 problem"
    assert problem in answer["detail"]
    assert "IODescriptor" not in json.dumps(answer) and "DecideRequest" not in json.dumps(answer)


def test_the_swagger_page_is_ours_and_calls_nothing_outside() -> None:
    import asyncio

    from serving.openapi import OpenApiMiddleware

    passed: list[str] = []

    async def inner(scope: dict, receive: object, send: object) -> None:
        passed.append(scope["path"])

    async def get(path: str) -> tuple[dict, bytes]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        app = OpenApiMiddleware(inner, spec=lambda: {"paths": {}})
        await app({"type": "http", "path": path, "method": "GET"}, None, send)
        return (sent[0] if sent else {}), b"".join(m.get("body", b"") for m in sent[1:])

    start, page = asyncio.run(get("/"))
    assert start["status"] == 200 and (b"content-type", b"text/html; charset=utf-8") in start["headers"]
    assert b"<title>nexttouch decision API</title>" in page and b"./static_content/swagger-ui-bundle.js" in page
    assert b"http" not in page  # no tag manager, no link out: works offline
    assert asyncio.run(get("/decide")) == ({}, b"") and passed == ["/decide"]
