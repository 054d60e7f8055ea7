"""A real `bentoml serve` process on 127.0.0.1, called with a real HTTP client."""

from collections.abc import Iterator

import httpx
import pytest

from nexttouch.settings import Settings
from serving import server
from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.service]


@pytest.fixture(scope="module")
def base_url(built: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    settings = built.model_copy(update={"port": port})
    proc = server.start(settings, tmp_path_factory.mktemp("logs") / "serve.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop(proc)
    assert proc.returncode is not None


def test_health_and_readiness(base_url: str) -> None:
    assert httpx.get(f"{base_url}/livez").status_code == 200
    assert httpx.get(f"{base_url}/readyz").status_code == 200


def test_the_openapi_page_the_demo_points_to(base_url: str) -> None:
    page = httpx.get(f"{base_url}/", timeout=10)
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert "/decide" in httpx.get(f"{base_url}/docs.json", timeout=10).json()["paths"]


def test_decisions_over_http(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        known = client.post("/decide", json={"customer_id": "C0000005"})
        unknown = client.post("/decide", json={"customer_id": "C9999999"})
        malformed = client.post("/decide", json={"customer": "C0000005"})
        not_json = client.post("/decide", content=b"\x00\xff", headers={"content-type": "application/json"})
    assert known.status_code == 200, known.text
    assert known.json()["cold_start"] is False and known.json()["action"] in known.json()["eligible"]
    assert unknown.status_code == 200 and unknown.json()["cold_start"] is True
    assert malformed.status_code == 400 and "Extra inputs are not permitted" in malformed.text
    assert 400 <= not_json.status_code < 500
    assert known.json()["decision_id"] != unknown.json()["decision_id"]


def test_feedback_over_http(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        decision = client.post("/decide", json={"customer_id": "C0000006"}).json()
        fb = {"decision_id": decision["decision_id"], "outcome": 0}
        assert client.post("/feedback", json=fb).json()["status"] == "recorded"
        assert client.post("/feedback", json=fb).json()["status"] == "unchanged"
        assert client.post("/feedback", json={**fb, "decision_id": "unknown"}).status_code == 404
