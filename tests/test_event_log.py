"""Posted touch events: committed to the decision-log database, exported once each, loaded by ingest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from nexttouch.api import EventsRequest
from nexttouch.catalog import Catalog
from nexttouch.ingest import ingest
from nexttouch.settings import Settings
from serving.contact_state import ContactUpdater
from serving.decision_log import DecisionLog
from serving.event_log import COLUMNS, EventLog
from tests.test_ingest import NOW, landing  # noqa: F401  (identity a-1, a-2 -> customers)

ROW = {
    "event_id": "e-1",
    "occurred_at": pd.Timestamp("2026-10-20T10:00:00Z"),
    "source_system": "app",
    "source_key": "a-1",
    "touch_type": "app_like",
    "tier": "tech",
    "direction": "in",
}
EVENTS = [
    {"event_id": "rt-1", "occurred_at": "2026-10-20T10:00:00Z", "source": {"system": "app", "key": "a-1"}},
    {"event_id": "rt-2", "occurred_at": "2026-10-21T10:00:00+02:00", "source": {"system": "app", "key": "a-2"}},
    {"event_id": "rt-3", "occurred_at": "2026-10-21T11:00:00Z", "source": {"system": "app", "key": "zzz"}},
]


@pytest.fixture(params=["sqlite", "postgres"])
def events(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    target = request.getfixturevalue("database") if request.param == "postgres" else tmp_path / "decisions.db"
    log = DecisionLog(target)
    yield EventLog(log)
    log.close()


def _post(events: EventLog, bodies: list[dict]) -> None:
    """Through the service's own code path; no source key resolves in the service, so nothing goes online."""
    updater = ContactUpdater(None, events.keep, lambda _system, _key: None)
    try:
        kinds = [("app_like", None), ("purchase", 12.5), ("app_like", None)]
        payload = [{**b, "touch_type": kinds[i % 3][0], "amount": kinds[i % 3][1]} for i, b in enumerate(bodies)]
        answer = updater.apply(EventsRequest.model_validate({"events": payload}))
    finally:
        updater.close()
    assert answer.accepted == len(bodies)


def test_posted_events_are_exported_once_and_loaded(
    events: EventLog,
    project: Settings,
    catalog: Catalog,
    landing: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    ingest(project, catalog, landing, now=NOW)
    inbox = tmp_path / "inbox"
    _post(events, EVENTS)
    assert events.pending() == 3

    path = events.export(inbox)
    assert path is not None and path.name.startswith("events-log-")
    exported = pd.read_parquet(path)
    assert exported["event_id"].tolist() == ["rt-1", "rt-2", "rt-3"]
    assert exported["occurred_at"].tolist()[1] == pd.Timestamp("2026-10-21T08:00:00Z")
    assert exported["amount"].tolist()[1] == 12.5 and pd.isna(exported["amount"].tolist()[0])
    stored = exported[["source_system", "source_key", "touch_type", "tier", "direction"]].iloc[1].tolist()
    assert stored == ["app", "a-2", "purchase", "high", "in"]
    assert events.export(inbox) is None and events.pending() == 0

    (report,) = ingest(project, catalog, inbox, now=NOW)
    assert (report.rows, report.loaded, report.rejected) == (3, 2, {"unresolvable source key": 1})

    _post(events, [{**EVENTS[0], "event_id": "rt-4"}])
    later = events.export(inbox)
    assert later is not None and later != path and pd.read_parquet(later)["event_id"].tolist() == ["rt-4"]
    (report,) = ingest(project, catalog, inbox, now=NOW)
    assert (report.loaded, report.already_loaded) == (1, 2)


def test_a_crash_before_the_rows_are_marked_loses_nothing_and_loads_nothing_twice(
    project: Settings,
    catalog: Catalog,
    landing: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    ingest(project, catalog, landing, now=NOW)
    log = DecisionLog(tmp_path / "decisions.db")
    events = EventLog(log)
    _post(events, EVENTS[:1])
    first = events.export(tmp_path / "inbox")
    log.run(lambda tx: tx.execute("UPDATE touch_events SET exported_to = NULL"))  # as if the mark never committed
    _post(events, [EVENTS[1]])
    second = events.export(tmp_path / "inbox")
    log.close()
    assert second == first and pd.read_parquet(second)["event_id"].tolist() == ["rt-1", "rt-2"]  # replaced
    (report,) = ingest(project, catalog, tmp_path / "inbox", now=NOW)
    assert (report.rows, report.loaded, report.rejected) == (2, 2, {})


def test_workers_starting_together_create_the_table_once(database: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    logs = [DecisionLog(database) for _ in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            made = list(pool.map(EventLog, logs))
        made[0].keep(pd.DataFrame([{**dict.fromkeys(COLUMNS), **ROW}]))
        assert [e.pending() for e in made] == [1, 1, 1, 1]
    finally:
        for log in logs:
            log.close()


def test_event_ids_are_idempotency_keys(events: EventLog) -> None:
    rows = pd.DataFrame([{**dict.fromkeys(COLUMNS), **ROW, "event_id": i} for i in ("k-1", "k-2", "k-1")])
    assert events.keep(rows).tolist() == [True, True, False]  # the same id twice in one request
    assert events.keep(rows.iloc[:2]).tolist() == [False, False]  # a retry of the request
    assert events.pending() == 2


SET_TIME = "UPDATE touch_events SET occurred_at = ? WHERE event_id = ?"


def test_the_nightly_collect_survives_a_log_holding_times_no_stage_can_hold(
    project: Settings,
    catalog: Catalog,
    landing: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A log written before request times were bounded: `export-log` / `retrain`'s collect skip those rows and
    say so, once for events (they are marked), and everything else loads."""
    from nexttouch.cli import _collect_service_logs
    from serving.decision_log import decision_row, insert_decisions
    from tests.test_decision_log import BAD_TIMES, _answer, _row_at

    ingest(project, catalog, landing, now=NOW)
    log = DecisionLog.open(project)
    good = decision_row(_answer("d-good", customer_id="C1"), {})
    bad = [_row_at(f"d-bad{i}", when) for i, when in enumerate(BAD_TIMES)]
    log.run(lambda tx: insert_decisions(tx, [good, *[(*r[:1], "C1", *r[2:]) for r in bad]]))
    kept = EventLog(log)
    kept.keep(pd.DataFrame([{**dict.fromkeys(COLUMNS), **ROW, "event_id": "ev-good"}]))
    for i, when in enumerate(BAD_TIMES):  # stored as text, as the log held them
        row = {**dict.fromkeys(COLUMNS), **ROW, "event_id": f"ev-bad{i}"}
        kept.keep(pd.DataFrame([row]))
        log.run(lambda tx, w=when, e=f"ev-bad{i}": tx.execute(SET_TIME, (w, e)))
    log.close()

    with caplog.at_level("WARNING", logger="nexttouch.decision_log"):
        exported = _collect_service_logs(project)
    assert pd.read_parquet(exported["decisions"])["decision_id"].tolist() == ["d-good"]
    assert pd.read_parquet(exported["events"])["event_id"].tolist() == ["ev-good"]
    reports = [r.getMessage() for r in caplog.records]
    assert any("decisions export skipped 2 rows" in m and "d-bad0" in m for m in reports), reports
    assert any("events export skipped 2 rows" in m and "ev-bad1" in m for m in reports), reports

    caplog.clear()
    with caplog.at_level("WARNING", logger="nexttouch.decision_log"):
        again = _collect_service_logs(project)
    assert again["events"] is None  # the skipped events were marked: reported once
    assert not any("events export" in r.getMessage() for r in caplog.records)
    reports = ingest(project, catalog, project.data_dir / "inbox", now=NOW)
    assert {r.table: r.rejected for r in reports} == {"events": {}, "decisions": {}}
