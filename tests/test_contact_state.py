"""ContactUpdater without Feast: a store stub that hangs, then fails, as a Redis going away does."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from nexttouch.api import EventsRequest
from serving.contact_state import ContactUpdater


def test_deferred_touches_stay_counted_while_an_update_is_in_flight() -> None:
    entered, release = threading.Event(), threading.Event()

    class Hanging:
        def get_online_features(self, **_: object) -> None:
            entered.set()
            release.wait(5)
            raise ConnectionError("Connection refused")

    kept: list[pd.DataFrame] = []
    updater = ContactUpdater(Hanging(), kept.append, lambda _s, key: key, timeout_s=0.05, retry_s=60)
    try:
        body = {"event_id": "e-1", "occurred_at": datetime.now(UTC) - timedelta(hours=1), "customer_id": "C1"}
        answer = updater.apply(EventsRequest.model_validate({"events": [{**body, "touch_type": "app_session"}]}))
        assert answer.online_update_deferred is True and len(kept) == 1
        assert entered.wait(5)
        assert updater.pending == 1  # the update is still trying: the touch is counted, not lost from view
        release.set()
        time.sleep(0.2)
        assert updater.pending == 1  # it failed: kept for the next try
    finally:
        release.set()
        updater.close()


class Recording:
    """An online store that keeps what is pushed; ``poison`` customers make a push fail as bad data does."""

    def __init__(self, poison: frozenset[str] = frozenset()) -> None:
        self.poison = poison
        self.pushed: list[str] = []

    def get_online_features(self, features: list[str], entity_rows: list[dict]) -> object:
        ids = [r["customer_id"] for r in entity_rows]
        columns = {f.split(":")[1]: [None] * len(ids) for f in features}

        class Response:
            def to_dict(self) -> dict:
                return {"customer_id": ids, **columns}

        return Response()

    def push(self, _source: str, frame: pd.DataFrame) -> None:
        if self.poison & set(frame["customer_id"]):
            raise TypeError("cannot compare tz-aware and tz-naive")
        self.pushed += frame["customer_id"].tolist()


def _request(*events: tuple[str, str, datetime]) -> EventsRequest:
    bodies = [{"event_id": i, "customer_id": c, "occurred_at": t, "touch_type": "app_session"} for i, c, t in events]
    return EventsRequest.model_validate({"events": bodies})


def test_a_frame_that_cannot_be_pushed_does_not_hold_back_later_ones() -> None:
    store = Recording(poison=frozenset({"C-bad"}))
    updater = ContactUpdater(store, lambda _e: None, lambda _s, key: key, timeout_s=2.0, retry_s=60)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    try:
        first = updater.apply(_request(("e-1", "C-bad", hour_ago)))
        assert first.online_update_deferred is True and updater.pending == 1
        for i in range(5):  # every later update goes through, though the bad frame is retried with each
            later = updater.apply(_request((f"e-{i + 2}", f"C-{i}", hour_ago)))
            assert (later.online_update_deferred, later.customers_updated) == (False, 1)
        assert store.pushed[-5:] == [f"C-{i}" for i in range(5)]
        assert updater.pending == 1  # still only the one touch that cannot be pushed
    finally:
        updater.close()


def test_unknown_customers_and_unstorable_times_never_wait_for_an_online_update() -> None:
    store = Recording()
    known = {"C1"}
    updater = ContactUpdater(store, lambda _e: None, lambda _s, key: key if key in known else None, retry_s=60)
    try:
        made_up = [(f"m-{i}", f"C-made-up-{i}", datetime.now(UTC) - timedelta(minutes=5)) for i in range(50)]
        answer = updater.apply(_request(*made_up))
        assert (answer.accepted, answer.customers_updated, len(answer.unresolved)) == (50, 0, 50)
        assert updater.pending == 0 and store.pushed == []
        # A time no stage can hold (as requests could carry before they were bounded) is dropped, not kept.
        ancient = EventsRequest.model_construct(
            events=[
                _request(("a-1", "C1", datetime.now(UTC)))
                .events[0]
                .model_copy(update={"occurred_at": datetime(1500, 1, 1, tzinfo=UTC)})
            ]
        )
        assert updater.apply(ancient).online_update_deferred is False
        assert updater.pending == 0 and store.pushed == []
        assert updater.apply(_request(("n-1", "C1", datetime.now(UTC)))).customers_updated == 1
        assert store.pushed == ["C1"]
    finally:
        updater.close()


def test_a_kept_event_id_is_neither_kept_nor_applied_again() -> None:
    store = Recording()
    seen: set[str] = set()

    def keep(events: pd.DataFrame) -> np.ndarray:  # as the event log decides: first time an id is seen
        kept = ~events["event_id"].duplicated().to_numpy() & ~events["event_id"].isin(seen).to_numpy()
        seen.update(events["event_id"])
        return kept

    updater = ContactUpdater(store, keep, lambda _s, key: key, retry_s=60)
    at = datetime.now(UTC) - timedelta(minutes=5)
    try:
        first = updater.apply(_request(("d-1", "C1", at), ("d-1", "C1", at), ("d-2", "C2", at)))
        retry = updater.apply(_request(("d-1", "C1", at), ("d-2", "C2", at)))
    finally:
        updater.close()
    assert (first.accepted, first.duplicates, first.customers_updated) == (2, 1, 2)
    assert (retry.accepted, retry.duplicates, retry.customers_updated) == (0, 2, 0)
    assert sorted(store.pushed) == ["C1", "C2"]


def _made() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("nexttouch_events_online_deferred_made_total") or 0.0


def test_a_deferred_update_that_gets_through_late_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Slow(Recording):
        def push(self, source: str, frame: pd.DataFrame) -> None:
            time.sleep(0.3)  # the answer stops waiting after 0.05 s; the update itself goes on
            super().push(source, frame)

    store, before = Slow(), _made()
    updater = ContactUpdater(store, lambda _e: None, lambda _s, key: key, timeout_s=0.05, retry_s=60)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    try:
        with caplog.at_level(logging.INFO, logger="nexttouch.serving"):
            answer = updater.apply(_request(("e-1", "C1", hour_ago), ("e-2", "C2", hour_ago)))
            assert answer.online_update_deferred is True and _made() == before
            deadline = time.monotonic() + 5
            while _made() == before and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        updater.close()
    assert _made() == before + 2 and sorted(store.pushed) == ["C1", "C2"]
    made = [r for r in caplog.records if "deferred online contact update made" in r.getMessage()]
    assert [(r.levelname, r.getMessage()) for r in made] == [
        ("INFO", "deferred online contact update made: 2 events (1 deferred updates)")
    ]


def test_a_deferred_update_made_by_the_retry_is_counted_once() -> None:
    class Down(Recording):
        up = False

        def push(self, source: str, frame: pd.DataFrame) -> None:
            if not self.up:
                raise ConnectionError("Connection refused")
            super().push(source, frame)

    store, before = Down(), _made()
    updater = ContactUpdater(store, lambda _e: None, lambda _s, key: key, timeout_s=1.0, retry_s=0.05)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    try:
        for i in range(3):  # three answers say deferred; the waiting touches merge into one per customer
            assert updater.apply(_request((f"e-{i}", "C1", hour_ago))).online_update_deferred is True
        assert updater.pending == 1 and _made() == before
        store.up = True
        deadline = time.monotonic() + 5
        while updater.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # more retry rounds: nothing is counted twice
    finally:
        updater.close()
    assert updater.pending == 0 and store.pushed == ["C1"] and _made() == before + 3


def test_the_made_later_line_reaches_a_server_that_logs_warnings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving import contact_state

    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)  # as BentoML's server configures it
    monkeypatch.setattr(contact_state.log, "level", logging.NOTSET)
    logging.getLogger().manager._clear_cache()  # levels set as attributes: forget cached answers
    updater = ContactUpdater(Recording(), lambda _e: None, lambda _s, key: key, retry_s=60)
    updater.close()
    assert contact_state.log.isEnabledFor(logging.INFO)
