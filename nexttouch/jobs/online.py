"""The online store loaded without losing a touch the service has accepted.

A load writes each customer's latest feature snapshot, contact state included, over what the online
store held: touches posted to ``POST /events`` since the snapshot was built would be forgotten, and
caps and cool-downs would let a customer be contacted twice. Every load (`nexttouch features`, the
demo, the nightly job) therefore folds the service's event log back in, under the lock the service's
own contact updates take, so a touch posted during the load is either folded in or applied after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd

from features.online_load import read_latest, write_latest_online
from features.pipeline import TOUCH_HISTORY, materialize
from nexttouch.feature_store import open_store
from nexttouch.schemas import CUSTOMER_ID, EVENT_TIMESTAMP
from nexttouch.settings import Settings
from nexttouch.touches import CONTACT_STATE
from serving.contact_state import STATE_VIEW, fold, lock_path, state_lock
from serving.decision_log import DecisionLog
from serving.event_log import EventLog
from serving.identity import IdentityMap

if TYPE_CHECKING:
    from feast import FeatureStore


REBUILD_LOCK_WAIT_S = 120.0  # the service holds the lock for milliseconds at a time


@dataclass(frozen=True)
class OnlineLoad:
    rows: dict[str, int]  # rows written per feature view
    folded: int  # customers whose contact state the event log moved


def load_online(settings: Settings, end: datetime) -> OnlineLoad:
    """Materialize every customer's latest snapshot up to ``end``, then fold in the event log."""
    store = open_store(settings)
    with state_lock(store, lock_path(settings.data_dir), wait_s=REBUILD_LOCK_WAIT_S, renew=True):
        rows = materialize(settings, end)
        return OnlineLoad(rows, fold_in_event_log(settings, end, store))


def has_event_log(settings: Settings) -> bool:
    return bool(settings.decision_log_url) or settings.decision_log.exists()


def posted_contact_state(settings: Settings, state: pd.DataFrame) -> pd.DataFrame:
    """``state`` (contact-state columns indexed by customer id) moved by every touch the service accepted.

    Only customers with a posted touch are returned; an event log that does not exist yet moves nobody.
    """
    if not has_event_log(settings):
        return state.iloc[:0]
    log = DecisionLog.open(settings)
    try:
        touches = EventLog(log).latest_touches()
    finally:
        log.close()
    identity = IdentityMap.load(settings.raw_dir / "identity.parquet")
    keys = zip(touches["source_system"], touches["source_key"], strict=True)
    touches[CUSTOMER_ID] = [identity.resolve(system, key) for system, key in keys]
    touches = touches.dropna(subset=[CUSTOMER_ID])
    mine = state.reindex(pd.Index(sorted(touches[CUSTOMER_ID].unique()), name=CUSTOMER_ID))
    return fold(mine, touches)


def fold_in_event_log(settings: Settings, end: datetime, store: FeatureStore | None = None) -> int:
    """Write the contact state of customers whose posted touches are later than their snapshot's, into
    ``store`` (default: the project's); returns how many customers moved."""
    if not has_event_log(settings):
        return 0
    path = settings.offline_dir / f"{TOUCH_HISTORY}.parquet"
    loaded = read_latest(path, [CUSTOMER_ID], EVENT_TIMESTAMP, [CUSTOMER_ID, EVENT_TIMESTAMP, *CONTACT_STATE], end)
    before = loaded.set_index(CUSTOMER_ID)[CONTACT_STATE]
    after = posted_contact_state(settings, before)
    old = before.reindex(after.index).apply(pd.to_datetime, utc=True)
    moved = (after.ne(old) & after.notna()).any(axis=1)
    if not moved.any():
        return 0
    frame = after.loc[moved].reset_index().assign(**{EVENT_TIMESTAMP: pd.Timestamp.now(tz="UTC")})
    return write_latest_online(store or open_store(settings), STATE_VIEW, frame)
