"""Real-time touch events: keep them for the nightly ingest and update the online contact state now.

The events are committed first (``keep``: the event log, serving/event_log.py), so nothing posted is
lost. The online update then gets a short time (``timeout_s``): an online store that is down or slow
(redis-py retries for ~4 s) makes it *deferred*: the answer says so at once, and the update is retried
with the next events and in the background until the store answers.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path

import pandas as pd

from nexttouch.api import EventsRequest, EventsResponse
from nexttouch.schemas import CUSTOMER_ID, EVENT_TIMESTAMP, TIERS, TOUCH_TYPES

PUSH_SOURCE = "contact_push"
STATE_VIEW = "contact_state"
LAST = {t: f"last_{t}_at" for t in TIERS}
LAST_CONTACT = "last_contact_at"

log = logging.getLogger("nexttouch.serving")


class ContactUpdater:
    """Applies posted touches to the ``contact_state`` feature view through its Feast push source."""

    def __init__(
        self,
        store,
        keep: Callable[[pd.DataFrame], None],
        resolve: Callable[[str, str], str | None],
        timeout_s: float = 1.0,
        retry_s: float = 5.0,
        lock: Path | None = None,
    ) -> None:
        self.store = store
        self.lock = lock
        self.keep = keep
        self.resolve = resolve
        self.timeout_s = timeout_s
        self.refs = [f"{STATE_VIEW}:{c}" for c in (*LAST.values(), LAST_CONTACT)]
        # One update at a time: read-modify-write of a customer's state must not interleave. Within the
        # process one pusher thread; across the workers (processes) the ``flock`` on ``lock`` around it.
        self._pusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="contact-push")
        self._pending: list[pd.DataFrame] = []  # events whose online update has not been made yet
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._retry_loop, args=(retry_s,), name="contact-retry", daemon=True).start()

    @property
    def pending(self) -> int:
        """Touches (one per customer, tier and direction) still waiting for their online update."""
        with self._pending_lock:
            return sum(len(f) for f in self._pending)

    def close(self) -> None:
        self._stop.set()
        self._pusher.shutdown(wait=False, cancel_futures=False)

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
        self.keep(events.drop(columns=[CUSTOMER_ID]))  # durable first: nothing is lost if the update fails
        known = events.loc[events[CUSTOMER_ID].notna()]
        deferred = False
        if len(known):
            update = self._pusher.submit(self._update, known)
            try:
                update.result(timeout=self.timeout_s)
            except Exception as exc:  # slow or down: the update keeps these events and is retried
                from serving.metrics import EVENTS_DEFERRED

                deferred = True
                EVENTS_DEFERRED.inc(len(known))
                log.warning("online contact update deferred (%s): %d events kept", type(exc).__name__, len(known))
        return EventsResponse(
            accepted=len(events),
            customers_updated=0 if deferred else int(known[CUSTOMER_ID].nunique()),
            unresolved=events.loc[events[CUSTOMER_ID].isna(), "event_id"].tolist(),
            online_update_deferred=deferred,
        )

    def _update(self, events: pd.DataFrame | None) -> None:
        """Push ``events`` with every deferred one; on failure keep them all for the next try.

        Runs on the one pusher thread only. The deferred touches stay in ``_pending`` while they are
        pushed, so ``pending`` never reads 0 in the middle of a retry that is about to fail.
        """
        with self._pending_lock:
            if events is not None:
                self._pending.append(events)
            batch = list(self._pending)
        if not batch:
            return
        frame = pd.concat(batch, ignore_index=True)
        try:
            with _exclusive(self.lock):
                self._push(frame)
        except Exception:
            # Only the newest touch per customer, tier and direction matters online: bounded by customers.
            latest = frame.groupby([CUSTOMER_ID, "tier", "direction"], as_index=False)["occurred_at"].max()
            with self._pending_lock:
                self._pending = [latest]
            raise
        with self._pending_lock:
            self._pending = []
        if events is None or len(batch) > 1:
            log.info("deferred online contact updates made (%d touches)", len(frame))

    def _retry_loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            if self.pending:
                try:
                    self._pusher.submit(self._update, None).result()
                except Exception as exc:  # still down: the next round tries again
                    log.warning("deferred online contact update failed again: %s", type(exc).__name__)

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


@contextmanager
def _exclusive(path: Path | None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (blocking): the workers of one host update contact state in turn."""
    if path is None:
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
