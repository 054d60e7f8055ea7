"""Real-time touch events: keep them for the nightly ingest and update the online contact state now.

The events are committed first (``keep``: the event log, serving/event_log.py), so nothing posted is
lost. The online update then gets a short time (``timeout_s``): an online store that is down or slow
(redis-py retries for ~4 s) makes it *deferred*: the answer says so at once, and the update is retried
with the next events and in the background until the store answers.

Only customers the service knows are updated online (``resolve``: a source key through the identity map,
a customer id if it is a known customer); events of unknown ones are kept for the nightly ingest and
reported, never made into customers online. An event id kept before (a retry) is neither kept nor applied
again. Waiting updates are the newest touch per customer, tier and direction, and a frame that cannot be
pushed never holds back the others.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nexttouch.api import EARLIEST, LATEST, EventsRequest, EventsResponse
from nexttouch.locks import redis_client, redis_lock
from nexttouch.schemas import CUSTOMER_ID, DIRECTIONS, EVENT_TIMESTAMP, TIERS, TOUCH_TYPES
from nexttouch.touches import CONTACT_STATE, codes, contact_state_masks
from serving import deadline
from serving.identity import API_SYSTEM

PUSH_SOURCE = "contact_push"
SHARED_LOCK_TTL_S = 30.0
SHARED_LOCK_WAIT_S = 30.0  # then the update fails and is retried like one the store refused
STATE_VIEW = "contact_state"

log = logging.getLogger("nexttouch.serving.contact_state")


class ContactUpdater:
    """Applies posted touches to the ``contact_state`` feature view through its Feast push source."""

    def __init__(
        self,
        store,
        keep: Callable[[pd.DataFrame], np.ndarray | None],
        resolve: Callable[[str, str], str | None],
        timeout_s: float = 1.0,
        retry_s: float = 5.0,
        lock: Path | None = None,
    ) -> None:
        # BentoML's server logs WARNING and above: the line that says a deferred update was made is INFO.
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)
        self.store = store
        self.lock = lock
        self.keep = keep
        self.resolve = resolve
        self.timeout_s = timeout_s
        self.refs = [f"{STATE_VIEW}:{c}" for c in CONTACT_STATE]
        # One update at a time: read-modify-write of a customer's state must not interleave. Within the
        # process one pusher thread; across processes a lock around it: in Redis when the online store is
        # Redis (every replica on every host shares it), else the ``flock`` on ``lock`` (one host).
        redis = _redis_of(store)  # one client (and connection pool) for every update
        self._state_lock = lambda: _locked(redis, store, lock)
        self._pusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="contact-push")
        self._pending: list[_Waiting] = []  # events whose online update has not been made yet
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._retry_loop, args=(retry_s,), name="contact-retry", daemon=True).start()

    @property
    def pending(self) -> int:
        """Touches (one per customer, tier and direction) still waiting for their online update."""
        with self._pending_lock:
            return sum(len(w.touches) for w in self._pending)

    def close(self) -> None:
        self._stop.set()
        self._pusher.shutdown(wait=False, cancel_futures=False)

    def apply(self, request: EventsRequest) -> EventsResponse:
        rows = []
        for e in request.events:
            system, key = (e.source.system, e.source.key) if e.source else (API_SYSTEM, e.customer_id)
            touch = TOUCH_TYPES[e.touch_type]
            rows.append(
                {
                    "event_id": e.event_id,
                    "occurred_at": e.occurred_at.astimezone(UTC),
                    "source_system": system,
                    "source_key": key,
                    "touch_type": e.touch_type,
                    "tier": touch.tier,
                    "direction": touch.direction,
                    "amount": e.amount,
                    "decision_id": e.decision_id,
                    CUSTOMER_ID: self.resolve(system, key),  # type: ignore[arg-type]
                }
            )
        events = pd.DataFrame(rows)
        kept = self.keep(events.drop(columns=[CUSTOMER_ID]))  # durable first: nothing is lost if the update fails
        new = events if kept is None else events.loc[kept]
        known = new.loc[new[CUSTOMER_ID].notna()]
        deferred = False
        if len(known):
            update = self._pusher.submit(self._update, known)
            try:
                update.result(timeout=self._wait_s())
            except Exception as exc:  # slow or down: the update keeps these events and is retried
                from serving.metrics import EVENTS_DEFERRED

                deferred = True
                EVENTS_DEFERRED.inc(len(known))
                log.warning("online contact update deferred (%s): %d events kept", type(exc).__name__, len(known))
                # Still running (only the wait ran out): it may yet succeed, and then says so.
                update.add_done_callback(_made_late)
        return EventsResponse(
            accepted=len(new),
            duplicates=len(events) - len(new),
            customers_updated=0 if deferred else int(known[CUSTOMER_ID].nunique()),
            unresolved=new.loc[new[CUSTOMER_ID].isna(), "event_id"].tolist(),
            online_update_deferred=deferred,
        )

    def _wait_s(self) -> float:
        """How long the answer waits for the online update: ``timeout_s``, and never past the request's time."""
        due = deadline.current()
        if due is None:
            return self.timeout_s
        return max(0.0, min(self.timeout_s, due - time.monotonic() - 0.5))

    def _update(self, events: pd.DataFrame | None) -> int:
        """Push ``events`` with every deferred one; raises when ``events`` (or, for a retry, any deferred
        touch) could not be pushed, keeping them for the next try. Returns how many of ``events`` were pushed.

        Runs on the one pusher thread only. The deferred touches stay in ``_pending`` while they are
        pushed, so ``pending`` never reads 0 in the middle of a retry that is about to fail.
        """
        own = None
        with self._pending_lock:
            if events is not None:
                events = _pushable(events)
                if len(events):
                    own = _Waiting(events, len(events))
                    self._pending.append(own)
            batch = list(self._pending)
        if not batch:
            return 0
        try:
            self._push_locked(pd.concat([w.touches for w in batch], ignore_index=True))
            failed: list[_Waiting] = []
        except Exception as exc:
            if len(batch) == 1:
                failed, error = batch, exc
            else:  # one frame at a time: a frame that cannot be pushed must not hold back the others
                failed, error = self._push_each(batch)
        # Only the newest touch per customer, tier and direction matters online: bounded by known customers.
        with self._pending_lock:
            self._pending = [_Waiting.merged(failed)] if failed else []
        made = [w for w in batch if w is not own and not any(w is f for f in failed)]
        if made:  # deferred by earlier answers: the counter and this line say they are online now
            _count_made(sum(w.events for w in made), len(made))
        if failed and (events is None or any(f is own for f in failed)):
            raise error
        return own.events if own is not None else 0

    def _push_each(self, batch: list[_Waiting]) -> tuple[list[_Waiting], Exception]:
        """Newest frame first; when that fails too the store is down: the rest is not tried."""
        failed: list[_Waiting] = []
        error: Exception | None = None
        for i, waiting in enumerate(reversed(batch)):
            try:
                self._push_locked(waiting.touches)
            except Exception as exc:
                error = exc
                if i == 0:
                    return batch, exc
                failed.append(waiting)
        return failed[::-1], error  # type: ignore[return-value]  (set whenever ``failed`` is not empty)

    def _push_locked(self, frame: pd.DataFrame) -> None:
        with self._state_lock():
            self._push(frame)

    def _retry_loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            if self.pending:
                try:
                    self._pusher.submit(self._update, None).result()
                except Exception as exc:  # still down: the next round tries again
                    log.warning("deferred online contact update failed again: %s", type(exc).__name__)

    def _push(self, events: pd.DataFrame) -> None:
        customers = sorted(events[CUSTOMER_ID].unique())
        current = self.store.get_online_features(
            features=self.refs, entity_rows=[{CUSTOMER_ID: c} for c in customers]
        ).to_dict()
        state = fold(pd.DataFrame(current).set_index(CUSTOMER_ID).reindex(customers), events)
        state[EVENT_TIMESTAMP] = pd.Timestamp.now(tz="UTC")
        self.store.push(PUSH_SOURCE, state.reset_index())


def fold(state: pd.DataFrame, touches: pd.DataFrame) -> pd.DataFrame:
    """``state`` (contact-state columns, indexed by customer id) with ``touches`` folded in: each column the
    later of its time and the latest touch that moves it. ``touches``: customer id, tier, direction, occurred_at.

    The service's updates and a rebuilt online store (``nexttouch.jobs.online``) merge the same way.
    """
    masks = contact_state_masks(codes(touches["tier"], TIERS), codes(touches["direction"], DIRECTIONS))
    out = state.copy()
    for col, mask in masks.items():
        newest = touches.loc[mask].groupby(CUSTOMER_ID)["occurred_at"].max().reindex(out.index)
        out[col] = pd.concat([pd.to_datetime(out[col], utc=True), newest], axis=1).max(axis=1)
    return out


def _pushable(events: pd.DataFrame) -> pd.DataFrame:
    """Touches that can be applied online: a known customer and a time every stage can hold."""
    times = pd.to_datetime(events["occurred_at"], utc=True, errors="coerce")
    ok = events[CUSTOMER_ID].notna() & times.notna() & (times >= EARLIEST) & (times < LATEST)
    if not ok.all():
        log.warning("%d touches cannot be applied online (unknown customer or time out of range)", int((~ok).sum()))
    return events.loc[ok]


@dataclass(frozen=True)
class _Waiting:
    """Touches waiting for their online update, and how many posted events they stand for."""

    touches: pd.DataFrame
    events: int

    @classmethod
    def merged(cls, waiting: list[_Waiting]) -> _Waiting:
        frame = pd.concat([w.touches for w in waiting], ignore_index=True)
        newest = frame.groupby([CUSTOMER_ID, "tier", "direction"], as_index=False)["occurred_at"].max()
        return cls(newest, sum(w.events for w in waiting))


def _count_made(events: int, updates: int) -> None:
    from serving.metrics import EVENTS_DEFERRED_MADE

    EVENTS_DEFERRED_MADE.inc(events)
    log.info("deferred online contact update made: %d events (%d deferred updates)", events, updates)


def _made_late(update: Future) -> None:
    """An update whose answer said deferred finished after all: count it when it got through."""
    if not update.cancelled() and update.exception() is None and update.result():
        _count_made(update.result(), 1)


def lock_path(data_dir: Path) -> Path:
    """The file every writer of a host's contact state locks: the service's workers and an online store load."""
    return data_dir / "contact_state.lock"


def state_lock(store: object, path: Path | None, wait_s: float = SHARED_LOCK_WAIT_S, renew: bool = False) -> Any:
    """The lock every writer of contact state takes (the service's updates, an online store load): in the
    store's Redis when the online store is Redis (every replica on every host shares it), else the ``flock``
    on ``path`` (one host). ``renew`` keeps a Redis lock for a block longer than its expiry."""
    return _locked(_redis_of(store), store, path, wait_s, renew)


def _locked(
    client: Any, store: object, path: Path | None, wait_s: float = SHARED_LOCK_WAIT_S, renew: bool = False
) -> Any:
    if client is None:
        return exclusive(path)
    # The expiry frees the lock of a replica that died holding it; an update takes milliseconds.
    name = f"nexttouch:{getattr(store, 'project', '')}:contact_state"
    return redis_lock(client, name, ttl_s=SHARED_LOCK_TTL_S, wait_s=wait_s, renew=renew)


def _redis_of(store: object) -> object | None:
    """A Redis client for the store's own Redis when ``store`` is a Feast store with a Redis online store."""
    online = getattr(getattr(store, "config", None), "online_store", None)
    if getattr(online, "type", None) != "redis":
        return None
    return redis_client(online.connection_string)  # type: ignore[union-attr]


@contextmanager
def exclusive(path: Path | None) -> Iterator[None]:
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
