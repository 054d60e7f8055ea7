"""ContactUpdater without Feast: a store stub that hangs, then fails, as a Redis going away does."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pandas as pd

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
    updater = ContactUpdater(Hanging(), kept.append, lambda _s, _k: None, timeout_s=0.05, retry_s=60)
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
