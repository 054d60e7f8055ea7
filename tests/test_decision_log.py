"""The SQLite decision log: durable records, idempotent feedback, export in the ingest contract."""

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from nexttouch.api import DecideResponse
from nexttouch.catalog import Catalog
from nexttouch.ingest import ingest
from nexttouch.settings import Settings
from serving.decision_log import DecisionLog, Feedback, decision_row, insert_decisions


def _answer(decision_id: str, customer_id: str | None = "C1") -> DecideResponse:
    return DecideResponse(
        decision_id=decision_id,
        customer_id=customer_id,
        action="push",
        propensity=0.95,
        explored=False,
        values={"none": 1.0, "push": 2.0},
        uplift={"none": 0.0, "push": 1.0},
        p_success={"none": 0.1, "push": 0.2},
        eligible=["none", "push"],
        reasons=[],
        explanation=[],
        cold_start=customer_id is None,
        model_version="3",
        decided_at=datetime(2026, 10, 1, 9, tzinfo=UTC),
    )


def test_a_recorded_decision_survives_reopening(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.db")
    log.record(_answer("d1"), {"channel": "app"})
    log.close()  # as after a crash: the row was committed when record() returned
    again = DecisionLog(tmp_path / "d.db")
    assert again.feedback("d1", 1.0) is Feedback.RECORDED


def test_feedback_is_idempotent_and_refuses_unknown_and_conflicting(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.db")
    log.record(_answer("d1"), {})
    assert log.feedback("nope", 1.0) is Feedback.UNKNOWN
    assert log.feedback("d1", 1.0) is Feedback.RECORDED
    assert log.feedback("d1", 1.0) is Feedback.UNCHANGED
    assert log.feedback("d1", 0.0) is Feedback.CONFLICT


def test_export_feeds_ingest(project: Settings, catalog: Catalog, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    pd.DataFrame({"customer_id": ["C1"], "signup_at": ["2025-01-01T00:00:00Z"]}).to_csv(
        landing / "customers.csv", index=False
    )
    ingest(project, catalog, landing, now=datetime(2026, 11, 1, tzinfo=UTC))
    log = DecisionLog(tmp_path / "d.db")
    log.record(_answer("d1"), {})
    log.record(_answer("d2"), {})
    log.record(_answer("d3", customer_id=None), {})  # unknown source key: nothing to train on
    log.feedback("d1", 1.0)
    path = log.export(tmp_path / "inbox")
    exported = pd.read_parquet(path)
    assert exported["decision_id"].tolist() == ["d1", "d2"]
    assert exported["outcome"].tolist()[0] == 1.0 and pd.isna(exported["outcome"].tolist()[1])
    (report,) = [r for r in ingest(project, catalog, tmp_path / "inbox", now=datetime(2026, 11, 1, tzinfo=UTC))]
    assert (report.table, report.loaded, report.rejected) == ("decisions", 2, {})


def test_concurrent_decisions_share_commits_and_all_are_durable(tmp_path: Path) -> None:
    import sqlite3

    log = DecisionLog(tmp_path / "d.db")
    futures = [
        log.submit(lambda tx, i=i: insert_decisions(tx, [decision_row(_answer(f"d{i}"), {})])) for i in range(300)
    ]
    for f in futures:
        f.result()  # returns only once its commit is done
    assert log.commits < 100  # rows waiting for a commit went into the next one together
    log.close()
    with sqlite3.connect(tmp_path / "d.db") as db:
        assert db.execute("SELECT COUNT(*) FROM decisions").fetchone() == (300,)
    reopened = DecisionLog(tmp_path / "d.db")
    assert reopened.feedback("d299", 0.0) is Feedback.RECORDED
    reopened.close()


def test_decision_rows_hold_each_answers_fields_and_the_shared_context() -> None:
    from zoneinfo import ZoneInfo

    from serving.decision_log import decision_rows

    paris = _answer("d1").model_copy(update={"decided_at": datetime(2026, 10, 1, 11, tzinfo=ZoneInfo("Europe/Paris"))})
    unknown = _answer("d2", None).model_copy(update={"fallback": True, "values": {}})
    rows = decision_rows([dict(paris), dict(unknown)], {"channel": "app"})
    assert rows == [
        (
            "d1",
            "C1",
            "2026-10-01T09:00:00+00:00",
            "push",
            0.95,
            0,
            0,
            0,
            "3",
            '{"none":1.0,"push":2.0}',
            '{"channel":"app"}',
            None,
        ),
        ("d2", None, "2026-10-01T09:00:00+00:00", "push", 0.95, 0, 1, 1, "3", "{}", '{"channel":"app"}', None),
    ]
    assert decision_row(paris, {"channel": "app"}) == rows[0]


def test_decision_ids_are_time_ordered_uuid7s() -> None:
    import time
    import uuid

    from serving.decision_log import new_decision_id, new_decision_ids

    before = time.time_ns() // 1_000_000
    ids = [*new_decision_ids(1000), new_decision_id()]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for i in ids:
        u = uuid.UUID(hex=i)
        assert (len(i), u.version, u.variant) == (32, 7, uuid.RFC_4122)
        assert before <= int(i[:12], 16) <= after  # 48 bits of Unix milliseconds first
    assert new_decision_ids(0) == []


BAD_TIMES = ("9999-12-31T12:00:00+00:00", "1500-01-01T00:00:00+00:00")


def _row_at(decision_id: str, decided_at: str) -> tuple:
    """A log row as an unbounded request could write it before times were bounded."""
    row = list(decision_row(_answer(decision_id), {}))
    row[2] = decided_at
    return tuple(row)


def test_export_skips_and_reports_times_no_stage_can_hold(tmp_path: Path, caplog) -> None:
    log = DecisionLog(tmp_path / "d.db")
    log.record(_answer("good"), {})
    rows = [_row_at(f"bad{i}", when) for i, when in enumerate(BAD_TIMES)]
    log.run(lambda tx: insert_decisions(tx, rows))
    with caplog.at_level("WARNING", logger="nexttouch.decision_log"):
        path = log.export(tmp_path / "inbox")
    log.close()
    assert pd.read_parquet(path)["decision_id"].tolist() == ["good"]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "decisions export skipped 2 rows whose decided_at is not between 1900-01-01 and 2200-01-01" in warning
    assert "bad0" in warning and "bad1" in warning


def test_feedback_dated_before_its_decision_is_refused(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.db")
    log.record(_answer("d1"), {})  # decided 2026-10-01 09:00 UTC
    assert log.feedback("d1", 1.0, datetime(2026, 10, 1, 8, 59, tzinfo=UTC)) is Feedback.BEFORE_DECISION
    assert log.feedback("d1", 1.0, datetime(2026, 10, 1, 9, 0, tzinfo=UTC)) is Feedback.RECORDED
    log.close()


def test_a_write_still_waiting_for_the_lock_at_its_deadline_fails_and_leaves_no_trace(tmp_path: Path) -> None:
    """Another process holds the write lock past the request's deadline: the request's write gives up before
    the deadline (a 503, not a 504) and is not committed once the lock frees."""
    import sqlite3
    import time

    from serving import deadline

    path = tmp_path / "d.db"
    log = DecisionLog(path, margin_s=0.5)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    token = deadline.start(1.5)  # as the request timeout sets it when a request starts
    try:
        started = time.monotonic()
        future = log.submit(lambda tx: insert_decisions(tx, [decision_row(_answer("late"), {})]))
    finally:
        deadline.reset(token)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        future.result(timeout=10)
    assert time.monotonic() - started < 1.5  # before the request's deadline
    other.execute("COMMIT")
    other.close()
    log.record(_answer("after"), {})  # the log works again at once
    log.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT decision_id FROM decisions").fetchall() == [("after",)]


def test_an_operation_whose_request_gave_up_while_queued_is_not_run(tmp_path: Path) -> None:
    from serving import deadline
    from serving.decision_log import LogTimeout

    log = DecisionLog(tmp_path / "d.db", margin_s=0.5)
    token = deadline.start(0.2)  # less than the margin: its time is up before it reaches the writer
    try:
        future = log.submit(lambda tx: insert_decisions(tx, [decision_row(_answer("gone"), {})]))
    finally:
        deadline.reset(token)
    with pytest.raises(LogTimeout):
        future.result(timeout=5)
    assert log.feedback("gone", 1.0) is Feedback.UNKNOWN
    log.close()
