"""The production decision log on the real PostgreSQL at 127.0.0.1:5432, in a throwaway database."""

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import psycopg

from nexttouch.catalog import Catalog
from serving import capacity
from serving.decision_log import DecisionLog, Feedback
from tests.test_capacity import _limited
from tests.test_decision_log import _answer


def test_decisions_feedback_and_export_on_postgres(database: str, tmp_path: Path) -> None:
    log = DecisionLog(database)
    log.record(_answer("d1"), {"channel": "app"})
    log.record(_answer("d2"), {})
    log.record(_answer("d3", customer_id=None), {})
    log.close()
    log = DecisionLog(database)  # committed before record() returned: still there after a restart
    assert log.feedback("d1", 1.0) is Feedback.RECORDED
    assert log.feedback("d1", 1.0) is Feedback.UNCHANGED
    assert log.feedback("d1", 0.0) is Feedback.CONFLICT
    assert log.feedback("nope", 1.0) is Feedback.UNKNOWN
    exported = pd.read_parquet(log.export(tmp_path))
    assert exported["decision_id"].tolist() == ["d1", "d2"]
    assert exported["propensity"].tolist() == [0.95, 0.95]  # double precision, not float4
    assert exported["decided_at"].iloc[0] == pd.Timestamp(datetime(2026, 10, 1, 9, tzinfo=UTC))
    with psycopg.connect(database) as conn:
        row = conn.execute("SELECT context, fallback FROM decisions WHERE decision_id = 'd1'").fetchone()
    assert (json.loads(row[0]), row[1]) == ({"channel": "app"}, 0)
    log.close()


def test_postgres_capacity_is_exact_under_concurrent_workers(database: str, catalog: Catalog) -> None:
    call = _limited(catalog, "advisor_call", 7)
    logs = [DecisionLog(database) for _ in range(3)]

    def one(i: int) -> int:
        return logs[i % 3].run(lambda tx: capacity.take(tx, call, "2026-11-01", "region=north"))

    with ThreadPoolExecutor(12) as pool:
        assert sum(pool.map(one, range(60))) == 7
    for log in logs:
        log.close()
    again = DecisionLog(database)
    assert again.run(lambda tx: capacity.used(tx, "advisor_call", "2026-11-01")) == {"region=north": 7}
    assert again.run(lambda tx: capacity.take(tx, call, "2026-11-01", "region=north")) == 0
    again.close()


def test_posteriors_are_learnt_and_read_on_postgres(database: str, catalog: Catalog) -> None:
    """Replicas on PostgreSQL share each customer's posterior: what one learns, another reads."""
    import numpy as np

    from serving import affinity

    log = DecisionLog(database)
    log.record(_answer("d1"), {})
    log.record(_answer("d2"), {})
    prior_sd = np.full(len(catalog.names), 1.0)
    assert log.run(lambda tx: affinity.learn(tx, catalog, "d1", 0.0, prior_sd))
    assert log.run(lambda tx: affinity.learn(tx, catalog, "d2", 0.0, prior_sd))
    other = DecisionLog(database)  # another replica's connection
    own = other.run(lambda tx: affinity.read(tx, catalog, ["C1", "C9"], prior_sd))
    push = catalog.names.index("push")
    assert own.outcomes[0, push] == 2 and own.mean[0, push] < 0
    assert own.outcomes[1].sum() == 0 and (own.mean[1] == 0).all()  # C9: the prior
    log.close()
    other.close()
