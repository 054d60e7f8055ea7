"""Per-customer learning through the HTTP doors of a real `bentoml serve`: /feedback and /events change
the next /decide at once."""

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from nexttouch.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.service]

KEY = "test-key-learning-0123"


@pytest.fixture(scope="module")
def client(built: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    from serving import server
    from tests.conftest import free_port

    tmp = tmp_path_factory.mktemp("learning")
    settings = built.model_copy(update={"port": free_port(), "affinity_prior_sd": 3.0, "epsilon": 0.0})
    proc = server.start(settings, tmp / "serve.log", api_key=KEY)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{settings.port}", headers={"X-API-Key": KEY}) as c:
            yield c
    finally:
        server.stop(proc)


def _posterior(built: Settings, customer: str) -> dict[str, tuple[float, int]]:
    import sqlite3

    with sqlite3.connect(built.decision_log) as db:
        rows = db.execute("SELECT action, mean, outcomes FROM affinity WHERE customer_id = ?", (customer,)).fetchall()
    return {a: (m, n) for a, m, n in rows}


def test_feedback_is_learnt_before_it_answers_and_once(client: httpx.Client, built: Settings) -> None:
    first = client.post("/decide", json={"customer_id": "C0000011"}).json()
    assert _posterior(built, "C0000011") == {}
    r = client.post("/feedback", json={"decision_id": first["decision_id"], "outcome": 0})
    assert r.status_code == 200 and r.json()["status"] == "recorded"
    ((mean, seen),) = _posterior(built, "C0000011").values()
    assert mean < 0 and seen == 1  # learnt before the answer
    again = client.post("/feedback", json={"decision_id": first["decision_id"], "outcome": 0})
    assert again.json()["status"] == "unchanged"
    assert _posterior(built, "C0000011")[first["action"]] == (mean, 1)  # a repeat is not learnt twice
    after = client.post("/decide", json={"customer_id": "C0000011"}).json()
    assert after["p_success"][first["action"]] < first["p_success"][first["action"]]


def test_a_decision_linked_success_touch_is_learnt(client: httpx.Client, built: Settings) -> None:
    from nexttouch.catalog import load_catalog

    catalog = load_catalog()
    for _ in range(20):  # a decision for a contact whose success touch the app reports
        d = client.post("/decide", json={"customer_id": "C0000012"}).json()
        if catalog[d["action"]].success_touch:
            break
    touch = catalog[d["action"]].success_touch
    event = {
        "event_id": f"ev-{d['decision_id']}",
        "occurred_at": datetime.now(UTC).isoformat(),
        "customer_id": "C0000012",
        "touch_type": touch,
        "decision_id": d["decision_id"],
    }
    assert client.post("/events", json={"events": [event]}).status_code == 200
    mean, seen = _posterior(built, "C0000012")[d["action"]]
    assert mean > 0 and seen == 1
    # its outcome is recorded: feedback that disagrees is a conflict, not a second lesson
    assert client.post("/feedback", json={"decision_id": d["decision_id"], "outcome": 0}).status_code == 409
