"""Real-time touch events: keep them for the nightly ingest and update the online contact state now."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from nexttouch.api import EventsRequest, EventsResponse
from nexttouch.parquet import write_parquet
from nexttouch.schemas import CUSTOMER_ID, EVENT_TIMESTAMP, TIERS, TOUCH_TYPES

PUSH_SOURCE = "contact_push"
STATE_VIEW = "contact_state"
LAST = {t: f"last_{t}_at" for t in TIERS}
LAST_CONTACT = "last_contact_at"


class ContactUpdater:
    """Applies posted touches to the ``contact_state`` feature view through its Feast push source."""

    def __init__(self, store, inbox: Path, resolve: Callable[[str, str], str | None]) -> None:
        self.store = store
        self.inbox = inbox
        self.resolve = resolve
        self.refs = [f"{STATE_VIEW}:{c}" for c in (*LAST.values(), LAST_CONTACT)]
        self._lock = threading.Lock()  # read-modify-write of a customer's state must not interleave

    def apply(self, request: EventsRequest) -> EventsResponse:
        rows = []
        for e in request.events:
            cid = e.customer_id or self.resolve(e.source.system, e.source.key)  # type: ignore[union-attr]
            touch = TOUCH_TYPES[e.touch_type]
            rows.append(
                {
                    "event_id": e.event_id,
                    "occurred_at": e.occurred_at.astimezone(UTC),
                    "source_system": e.source.system if e.source else "api",
                    "source_key": e.source.key if e.source else e.customer_id,
                    "touch_type": e.touch_type,
                    "tier": touch.tier,
                    "direction": touch.direction,
                    "amount": e.amount,
                    "decision_id": e.decision_id,
                    CUSTOMER_ID: cid,
                }
            )
        events = pd.DataFrame(rows)
        self._keep(events)  # durable first: nothing posted is lost, even if the online update fails
        known = events.loc[events[CUSTOMER_ID].notna()]
        if len(known):
            with self._lock:
                self._push(known)
        return EventsResponse(
            accepted=len(events),
            customers_updated=int(known[CUSTOMER_ID].nunique()),
            unresolved=events.loc[events[CUSTOMER_ID].isna(), "event_id"].tolist(),
        )

    def _keep(self, events: pd.DataFrame) -> None:
        """Write the batch to the inbox that `nexttouch ingest data/inbox` loads (with quarantine)."""
        name = f"events-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
        write_parquet(events.drop(columns=[CUSTOMER_ID]), self.inbox / name)

    def _push(self, events: pd.DataFrame) -> None:
        latest = {
            col: events.loc[mask].groupby(CUSTOMER_ID)["occurred_at"].max()
            for col, mask in (
                *((LAST[t], events["tier"] == t) for t in TIERS),
                (LAST_CONTACT, events["direction"] == "out"),
            )
        }
        customers = sorted(events[CUSTOMER_ID].unique())
        current = self.store.get_online_features(
            features=self.refs, entity_rows=[{CUSTOMER_ID: c} for c in customers]
        ).to_dict()
        state = pd.DataFrame(current).set_index(CUSTOMER_ID).reindex(customers)
        for col, newest in latest.items():
            old = pd.to_datetime(state[col], utc=True)
            state[col] = pd.concat([old, newest.reindex(customers)], axis=1).max(axis=1)
        state[EVENT_TIMESTAMP] = pd.Timestamp.now(tz="UTC")
        self.store.push(PUSH_SOURCE, state.reset_index())
