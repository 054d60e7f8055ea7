"""A real `bentoml serve` process (2 workers) on 127.0.0.1, called with a real HTTP client."""

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from nexttouch.catalog import load_catalog
from nexttouch.settings import Settings
from serving import server
from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.service]

KEY = "e2e-key-9876543210"
CALLS = 5  # advisor calls a day in the test catalog
DAY = "2026-12-24T12:00:00Z"  # a day no other test decides on: its capacity is untouched


def _scarce_call_catalog(path: Path) -> Path:
    """The packaged catalog, but an advisor call is worth most to everyone with consent, 5 a day in all."""
    raw = load_catalog().model_dump(mode="json", exclude_none=True)
    for a in raw["actions"]:
        if a["name"] == "advisor_call":
            a.update(value_of_success=10_000.0, caps=[], capacity={"limit": CALLS, "period": "day"})
            a.pop("quiet_hours", None)
            a.pop("cooldown_days", None)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def served(built: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    tmp = tmp_path_factory.mktemp("e2e")
    settings = built.model_copy(
        update={
            "port": free_port(),
            "workers": 2,
            "champion_poll_s": 1.0,
            "catalog_path": _scarce_call_catalog(tmp / "catalog.yaml"),
            "at_window_hours": 24 * 365,  # DAY is a fixed date: the window around the clock must hold it
        }
    )
    proc = server.start(settings, tmp / "serve.log", api_key=KEY)
    try:
        yield f"http://127.0.0.1:{settings.port}", settings
    finally:
        server.stop(proc)
    assert proc.returncode is not None
    assert KEY not in (tmp / "serve.log").read_text()  # the key is never logged


@pytest.fixture
def client(served: tuple[str, Settings]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], timeout=10, headers={"X-API-Key": KEY}) as c:
        yield c


def test_health_without_key_and_everything_else_with_it(served: tuple[str, Settings]) -> None:
    base = served[0]
    assert httpx.get(f"{base}/livez").status_code == 200
    assert httpx.get(f"{base}/readyz").status_code == 200
    r = httpx.post(f"{base}/decide", json={"customer_id": "C0000005"})
    assert (r.status_code, r.json()) == (401, {"error": "missing API key"})
    assert httpx.get(f"{base}/metrics", headers={"X-API-Key": "nope"}).status_code == 401
    assert httpx.get(f"{base}/model", headers={"X-API-Key": KEY}).json()["feature_service"] == "nexttouch_v1"


def test_the_openapi_page_the_demo_points_to(served: tuple[str, Settings]) -> None:
    base = served[0]
    page = httpx.get(f"{base}/", timeout=10)
    assert page.status_code == 200 and "swagger" in page.text.lower()
    paths = httpx.get(f"{base}/docs.json", timeout=10).json()["paths"]
    assert {"/decide", "/decide/batch", "/feedback", "/events"} <= set(paths)


def test_decisions_over_http(client: httpx.Client) -> None:
    known = client.post("/decide", json={"customer_id": "C0000005"})
    unknown = client.post("/decide", json={"customer_id": "C9999999"})
    malformed = client.post("/decide", json={"customer": "C0000005"})
    not_json = client.post("/decide", content=b"\x00\xff", headers={"content-type": "application/json"})
    assert known.status_code == 200, known.text
    assert known.json()["fallback"] is False and known.json()["action"] in known.json()["eligible"]
    assert unknown.status_code == 200 and unknown.json()["fallback"] is True
    assert malformed.status_code == 400 and "Extra inputs are not permitted" in malformed.text
    assert 400 <= not_json.status_code < 500
    assert known.json()["decision_id"] != unknown.json()["decision_id"]


def test_feedback_over_http(client: httpx.Client) -> None:
    decision = client.post("/decide", json={"customer_id": "C0000006"}).json()
    fb = {"decision_id": decision["decision_id"], "outcome": 0}
    assert client.post("/feedback", json=fb).json()["status"] == "recorded"
    assert client.post("/feedback", json=fb).json()["status"] == "unchanged"
    assert client.post("/feedback", json={**fb, "decision_id": "unknown"}).status_code == 404


def test_concurrent_requests_on_two_workers_never_exceed_capacity(
    served: tuple[str, Settings], client: httpx.Client
) -> None:
    settings = served[1]
    customers = pd.read_parquet(settings.raw_dir / "customers.parquet")
    consenting = customers.loc[customers["call_consent"] == 1, "customer_id"].head(40).tolist()
    assert len(consenting) == 40

    def decide(cid: str) -> dict:
        r = client.post("/decide", json={"customer_id": cid, "at": DAY})
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(decide, consenting))
    calls = [a for a in answers if a["action"] == "advisor_call"]
    assert len(calls) == CALLS
    refused = [a for a in answers if any("advisor_call removed: no capacity left" in r for r in a["reasons"])]
    assert len(refused) >= 25  # everyone else wanted the call (a few explored another action: ~5%)
    for a in answers:
        if a["action"] != "advisor_call":
            assert a in refused or a["explored"]
    for a in refused:
        assert a["action"] != "advisor_call" and "advisor_call" not in a["eligible"]
    batch = client.post("/decide/batch", json={"customers": [{"customer_id": c} for c in consenting], "at": DAY})
    assert batch.status_code == 200, batch.text
    assert not [d for d in batch.json()["decisions"] if d["action"] == "advisor_call"]  # all 5 are taken
    metrics = client.get("/metrics").text
    assert 'nexttouch_capacity_refused_total{action="advisor_call"}' in metrics


def test_a_new_champion_is_served_without_restart_or_failed_request(
    served: tuple[str, Settings], client: httpx.Client
) -> None:
    from mlflow import MlflowClient

    from nexttouch.tracking import configure_mlflow

    settings = served[1]
    configure_mlflow(settings)
    registry = MlflowClient()
    old = registry.get_model_version_by_alias(settings.model_name, settings.champion_alias)
    new = registry.create_model_version(settings.model_name, source=old.source, run_id=old.run_id)
    old_v, new_v = str(old.version), str(new.version)
    seen: Counter[str] = Counter()
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=served[0], timeout=10, headers={"X-API-Key": KEY}) as c:
            i = 0
            while not stop.is_set():
                i += 1
                r = c.post("/decide", json={"customer_id": f"C{i % 300 + 1:07d}"})
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                else:
                    seen[r.json()["model_version"]] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        registry.set_registered_model_alias(settings.model_name, settings.champion_alias, new.version)
        deadline = time.monotonic() + 60  # each worker loads the model itself: slow on a loaded machine
        while time.monotonic() < deadline and client.get("/model").json()["model_version"] != new_v:
            time.sleep(0.2)
        while time.monotonic() < deadline and _swaps(client) < 2:  # the other worker loads it too
            time.sleep(0.2)
        before = seen[new_v]
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
        registry.set_registered_model_alias(settings.model_name, settings.champion_alias, old.version)
    assert errors == []
    assert seen[old_v] > 0 and seen[new_v] > before  # the old one served, then the new one
    assert set(seen) == {old_v, new_v}
    assert _swaps(client) >= 2  # both workers swapped (and back, maybe, by now)


def _swaps(client: httpx.Client) -> float:
    """Champion swaps so far, summed over the workers (BentoML aggregates their Prometheus metrics)."""
    metrics = client.get("/metrics").text.splitlines()
    (swaps,) = [float(line.split()[1]) for line in metrics if line.startswith("nexttouch_champion_swaps_total ")]
    return swaps


def test_every_answered_decision_is_in_the_log(served: tuple[str, Settings], client: httpx.Client) -> None:
    import sqlite3

    ids = [client.post("/decide", json={"customer_id": f"C{i:07d}"}).json()["decision_id"] for i in range(1, 21)]
    with sqlite3.connect(f"file:{served[1].decision_log}?mode=ro", uri=True) as db:
        found = db.execute(f"SELECT COUNT(*) FROM decisions WHERE decision_id IN ({','.join('?' * 20)})", ids)
        assert found.fetchone() == (20,)


def test_bentoml_build_makes_a_bento(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run(
        [bentoml, "build", "-f", "serving/bentofile.yaml", "-o", "tag", "."],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (bento,) = [p for p in (tmp_path / "home" / "bentos" / "nexttouch").iterdir() if p.name != "latest"]
    assert (bento / "src" / "serving" / "service.py").exists() and (
        bento / "src" / "nexttouch" / "catalog.yaml"
    ).exists()
    assert (bento / "src" / "nexttouch" / "engine" / "engine.py").exists()  # subpackages too
    assert not (bento / "src" / "tests").exists() and not (bento / "src" / "data").exists()

    def pins(path: Path) -> set[str]:  # BentoML rewrites the markers' spelling: compare name==version
        return {line.split(";")[0].strip() for line in path.read_text().splitlines() if line.strip()}

    assert pins(root / "serving" / "requirements.txt") <= pins(bento / "env" / "python" / "requirements.txt")
    # Built from serving/ (where the bentofile is), the shared packages are outside the context: it stops.
    wrong = subprocess.run(
        [bentoml, "build"], cwd=root / "serving", env=env, capture_output=True, text=True, timeout=180
    )
    assert wrong.returncode != 0 and "serving/requirements.txt not found" in wrong.stderr
    spec = yaml.safe_load((bento / "bento.yaml").read_text())
    assert spec["service"] == "serving.service:NextTouch"
    assert {"/decide", "/decide/batch", "/feedback", "/events"} <= {api["route"] for api in spec["schema"]["routes"]}
