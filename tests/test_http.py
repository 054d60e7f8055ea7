"""The HTTP layer through the service's ASGI app, in process (BentoML's own lifespan runs)."""

import json
import sqlite3
from collections.abc import Iterator

import pandas as pd
import pytest
from starlette.testclient import TestClient

from nexttouch.settings import Settings
from tests.ciam import AUDIENCE, ISSUER, Ciam

pytestmark = pytest.mark.slow


KEY = "test-key-0123456789"
WINDOW_DAYS = 1000


@pytest.fixture(scope="module")
def ciam() -> Ciam:
    return Ciam()


@pytest.fixture(scope="module")
def client(built: Settings, ciam: Ciam, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    mp = pytest.MonkeyPatch()
    mp.setenv("NEXTTOUCH_PROJECT_DIR", str(built.project_dir))
    mp.setenv("NEXTTOUCH_API_KEY", KEY)
    mp.setenv("NEXTTOUCH_AT_WINDOW_HOURS", str(WINDOW_DAYS * 24))  # the built world ended 2026-11-01
    # The brand's CIAM: its subjects are the app's user keys.
    mp.setenv("NEXTTOUCH_OIDC_ISSUER", ISSUER)
    mp.setenv("NEXTTOUCH_OIDC_AUDIENCE", AUDIENCE)
    mp.setenv("NEXTTOUCH_OIDC_JWKS", str(ciam.write_jwks(tmp_path_factory.mktemp("ciam") / "jwks.json")))
    mp.setenv("NEXTTOUCH_OIDC_SOURCE_SYSTEM", "app")
    from serving.service import NextTouch

    with TestClient(app=NextTouch.to_asgi(), headers={"X-API-Key": KEY}) as c:
        yield c
    mp.undo()


def test_decide_known_customer(client: TestClient) -> None:
    r = client.post("/decide", json={"customer_id": "C0000003", "context": {"channel": "app"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["customer_id"] == "C0000003" and body["cold_start"] is False
    assert body["action"] in body["eligible"]
    assert set(body["values"]) == {"none", "push", "event_invite", "advisor_call"}
    assert 0 < body["propensity"] <= 1
    assert body["model_version"] == "1"


def test_decide_at_a_given_time(client: TestClient) -> None:
    r = client.post("/decide", json={"customer_id": "C0000003", "at": "2026-11-01T09:30:00+01:00"})
    assert r.status_code == 200, r.text
    assert r.json()["decided_at"] == "2026-11-01T09:30:00+01:00"


def test_decide_by_source_key(client: TestClient, built: Settings) -> None:
    import pandas as pd

    identity = pd.read_parquet(built.raw_dir / "identity.parquet")
    row = identity[(identity["source_system"] == "crm") & (identity["customer_id"] == "C0000003")].iloc[0]
    r = client.post("/decide", json={"source": {"system": "crm", "key": row["source_key"]}})
    assert r.status_code == 200, r.text
    assert r.json()["customer_id"] == "C0000003" and r.json()["cold_start"] is False
    r = client.post("/decide", json={"source": {"system": "crm", "key": "no-such-key"}})
    assert r.status_code == 200 and r.json()["customer_id"] is None and r.json()["cold_start"] is True
    r = client.post("/decide", json={"source": {"system": "pos", "key": "x1"}})
    assert r.status_code == 400 and "unknown source system 'pos'; known systems: api, " in r.text
    r = client.post(
        "/decide/batch", json={"customers": [{"customer_id": "C0000003"}, {"source": {"system": "pos", "key": "x"}}]}
    )
    assert r.status_code == 400 and "unknown source system 'pos'" in r.text


def _app_key(built: Settings, customer_id: str) -> str:
    identity = pd.read_parquet(built.raw_dir / "identity.parquet")
    return identity[(identity["source_system"] == "app") & (identity["customer_id"] == customer_id)].iloc[0, 1]


def _logged_decisions(built: Settings) -> int:
    with sqlite3.connect(built.decision_log) as db:
        return db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]


def test_decide_by_the_customers_id_token(client: TestClient, built: Settings, ciam: Ciam) -> None:
    r = client.post(
        "/decide", json={"id_token": ciam.token(_app_key(built, "C0000003")), "context": {"channel": "app"}}
    )
    assert r.status_code == 200, r.text
    assert (r.json()["customer_id"], r.json()["cold_start"]) == ("C0000003", False)
    r = client.post("/decide", json={"id_token": ciam.token("app-not-mapped-yet", kid="ec-1")})
    assert (r.status_code, r.json()["customer_id"], r.json()["cold_start"]) == (200, None, True)
    customers = [{"id_token": ciam.token(_app_key(built, "C0000004"), kid="ec-1")}, {"customer_id": "C0000005"}]
    r = client.post("/decide/batch", json={"customers": customers})
    assert r.status_code == 200, r.text
    assert [d["customer_id"] for d in r.json()["decisions"]] == ["C0000004", "C0000005"]


def test_bad_expired_or_foreign_tokens_are_a_401_that_says_why_and_decide_nothing(
    client: TestClient, built: Settings, ciam: Ciam
) -> None:
    sub = _app_key(built, "C0000003")
    stranger = Ciam()
    stranger.add_key("rsa-2", "RS256")
    before = _logged_decisions(built)
    for token, why in [
        (ciam.token(sub, iat=1_700_000_000, exp=1_700_000_300), "expired"),
        (ciam.token(sub, iss="https://login.other.example/"), "issued by another issuer"),
        (ciam.token(sub, aud="other-app"), "issued for another audience"),
        (stranger.token(sub), "bad signature"),
        (stranger.token(sub, kid="rsa-2"), "key 'rsa-2'"),
        ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "algorithm 'none' is not accepted"),
    ]:
        r = client.post("/decide", json={"id_token": token})
        assert (r.status_code, r.json()["error"].split(":")[0]) == (401, "id_token refused"), r.text
        assert why in r.json()["error"] and token not in r.text
        assert r.headers["www-authenticate"] == 'IdToken field="id_token"'
    good = {"id_token": ciam.token(sub)}
    r = client.post("/decide/batch", json={"customers": [good, {"id_token": stranger.token(sub)}]})
    assert r.status_code == 401 and "bad signature" in r.json()["error"]
    assert _logged_decisions(built) == before  # no cold start, nothing logged


def test_tokens_without_a_configured_ciam_or_its_keys_are_refused(client: TestClient, ciam: Ciam, tmp_path) -> None:
    from serving.service import _running
    from serving.tokens import IdTokens, KeySet

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_running["service"].decisions, "tokens", None)
        r = client.post("/decide", json={"id_token": ciam.token("app-x")})
    assert r.status_code == 400 and "takes no ID tokens: NEXTTOUCH_OIDC_ISSUER" in r.json()["error"]
    unreadable = IdTokens(ISSUER, AUDIENCE, KeySet(str(tmp_path / "gone.json")), 30, "app")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_running["service"].decisions, "tokens", unreadable)
        r = client.post("/decide/batch", json={"customers": [{"id_token": ciam.token("app-x")}]})
    assert r.status_code == 503  # the service's fault, not the caller's: never a 401 or a cold start
    assert r.json() == {"error": "the CIAM's keys cannot be read; the ID token was not checked; retry later"}
    assert r.headers["retry-after"] == "1"
    r = client.post("/decide", json={"id_token": ciam.token("app-x"), "customer_id": "C0000003"})
    assert r.status_code == 400 and "exactly one of customer_id or source {system, key} or id_token" in r.text


def test_tokens_are_never_logged(client: TestClient, built: Settings, ciam: Ciam, caplog) -> None:
    good, expired = ciam.token(_app_key(built, "C0000003")), ciam.token("app-x", iat=1_700_000_000, exp=1_700_000_300)
    with caplog.at_level("DEBUG"):
        assert client.post("/decide", json={"id_token": good}).status_code == 200
        assert client.post("/decide", json={"id_token": expired}).status_code == 401
        assert client.post("/decide", json={"id_token": "x" * 8193}).status_code == 400
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "POST /decide refused with 401: id_token expired" in text
    assert "x" * 100 not in text
    for token in (good, expired):
        assert token.split(".")[1] not in text and token.split(".")[2] not in text


def test_unknown_customer_is_a_flagged_fallback_not_an_error(client: TestClient) -> None:
    r = client.post("/decide", json={"customer_id": "C9999999"})
    assert r.status_code == 200, r.text
    assert (r.json()["cold_start"], r.json()["fallback"], r.json()["action"]) == (True, True, "none")


@pytest.mark.parametrize("path", ["/decide", "/decide/batch", "/feedback", "/events", "/model", "/metrics"])
def test_every_endpoint_but_health_needs_the_api_key(client: TestClient, path: str) -> None:
    for headers, needle in (({"X-API-Key": ""}, "missing API key"), ({"X-API-Key": KEY + "x"}, "wrong API key")):
        r = client.request("GET" if path in ("/model", "/metrics") else "POST", path, json={}, headers=headers)
        assert (r.status_code, r.json()) == (401, {"error": needle})
    assert client.get("/livez", headers={"X-API-Key": ""}).status_code == 200
    assert client.get("/readyz", headers={"X-API-Key": ""}).status_code == 200


def test_model_endpoint_names_champion_catalog_and_feature_service(client: TestClient, built: Settings) -> None:
    r = client.get("/model")
    assert r.status_code == 200, r.text
    info = r.json()
    assert (info["model_name"], info["model_version"], info["champion_alias"]) == (built.model_name, "1", "champion")
    assert built.model_name.startswith("nexttouch-catalog-")  # one registered model per catalog
    assert info["feature_service"] == built.feature_service
    assert [a["name"] for a in info["catalog"]] == ["none", "push", "event_invite", "advisor_call"]
    assert info["catalog"][3]["capacity"] == {"limit": 40, "period": "day", "per": "region"}


def test_batch_decides_in_order_logs_all_and_flags_unknowns(client: TestClient, built: Settings) -> None:
    import sqlite3

    customers = [{"customer_id": f"C{i:07d}"} for i in range(1, 41)] + [
        {"customer_id": "C9999999"},
        {"source": {"system": "crm", "key": "no-such-key"}},
    ]
    r = client.post("/decide/batch", json={"customers": customers, "at": "2026-11-02T12:00:00Z"})
    assert r.status_code == 200, r.text
    decisions = r.json()["decisions"]
    assert [d["customer_id"] for d in decisions] == [c.get("customer_id") for c in customers]
    assert [d["fallback"] for d in decisions] == [False] * 40 + [True, True]
    for d in decisions[:40]:
        assert d["action"] in d["eligible"] and 0 < d["propensity"] <= 1
        choice = {"best_uplift", "no_uplift", "only_eligible", "explored", "sampled"}
        assert len([e for e in d["explanation"] if e["code"] in choice]) == 1
    ids = [d["decision_id"] for d in decisions]
    with sqlite3.connect(built.decision_log) as db:
        logged = db.execute(
            f"SELECT COUNT(*), SUM(fallback) FROM decisions WHERE decision_id IN ({','.join('?' * len(ids))})", ids
        ).fetchone()
    assert logged == (42, 2)


def test_reasons_are_plain_words_with_a_structured_form(client: TestClient) -> None:
    from nexttouch.feature_labels import LABELS

    inputs = client.get("/model").json()["inputs"]
    assert inputs and set(inputs) <= set(LABELS)  # every input of the default feature service has a label
    r = client.post("/decide", json={"customer_id": "C0000003", "at": "2026-11-02T12:00:00Z"})
    body = r.json()
    assert body["reasons"] == [e["text"] for e in body["explanation"]]
    drivers = [e for e in body["explanation"] if e["code"] == "driver"]
    assert drivers and all(e["action"] == body["action"] and e["feature"] in inputs for e in drivers)
    for e in drivers:
        assert "=" not in e["text"] and "log-odds" not in e["text"] and "_" not in e["text"], e["text"]
        fact, effect = e["text"].rsplit(": ", 1)
        assert fact and effect.startswith("raises the chance of " if e["effect"] > 0 else "lowers the chance of ")
    assert "highest net value" not in " ".join(body["reasons"])
    assert body["uplift"] == {a: round(v - body["values"]["none"], 4) for a, v in body["values"].items()}


def test_decide_and_the_batch_say_the_same_in_the_same_numbers(client: TestClient) -> None:
    """One formatting: a customer decided alone and in a batch reads the same (tenure 1502, not 1.5e+03)."""
    at = "2026-11-02T12:00:00Z"
    ids = [f"C{i:07d}" for i in range(1, 31)]
    alone = [client.post("/decide", json={"customer_id": c, "at": at}).json() for c in ids]
    batch = client.post("/decide/batch", json={"customers": [{"customer_id": c} for c in ids], "at": at}).json()
    compared = 0
    for a, b in zip(alone, batch["decisions"], strict=True):
        if a["explored"] or b["explored"] or a["action"] != b["action"]:
            continue  # exploration draws differ between calls
        assert a["explanation"] == b["explanation"] and a["reasons"] == b["reasons"]
        assert a["uplift"] == b["uplift"]
        compared += 1
    assert compared >= 20
    numbers = [t for d in alone for t in d["reasons"] if "e+" in t]
    assert numbers == []


def test_a_batch_without_reasons_decides_the_same(client: TestClient) -> None:
    """``explain: false`` leaves the model's reasons out and changes nothing else; a fallback still says why."""
    at = "2026-11-02T12:00:00Z"
    customers = [{"customer_id": f"C{i:07d}"} for i in range(1, 31)] + [{"customer_id": "nobody"}]
    full = client.post("/decide/batch", json={"customers": customers, "at": at}).json()["decisions"]
    bare = client.post("/decide/batch", json={"customers": customers, "at": at, "explain": False}).json()["decisions"]
    compared = 0
    for f, b in zip(full[:-1], bare[:-1], strict=True):
        assert b["reasons"] == [] and b["explanation"] == [] and f["reasons"]
        if f["explored"] or b["explored"]:
            continue  # exploration draws differ between calls
        assert {**b, "decision_id": "", "decided_at": ""} == {
            **f,
            "decision_id": "",
            "decided_at": "",
            "reasons": [],
            "explanation": [],
        }
        compared += 1
    assert compared >= 20
    assert bare[-1]["fallback"] and bare[-1]["reasons"] == full[-1]["reasons"] != []


def test_batch_json_is_the_response_models_own(client: TestClient) -> None:
    """The batch's answers are written to JSON as dicts: the same bytes as the documented model would give."""
    from nexttouch.api import DecideBatchResponse

    customers = [{"customer_id": f"C{i:07d}"} for i in range(1, 31)] + [{"customer_id": "C9999999"}]
    at = "2026-11-02T12:00:00+01:00"
    r = client.post("/decide/batch", json={"customers": customers, "at": at, "context": {"channel": "app"}})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    model = DecideBatchResponse.model_validate_json(r.content)
    assert model.model_dump_json().encode() == r.content
    assert [d.decided_at.isoformat() for d in model.decisions] == [at] * 31


def test_batch_with_the_store_failing_gives_logged_fallbacks(client: TestClient, built: Settings) -> None:
    from serving.service import _running

    def broken(*_args: object) -> None:
        raise RuntimeError("store down")

    customers = [{"customer_id": f"C{i:07d}"} for i in range(1, 6)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_running["service"].online, "read_many", broken)
        r = client.post("/decide/batch", json={"customers": customers, "context": {"channel": "app"}})
    assert r.status_code == 200, r.text
    decisions = r.json()["decisions"]
    assert [(d["customer_id"], d["action"], d["fallback"], d["cold_start"]) for d in decisions] == [
        (c["customer_id"], "none", True, False) for c in customers
    ]
    assert all(d["reasons"][0] == "fallback: online store error" for d in decisions)
    ids = [d["decision_id"] for d in decisions]
    with sqlite3.connect(built.decision_log) as db:
        logged = db.execute(
            f"SELECT decision_id, fallback, context FROM decisions WHERE decision_id IN ({','.join('?' * 5)})", ids
        ).fetchall()
    assert sorted(logged) == sorted((i, 1, '{"channel":"app"}') for i in ids)


def test_batch_over_the_limit_is_refused_and_says_so(client: TestClient) -> None:
    customers = [{"customer_id": "C0000001"}] * 1001
    r = client.post("/decide/batch", json={"customers": customers})
    assert r.status_code == 413 and "over the batch limit of 1000" in r.text
    assert client.post("/decide/batch", json={"customers": []}).status_code == 400


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "exactly one of customer_id or source"),
        ({"customer_id": "C1", "source": {"system": "app", "key": "k"}}, "exactly one"),
        ({"source": {"system": "app"}}, "key"),
        ({"customer_id": ""}, "customer_id"),
        ({"customer_id": 42}, "customer_id"),
        ({"customer_id": "C1", "at": "yesterday"}, "at"),
        ({"customer_id": "C1", "at": "2026-11-01T09:30:00"}, "timezone"),
        ({"customer_id": "C1", "colour": "red"}, "colour"),
        ({"customer_id": "C1", "context": ["app"]}, "context"),
        ({"customer_id": "C1", "context": {"note": "x" * 257}}, "context.note: String should have at most 256"),
        ({"customer_id": "C1", "context": {f"k{i}": "v" for i in range(17)}}, "at most 16"),
    ],
)
def test_malformed_bodies_get_a_4xx_that_names_the_problem(client: TestClient, body: dict, needle: str) -> None:
    r = client.post("/decide", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.text


def test_error_bodies_are_the_documented_object(client: TestClient) -> None:
    """Every refusal is {"error": str, "detail": str}, as docs.json says (BentoML's own bodies are lists)."""
    documented = client.get("/docs.json").json()["components"]["schemas"]
    assert documented["Error"]["properties"]["detail"]["type"] == "string"
    invalid = client.post("/decide", json={"customer_id": "C1", "colour": "red"})
    assert invalid.status_code == 400 and invalid.json()["error"] == "invalid request: 1 problem"
    for body in ({"customer_id": "C1", "colour": "red"}, [1]):  # no internal class name in any refusal
        for path in ("/decide", "/decide/batch", "/feedback", "/events"):
            r = client.post(path, json=body)
            assert r.status_code == 400 and "IODescriptor" not in r.text and "Request" not in r.text, (path, r.text)
    assert "colour" in invalid.json()["detail"] and invalid.headers["content-type"] == "application/json"
    unknown = client.post("/feedback", json={"decision_id": "no-such-decision", "outcome": 1})
    assert (unknown.status_code, unknown.json()) == (404, {"error": "no decision 'no-such-decision'"})
    assert client.get("/no-such-route").json() == {"error": "Not Found"}


def test_a_body_over_the_limit_is_refused_before_parsing(client: TestClient, built: Settings) -> None:
    import json

    limit = built.max_body_bytes
    big = json.dumps({"customer_id": "C0000001", "context": {"note": "x" * limit}}).encode()
    for content in (big, iter([big[:1000], big[1000:]])):  # announced by Content-Length, or streamed
        r = client.post("/decide", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 413 and f"limit of {limit} bytes" in r.json()["error"], r.text[:300]
    small = json.dumps({"customer_id": "C0000001", "context": {"channel": "app"}}).encode()
    r = client.post("/decide", content=iter([small[:10], small[10:]]), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/decide", {"customer_id": "jane.doe@example.com"}),
        ("/decide", {"source": {"system": "crm", "key": "jane.doe@example.com"}}),
        ("/decide", {"customer_id": "C0000001", "context": {"email": "jane.doe@example.com"}}),
        ("/decide", {"customer_id": "C0000001", "context": {"phone": "+44 20 7946 0958"}}),
        ("/decide/batch", {"customers": [{"customer_id": "C0000001"}], "context": {"tel": "+447946095800"}}),
        ("/decide", {"customer_id": "07946095811"}),
        ("/decide", {"customer_id": "00447946095822"}),
        ("/decide", {"source": {"system": "crm", "key": "07946095866"}}),
        ("/decide", {"customer_id": "C0000001", "context": {"note": "call me on 07946095844"}}),
        (
            "/events",
            {
                "events": [
                    {
                        "event_id": "pii-2",
                        "occurred_at": "2026-01-01T00:00:00Z",
                        "touch_type": "app_session",
                        "customer_id": "07946095855",
                    }
                ]
            },
        ),
        (
            "/events",
            {
                "events": [
                    {
                        "event_id": "pii-1",
                        "occurred_at": "2026-01-01T00:00:00Z",
                        "touch_type": "app_session",
                        "source": {"system": "app", "key": "jane.doe@example.com"},
                    }
                ]
            },
        ),
    ],
)
def test_personal_data_is_refused_and_never_stored(client: TestClient, built: Settings, path: str, body: dict) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 400 and "personal data is refused" in r.json()["detail"], r.text
    wal = built.decision_log.with_name(built.decision_log.name + "-wal")
    log = built.decision_log.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert b"jane.doe" not in log and b"+44 20 7946" not in log and b"+447946095800" not in log
    assert b"7946095" not in log


def test_dates_and_ids_are_not_mistaken_for_personal_data(client: TestClient) -> None:
    context = {"campaign": "summer-2026", "seen": "2026-11-01 10:00:00", "ref": "12345678", "at": "a@b"}
    r = client.post("/decide", json={"customer_id": "C0000001", "context": context})
    assert r.status_code == 200, r.text


def test_invalid_json_is_a_4xx(client: TestClient) -> None:
    r = client.post("/decide", content=b"{not json", headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text


def test_openapi_documents_the_decide_body(client: TestClient) -> None:
    spec = client.get("/docs.json").json()
    assert "/decide" in spec["paths"]
    assert "customer_id" in str(spec["components"])


def test_posted_events_update_contact_state_at_once(client: TestClient, built: Settings) -> None:
    from datetime import UTC, datetime, timedelta

    from serving.online_features import OnlineFeatures

    identity = pd.read_parquet(built.raw_dir / "identity.parquet")
    app_key = identity[(identity["source_system"] == "app") & (identity["customer_id"] == "C0000351")].iloc[0]
    call_at = datetime.now(UTC) - timedelta(hours=2)
    body = {
        "events": [
            {
                "event_id": "rt-1",
                "occurred_at": call_at.isoformat(),
                "customer_id": "C0000350",
                "touch_type": "advisor_call",
            },
            {
                "event_id": "rt-2",
                "occurred_at": call_at.isoformat(),
                "source": {"system": "app", "key": app_key["source_key"]},
                "touch_type": "app_session",
            },
            {
                "event_id": "rt-3",
                "occurred_at": call_at.isoformat(),
                "source": {"system": "app", "key": "unknown-key"},
                "touch_type": "app_like",
            },
        ]
    }
    r = client.post("/events", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "accepted": 3,
        "duplicates": 0,
        "customers_updated": 2,
        "unresolved": ["rt-3"],
        "online_update_deferred": False,
    }

    online = OnlineFeatures(built)
    called = online.read("C0000350")
    assert pd.Timestamp(called["last_high_at"]) == pd.Timestamp(call_at).floor("s")  # Feast keeps seconds
    assert pd.Timestamp(called["last_contact_at"]) == pd.Timestamp(call_at).floor("s")  # Feast keeps seconds
    assert called["days_since_high"] == pytest.approx(2 / 24, abs=0.01)  # recency at request time
    assert online.read("C0000351")["days_since_tech"] == pytest.approx(2 / 24, abs=0.01)

    with sqlite3.connect(built.decision_log) as db:  # committed before the answer: nothing posted is lost
        kept = db.execute("SELECT event_id, source_key FROM touch_events WHERE event_id LIKE 'rt-%' ORDER BY seq")
        assert [r[0] for r in kept] == ["rt-1", "rt-2", "rt-3"]


def test_events_with_the_online_store_down_are_kept_answered_and_applied_later(built: Settings, tmp_path) -> None:
    import time
    from datetime import UTC, datetime, timedelta

    from nexttouch.api import EventsRequest
    from serving.contact_state import ContactUpdater
    from serving.online_features import OnlineFeatures

    online = OnlineFeatures(built)

    class Failing:  # the real Feast store, its writes failing while `down` (as redis-py raises when Redis is gone)
        down = True

        def __getattr__(self, name: str) -> object:
            return getattr(online.store, name)

        def push(self, *args: object, **kwargs: object) -> None:
            if self.down:
                raise ConnectionError("Connection refused")
            online.store.push(*args, **kwargs)

    store = Failing()
    kept: list[pd.DataFrame] = []
    updater = ContactUpdater(store, kept.append, lambda _s, key: key, timeout_s=1.0, retry_s=0.2)
    at = [datetime.now(UTC) - timedelta(hours=h) for h in (3, 1)]
    for i, when in enumerate(at):  # the second call retries the first one's update too
        body = {"event_id": f"down-{i}", "occurred_at": when, "customer_id": "C0000352", "touch_type": "app_session"}
        answer = updater.apply(EventsRequest.model_validate({"events": [body]}))
        assert (answer.accepted, answer.customers_updated, answer.online_update_deferred) == (1, 0, True)
    assert sorted(pd.concat(kept)["event_id"]) == ["down-0", "down-1"]  # nothing posted is lost
    assert updater.pending == 1  # one customer, tier and direction: only the newest touch is kept to push

    store.down = False  # back: the background retry makes the update without a new request
    deadline = time.monotonic() + 10
    while updater.pending and time.monotonic() < deadline:
        time.sleep(0.1)
    updater.close()
    assert updater.pending == 0
    assert pd.Timestamp(online.read("C0000352")["last_tech_at"]) == pd.Timestamp(at[1]).floor("s")


@pytest.mark.parametrize(
    ("event", "needle"),
    [
        ({"touch_type": "telepathy"}, "unknown touch_type"),
        ({"occurred_at": "2099-01-01T00:00:00Z"}, "future"),
        ({"occurred_at": "2026-01-01T00:00:00"}, "timezone"),
        ({"customer_id": None}, "exactly one of customer_id or source"),
        ({"amount": "lots"}, "amount"),
    ],
)
def test_bad_events_get_a_4xx(client: TestClient, event: dict, needle: str) -> None:
    good = {
        "event_id": "x1",
        "occurred_at": "2026-01-01T00:00:00Z",
        "customer_id": "C0000001",
        "touch_type": "app_session",
    }
    r = client.post("/events", json={"events": [{**good, **event}]})
    assert r.status_code == 400, r.text
    assert needle in r.text


def test_an_empty_or_oversized_event_batch_is_refused(client: TestClient) -> None:
    assert client.post("/events", json={"events": []}).status_code == 400
    one = {"event_id": "x", "occurred_at": "2026-01-01T00:00:00Z", "customer_id": "C1", "touch_type": "app_like"}
    r = client.post("/events", json={"events": [one] * 1001})
    assert r.status_code == 400 and "1000" in r.text


def test_every_decision_is_logged_and_takes_feedback_once(client: TestClient, built: Settings) -> None:
    import sqlite3

    decision = client.post("/decide", json={"customer_id": "C0000004", "context": {"channel": "store"}}).json()
    with sqlite3.connect(built.decision_log) as db:
        row = db.execute(
            "SELECT customer_id, action, propensity, context FROM decisions WHERE decision_id = ?",
            (decision["decision_id"],),
        ).fetchone()
    assert row[:3] == ("C0000004", decision["action"], decision["propensity"])
    assert json.loads(row[3]) == {"channel": "store"}

    fb = {"decision_id": decision["decision_id"], "outcome": 1}
    first, again = client.post("/feedback", json=fb), client.post("/feedback", json=fb)
    assert (first.status_code, first.json()["status"]) == (200, "recorded")
    assert (again.status_code, again.json()["status"]) == (200, "unchanged")
    conflict = client.post("/feedback", json={**fb, "outcome": 0})
    assert conflict.status_code == 409 and "different outcome" in conflict.text
    unknown = client.post("/feedback", json={"decision_id": "no-such-decision", "outcome": 1})
    assert unknown.status_code == 404 and "no-such-decision" in unknown.text
    assert client.post("/feedback", json={**fb, "outcome": 2}).status_code == 400


def test_the_fast_online_read_equals_feast_with_its_on_demand_view(built: Settings) -> None:
    from datetime import UTC, datetime

    from serving.online_features import OnlineFeatures

    online = OnlineFeatures(built)
    assert online._fast  # the packaged feature service takes the fast path
    for i, at in enumerate(
        [datetime(2026, 11, 2, 12, tzinfo=UTC), datetime(2026, 10, 1, 7, 30, 15, 123456, tzinfo=UTC)]
    ):
        for cid in [f"C{n:07d}" for n in range(1 + i, 400, 37)]:
            fast, feast = online.read(cid, at), online.read_feast(cid, at)
            assert fast is not None and set(fast) == set(feast)
            for name, value in feast.items():
                if isinstance(value, float):
                    assert fast[name] == pytest.approx(value, rel=1e-12), name
                else:
                    assert fast[name] == value, name
    assert online.read("C9999999") is None and online.read_feast("C9999999") is None
    ids = ["C0000002", "C9999999", "C0000040"]
    frame, known = online.read_many(ids, at)
    assert known.tolist() == [True, False, True]
    for cid, (_, row) in zip(ids, frame.iterrows(), strict=True):
        feast = online.read_feast(cid, at)
        if feast is None:
            continue
        for name in online.stored | {"days_since_tech", "days_since_contact"}:
            want = feast[name]
            if isinstance(want, float):
                assert row[name] == pytest.approx(want, rel=1e-12), name
            elif want is None:
                assert pd.isna(row[name]), name
            else:
                assert row[name] == want or pd.Timestamp(row[name]) == pd.Timestamp(want), name


def test_contact_updates_wait_for_the_other_workers_lock(built: Settings, tmp_path) -> None:
    """Workers update contact state in turn (read-modify-write): while another holds the lock, an update waits,
    is answered as deferred, and is made once the lock is free."""
    import fcntl
    import time
    from datetime import UTC, datetime, timedelta

    from nexttouch.api import EventsRequest
    from serving.contact_state import ContactUpdater
    from serving.online_features import OnlineFeatures

    online = OnlineFeatures(built)  # C0000355: not among the customers test_plan compares online and offline
    lock = tmp_path / "contact_state.lock"
    kept: list[pd.DataFrame] = []
    updater = ContactUpdater(online.store, kept.append, lambda _s, key: key, timeout_s=0.5, retry_s=60, lock=lock)
    when = datetime.now(UTC) - timedelta(minutes=30)
    body = {"event_id": "lock-1", "occurred_at": when, "customer_id": "C0000355", "touch_type": "event_attended"}
    with lock.open("a") as other_worker:
        fcntl.flock(other_worker, fcntl.LOCK_EX)
        answer = updater.apply(EventsRequest.model_validate({"events": [body]}))
        assert answer.online_update_deferred is True and len(kept) == 1  # kept, not yet online
        time.sleep(0.3)
        before = online.read("C0000355")["last_low_at"]
        assert pd.isna(before) or pd.Timestamp(before) < pd.Timestamp(when).floor("s")
        fcntl.flock(other_worker, fcntl.LOCK_UN)
    deadline = time.monotonic() + 10
    while pd.Timestamp(online.read("C0000355")["last_low_at"]) != pd.Timestamp(when).floor("s"):
        assert time.monotonic() < deadline, "the update was not made after the lock was released"
        time.sleep(0.1)
    updater.close()


EXTREME = ["9999-12-31T23:30:00-05:00", "0001-01-01T00:30:00+01:00", "9999-12-31T12:00:00Z", "1500-01-01T00:00:00Z"]


@pytest.mark.parametrize("at", [*EXTREME, 99999999999999, 1764000000])
def test_times_out_of_range_or_numbers_are_a_400_that_says_why(client: TestClient, at: object) -> None:
    event = {"event_id": "t-1", "occurred_at": at, "customer_id": "C0000001", "touch_type": "app_like"}
    for path, body in (
        ("/decide", {"customer_id": "C0000001", "at": at}),
        ("/decide/batch", {"customers": [{"customer_id": "C0000001"}], "at": at}),
        ("/feedback", {"decision_id": "no-such-decision", "outcome": 1, "at": at}),
        ("/events", {"events": [event]}),
    ):
        r = client.post(path, json=body)
        assert r.status_code == 400, (path, r.status_code, r.text)
        assert "between 1900-01-01 and 2200-01-01" in r.text or "ISO 8601 date-time string" in r.text, r.text


def test_at_outside_the_configured_window_is_refused(client: TestClient) -> None:
    for at in ("1990-01-01T00:00:00Z", "2030-01-01T00:00:00Z"):
        r = client.post("/decide", json={"customer_id": "C0000001", "at": at})
        assert r.status_code == 400 and f"window of {WINDOW_DAYS * 24} h" in r.json()["detail"], r.text
        r = client.post("/decide/batch", json={"customers": [{"customer_id": "C0000001"}], "at": at})
        assert r.status_code == 400 and "NEXTTOUCH_AT_WINDOW_HOURS" in r.json()["detail"], r.text


def test_a_nul_character_in_context_is_refused(client: TestClient) -> None:
    r = client.post("/decide", json={"customer_id": "C0000001", "context": {"note": "a\u0000b"}})
    assert r.status_code == 400 and "control character" in r.text, r.text


def test_feedback_outcome_is_strict_and_not_before_the_decision(client: TestClient) -> None:
    decision = client.post("/decide", json={"customer_id": "C0000006"}).json()
    for outcome in (True, 1.0, "1"):
        r = client.post("/feedback", json={"decision_id": decision["decision_id"], "outcome": outcome})
        assert r.status_code == 400 and "outcome" in r.text, r.text
    before = pd.Timestamp(decision["decided_at"]) - pd.Timedelta(minutes=1)
    r = client.post("/feedback", json={"decision_id": decision["decision_id"], "outcome": 1, "at": before.isoformat()})
    assert r.status_code == 400 and "before the decision" in r.text, r.text
    r = client.post("/feedback", json={"decision_id": decision["decision_id"], "outcome": 1})
    assert r.status_code == 200 and r.json()["status"] == "recorded", r.text


def test_two_api_keys_are_ambiguous(client: TestClient) -> None:
    r = client.post("/decide", json={"customer_id": "C0000001"}, headers=[("X-API-Key", KEY), ("X-API-Key", "other")])
    assert (r.status_code, r.json()) == (401, {"error": "several X-API-Key headers: send exactly one"})


def test_only_json_bodies_are_read(client: TestClient) -> None:
    form = client.post("/decide", data={"customer_id": "C0000001"})
    assert form.status_code == 415 and "application/json" in form.text, form.text
    multipart = client.post("/decide", files={"customer_id": ("c", b"C0000001")})
    assert multipart.status_code == 415, multipart.text
    typed = client.post(
        "/decide", content=b'{"customer_id": "C0000001"}', headers={"content-type": "application/json; charset=utf-8"}
    )
    assert typed.status_code == 200, typed.text


def test_oversized_headers_are_refused(client: TestClient, built: Settings) -> None:
    r = client.post("/decide", json={"customer_id": "C0000001"}, headers={"X-Filler": "x" * built.max_header_bytes})
    assert r.status_code == 431 and f"limit of {built.max_header_bytes} bytes" in r.text, r.text


def test_posted_event_ids_are_idempotency_keys(client: TestClient, built: Settings) -> None:
    from datetime import UTC, datetime, timedelta

    at = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    event = {"occurred_at": at, "customer_id": "C0000360", "touch_type": "app_like"}
    batch = [{**event, "event_id": "idem-1"}, {**event, "event_id": "idem-1"}, {**event, "event_id": "idem-2"}]
    first = client.post("/events", json={"events": batch}).json()
    retry = client.post("/events", json={"events": batch[1:]}).json()
    assert (first["accepted"], first["duplicates"]) == (2, 1)
    assert (retry["accepted"], retry["duplicates"], retry["customers_updated"]) == (0, 2, 0)
    with sqlite3.connect(built.decision_log) as db:
        stored = db.execute("SELECT count(*) FROM touch_events WHERE event_id LIKE 'idem-%'").fetchone()[0]
    assert stored == 2


def test_events_of_made_up_customers_are_reported_and_never_made_customers(client: TestClient, built: Settings) -> None:
    from datetime import UTC, datetime, timedelta

    from serving.online_features import OnlineFeatures

    at = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    made_up = [f"X{i:07d}" for i in range(20)]
    event = {"occurred_at": at, "touch_type": "app_like"}
    events = [{**event, "event_id": f"ghost-{c}", "customer_id": c} for c in made_up]
    r = client.post("/events", json={"events": events})
    assert r.status_code == 200, r.text
    assert (r.json()["accepted"], r.json()["customers_updated"]) == (20, 0)
    assert r.json()["unresolved"] == [f"ghost-{c}" for c in made_up]
    online = OnlineFeatures(built)
    assert all(online.read(c) is None for c in made_up)
    decided = client.post("/decide", json={"customer_id": made_up[0]}).json()
    assert (decided["cold_start"], decided["fallback"]) == (True, True)


def test_refusals_are_logged_as_one_line_without_the_values(client: TestClient, caplog) -> None:
    with caplog.at_level("INFO"):
        assert client.post("/decide", json={"customer_id": "zed.quux@example.com"}).status_code == 400
        assert client.post("/feedback", json={"decision_id": "no-such-id-x1", "outcome": 1}).status_code == 404
    text = "\n".join(f"{r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "zed.quux" not in text and "no-such-id-x1" not in text, text
    refusals = [r for r in caplog.records if "refused with" in r.getMessage()]
    assert [(r.levelname, r.getMessage()) for r in refusals] == [
        ("INFO", "POST /decide refused with 400: customer_id: value_error"),
        ("INFO", "POST /feedback refused with 404: NotFound"),
    ]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
