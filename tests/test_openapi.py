"""docs.json documents what the service really answers: the API key, every error status, GET /model."""

from __future__ import annotations

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
