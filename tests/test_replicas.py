"""Two replicas as on two hosts: `bentoml serve` processes with working and lock directories of their own, sharing
Redis (127.0.0.1:6379, db 14), PostgreSQL (decision and event log, capacity ledger, Feast's SQL registry) and an
`mlflow server` on PostgreSQL. Under concurrent load on both: capacity is never oversold, a touch posted to one is
seen by both, a promoted champion is picked up by both without a failed request, and a replica killed with
SIGKILL loses no decision a client received while the other keeps answering.

The tests run in file order on one pair of replicas.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from benchmarks import soak
from nexttouch.catalog import Catalog
from nexttouch.settings import Settings
from tests.production import deployment, replica_host
from tests.reliability import Service
from tests.test_e2e_server import CALLS, _scarce_call_catalog

pytestmark = [pytest.mark.slow, pytest.mark.service]

REDIS_DB = 14
DAY = "2026-12-24T12:00:00Z"  # the capacity test's day: no other decision is made on it
RATE = 8.0  # requests/s per replica under load: both replicas and the load share 2 cores with others


@pytest.fixture(scope="module")
def trainer(built: Settings, catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with deployment(tmp_path_factory.mktemp("replicas"), catalog, REDIS_DB, source=built) as settings:
        yield settings


@pytest.fixture(scope="module")
def replicas(trainer: Settings) -> Iterator[tuple[Service, Service]]:
    base = trainer.project_dir.parent
    scarce = _scarce_call_catalog(base / "catalog.yaml")
    pair = tuple(
        Service(
            replica_host(
                trainer,
                base / f"host-{name}",
                catalog_path=scarce,
                champion_poll_s=1.0,
                at_window_hours=24 * 365,  # DAY is a fixed date
            ),
            base / f"logs-{name}",
        )
        for name in ("a", "b")
    )
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Service.start, pair))
        yield pair  # type: ignore[misc]
    finally:
        with ThreadPoolExecutor(2) as pool:  # both drain at once
            list(pool.map(Service.stop, pair))


@pytest.fixture(scope="module")
def customers(trainer: Settings) -> list[str]:
    return pd.read_parquet(trainer.raw_dir / "customers.parquet")["customer_id"].tolist()


def _logged(url: str, ids: list[str]) -> set[str]:
    with psycopg.connect(url) as db:
        return {r[0] for r in db.execute("SELECT decision_id FROM decisions WHERE decision_id = ANY(%s)", [ids])}


def test_capacity_is_exact_across_replicas(replicas: tuple[Service, Service], trainer: Settings) -> None:
    frame = pd.read_parquet(trainer.raw_dir / "customers.parquet")
    consenting = frame.loc[frame["call_consent"] == 1, "customer_id"].head(60).tolist()
    clients = [svc.client() for svc in replicas]

    def decide(i: int) -> tuple[int, dict]:
        r = clients[i % 2].post("/decide", json={"customer_id": consenting[i], "at": DAY})
        assert r.status_code == 200, r.text
        return i % 2, r.json()

    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(decide, range(len(consenting))))
    finally:
        for c in clients:
            c.close()
    calls = Counter(replica for replica, a in answers if a["action"] == "advisor_call")
    assert sum(calls.values()) == CALLS, calls
    refused = Counter(k for k, a in answers if any("advisor_call removed: no capacity left" in r for r in a["reasons"]))
    assert sum(refused.values()) >= len(consenting) - CALLS - 10  # the rest wanted it (~5% explore another action)
    assert refused[0] and refused[1], refused  # each replica refused calls once the ledger both write was full
    assert _logged(trainer.decision_log_url, [a["decision_id"] for _, a in answers]) == {
        a["decision_id"] for _, a in answers
    }
    print(f"\ncapacity {CALLS}: granted {dict(calls)}, refused {dict(refused)} by replica")


def _cooled_down(answer: dict) -> bool:
    return any(r.startswith("event_invite removed: cool-down") for r in answer["reasons"])


@contextmanager
def _load_on_both(replicas: tuple[Service, Service], customers: list[str], seconds: float) -> Iterator[None]:
    """The soak's mix on both replicas for ``seconds`` while the block runs; no request of it may fail."""
    results: list[soak.SoakResult] = []

    def drive(svc: Service, seed: int) -> None:
        results.append(soak.run(svc.url, seconds, RATE, customers, api_key=svc.key, seed=seed))

    loads = [threading.Thread(target=drive, args=(svc, 10 + k)) for k, svc in enumerate(replicas)]
    for t in loads:
        t.start()
    try:
        yield
    finally:
        for t in loads:
            t.join()
    assert [r.errors for r in results] == [[], []]
    assert sum(r.total for r in results) == 2 * int(seconds * RATE)


def test_a_touch_posted_to_either_replica_is_seen_by_both_at_once(
    replicas: tuple[Service, Service], customers: list[str]
) -> None:
    """An event attended puts event invitations on a week's cool-down: the next decision on either replica says so."""
    a, b = replicas
    watched, others = customers[:100], customers[100:]  # the load's touches never reach the watched customers
    with a.client() as ca, b.client() as cb, _load_on_both(replicas, others, 4.0):
        fresh = []
        for cid in watched:  # customers an invitation is open to on both replicas
            answers = [c.post("/decide", json={"customer_id": cid}).json() for c in (ca, cb)]
            if all("event_invite" in x["eligible"] for x in answers):
                fresh.append(cid)
            if len(fresh) == 2:
                break
        assert len(fresh) == 2
        at = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
        for cid, poster in zip(fresh, (ca, cb), strict=True):
            event = {
                "event_id": f"replica-{cid}",
                "customer_id": cid,
                "occurred_at": at,
                "touch_type": "event_attended",
            }
            posted = poster.post("/events", json={"events": [event]})
            assert posted.status_code == 200 and posted.json()["accepted"] == 1, posted.text
            assert posted.json()["online_update_deferred"] is False
            seen = [c.post("/decide", json={"customer_id": cid}).json() for c in (ca, cb)]
            assert all(_cooled_down(x) and "event_invite" not in x["eligible"] for x in seen), seen


def test_a_promoted_champion_is_served_by_both_without_a_failed_request(
    replicas: tuple[Service, Service], trainer: Settings
) -> None:
    import mlflow
    from mlflow import MlflowClient

    from nexttouch.registry_io import alias_version
    from nexttouch.tracking import configure_mlflow
    from training.promotion import actor, promote

    old = alias_version(trainer)
    configure_mlflow(trainer)
    source = MlflowClient().get_model_version(trainer.model_name, old)
    # A new version of the same logged model, as a retrain registers one; then the alias moves as the nightly
    # job moves it.
    made = mlflow.register_model(source.source, trainer.model_name)
    new = str(made.version)
    seen: list[Counter[str]] = [Counter(), Counter()]
    errors: list[str] = []
    stop = threading.Event()

    def load(k: int) -> None:
        with replicas[k].client() as c:
            i = 0
            while not stop.is_set():
                i += 1
                r = c.post("/decide", json={"customer_id": f"C{i % 300 + 1:07d}"})
                if r.status_code != 200:
                    errors.append(f"replica {k}: {r.status_code} {r.text[:200]}")
                else:
                    seen[k][r.json()["model_version"]] += 1
                time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(k,)) for k in (0, 1) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        promote(trainer, new, actor("nexttouch retrain"), "replica test: the nightly job's promotion path")
        started = time.monotonic()
        deadline = started + 30
        for svc in replicas:
            with svc.client() as c:
                while c.get("/model").json()["model_version"] != new and time.monotonic() < deadline:
                    time.sleep(0.2)
        took = time.monotonic() - started
        before = [s[new] for s in seen]
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    for k in (0, 1):
        assert seen[k][old] > 0 and seen[k][new] > before[k], seen  # the old one served, then the new one
        assert set(seen[k]) == {old, new}
    print(
        f"\nv{new} promoted: served by both replicas within {took:.1f}s; "
        f"{sum(c.total() for c in seen)} decisions, 0 failed"
    )


def test_kill_9_of_one_replica_under_load_loses_nothing_and_the_other_keeps_answering(
    replicas: tuple[Service, Service], trainer: Settings, customers: list[str]
) -> None:
    a, b = replicas
    results: dict[str, soak.SoakResult] = {}

    def drive(name: str, svc: Service) -> None:
        results[name] = soak.run(svc.url, 8.0, RATE, customers, api_key=svc.key, seed=1 if name == "a" else 2)

    loads = [threading.Thread(target=drive, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in loads:
        t.start()
    time.sleep(4.0)
    a.kill9()
    for t in loads:
        t.join()
    received = results["a"].decision_ids + results["b"].decision_ids
    assert len(results["a"].decision_ids) >= 5 and results["a"].errors  # answers before the kill, refusals after
    assert results["b"].errors == [] and results["b"].total == int(8.0 * RATE)
    assert _logged(trainer.decision_log_url, received) == set(received)
    with b.client() as c:
        after = c.post("/decide", json={"customer_id": "C0000007"})
    assert after.status_code == 200 and _logged(trainer.decision_log_url, [after.json()["decision_id"]])
    print(
        f"\nkill -9 of replica a: {len(results['a'].decision_ids)} + {len(results['b'].decision_ids)} decisions "
        f"received, all in the log; replica b: {results['b'].total} requests, 0 errors"
    )


def test_the_replicas_shared_nothing_on_disk(replicas: tuple[Service, Service], trainer: Settings) -> None:
    """Each host downloaded the model from the tracking server into its own cache; neither has a decision log,
    online store or registry file of its own."""
    for svc in replicas:
        root: Path = svc.settings.project_dir
        assert list((root / "models").rglob("MLmodel")), root
        assert not [p for p in (root / "data").rglob("*") if p.suffix in {".db", ".sqlite"}], root
    assert not (trainer.data_dir / "feast" / "registry.redis.db").exists()
