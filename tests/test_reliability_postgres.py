"""kill -9 under load on the production decision log: PostgreSQL at 127.0.0.1:5432, in a throwaway database.

The same promise as the SQLite test in test_reliability_service.py: every decision id a client received is
in the log after the crash, no row is half written, and the restarted service serves again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pandas as pd
import psycopg
import pytest

from nexttouch.settings import Settings
from tests.reliability import Service, clone_project

pytestmark = [pytest.mark.slow, pytest.mark.service]

RATE = 8.0


@pytest.fixture
def service(built: Settings, database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    base = tmp_path_factory.mktemp("reliability-pg")
    settings = clone_project(built, base / "project", decision_log_url=database)
    svc = Service(settings, base / "logs").start()
    yield svc
    svc.stop()


def _missing(url: str, received: list[str]) -> list[str]:
    with psycopg.connect(url) as db:
        logged = {r[0] for r in db.execute("SELECT decision_id FROM decisions WHERE decision_id = ANY(%s)", [received])}
    return sorted(set(received) - logged)


def test_kill_9_under_load_loses_no_decision_on_postgres(service: Service) -> None:
    url = service.settings.decision_log_url
    customers = pd.read_parquet(service.settings.raw_dir / "customers.parquet")["customer_id"].tolist()
    received = service.kill9_under_load(customers, RATE, seed=3)
    assert _missing(url, received) == []
    with psycopg.connect(url) as db:
        rows = db.execute("SELECT decision_id, decided_at, action, propensity, net_values, context FROM decisions")
        rows = rows.fetchall()
    assert len(rows) >= len(received)
    for decision_id, decided_at, action, propensity, values, context in rows:
        assert decision_id and action and 0 < propensity <= 1, decision_id
        pd.Timestamp(decided_at)
        assert isinstance(json.loads(values), dict) and isinstance(json.loads(context), dict)

    service.start()
    with service.client() as c:
        again = c.post("/decide", json={"customer_id": "C0000007"})
    assert again.status_code == 200, again.text
    assert _missing(url, [again.json()["decision_id"]]) == []
    print(f"\nPostgreSQL: kill -9 after {len(received)} decisions received: all in the log, {len(rows)} rows complete")
