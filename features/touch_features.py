"""Touch history -> per-customer feature snapshots. The only place feature logic lives.

Events are binned per customer and day; cumulative sums give every rolling window in O(1).
A snapshot at day boundary ``s`` uses only events of days before ``s``, so a decision taken
on day ``s`` never sees its own day's touches (point-in-time correct by construction).
Customers are processed in chunks so memory stays bounded for millions of customers.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from nexttouch.schemas import CUSTOMER_ID, DIRECTIONS, EVENT_TIMESTAMP, TIERS
from nexttouch.touches import CONTACT_STATE, TYPE_NAMES, codes, contact_state_masks, tier_and_direction

WINDOWS = (7, 30, 90)
OMO_DAYS = 14
# Count channels: one per tier x direction, then specific touch types used for rates.
_TD = [(t, d) for t in TIERS for d in DIRECTIONS]
_TYPES = ("push_sent", "push_opened", "event_invited", "event_attended")
_K = len(_TD) + len(_TYPES)

TOUCH_FEATURES: dict[str, str] = {
    **{f"{t}_{d}_{w}d": "int" for t, d in _TD for w in WINDOWS},
    "push_open_rate_90d": "float",
    "event_attend_rate_90d": "float",
    "high_response_rate_90d": "float",
    # The OMO loop: days with offline contact preceded by online activity within 14 days, and the reverse.
    "omo_online_to_offline_90d": "int",
    "omo_offline_to_online_90d": "int",
    "spend_90d": "float",
    "tenure_days": "int",
}


def build_touch_features(
    events: pd.DataFrame,
    customers: pd.DataFrame,
    end: datetime,
    days: int,
    every_days: int = 1,
    chunk: int = 50_000,
) -> pd.DataFrame:
    """Feature rows for every customer at every ``every_days``-th day boundary up to ``end``.

    ``events`` must already carry ``customer_id`` (identity resolved), ``occurred_at``,
    ``touch_type`` and ``amount``; a touch type's tier and direction come from ``nexttouch.touches``.
    """
    start = end - timedelta(days=days)
    snaps = np.arange(days, 0, -every_days)[::-1]  # snapshot day indices; the last one is `end`
    ids = customers[CUSTOMER_ID].to_numpy()
    pos = pd.Index(ids)
    t0 = pd.Timestamp(start)

    in_window = (events["occurred_at"] >= t0) & (events["occurred_at"] < pd.Timestamp(end))
    ev = events.loc[in_window]
    cust = pos.get_indexer(ev[CUSTOMER_ID])
    known = cust >= 0  # events of customers missing from the customer table are not featurised
    ev, cust = ev.loc[known], cust[known]
    seconds = ((ev["occurred_at"] - t0) // pd.Timedelta(seconds=1)).to_numpy().astype(np.int64)
    channel = _channels(ev)
    amount = ev["amount"].fillna(0).to_numpy(dtype=float)

    frames = []
    for lo in range(0, len(ids), chunk):
        hi = min(lo + chunk, len(ids))
        m = (cust >= lo) & (cust < hi)
        frames.append(
            _chunk_features(cust[m] - lo, seconds[m], channel[m], amount[m], hi - lo, days, snaps, t0)
            .assign(**{CUSTOMER_ID: np.repeat(ids[lo:hi], len(snaps))})
            .assign(**{EVENT_TIMESTAMP: np.tile(t0 + pd.to_timedelta(snaps, unit="D"), hi - lo)})
        )
    out = pd.concat(frames, ignore_index=True)
    signup = out[CUSTOMER_ID].map(customers.set_index(CUSTOMER_ID)["signup_at"])
    out["tenure_days"] = ((out[EVENT_TIMESTAMP] - signup) // pd.Timedelta(days=1)).astype(np.int64)
    return out[[CUSTOMER_ID, EVENT_TIMESTAMP, *TOUCH_FEATURES, *CONTACT_STATE]]


def _channels(ev: pd.DataFrame) -> np.ndarray:
    """For each event, its tier x direction channel and, where relevant, its type channel."""
    touch = codes(ev["touch_type"], TYPE_NAMES)
    tier, direction = tier_and_direction(touch)
    type_channel = codes(np.array(TYPE_NAMES, dtype=object), _TYPES, len(_TD))
    return np.stack(
        [
            np.where(tier >= 0, tier * len(DIRECTIONS) + direction, -1),
            np.where(touch >= 0, type_channel[np.maximum(touch, 0)], -1),
        ],
        axis=1,
    )


def _chunk_features(
    cust: np.ndarray,
    seconds: np.ndarray,
    channel: np.ndarray,
    amount: np.ndarray,
    n: int,
    days: int,
    snaps: np.ndarray,
    t0: pd.Timestamp,
) -> pd.DataFrame:
    day = seconds // 86_400
    counts = np.zeros((n, days, _K), np.int32)
    for col in range(channel.shape[1]):
        ok = channel[:, col] >= 0
        np.add.at(counts, (cust[ok], day[ok], channel[ok, col]), 1)
    spend = np.zeros((n, days))
    np.add.at(spend, (cust, day), amount)

    cum = np.concatenate([np.zeros((n, 1, _K), np.int32), counts.cumsum(axis=1, dtype=np.int32)], axis=1)
    cum_spend = np.concatenate([np.zeros((n, 1)), spend.cumsum(axis=1)], axis=1)

    def window(w: int) -> np.ndarray:  # (n, len(snaps), K): counts over days [s - w, s)
        return cum[:, snaps] - cum[:, np.maximum(snaps - w, 0)]

    cols: dict[str, np.ndarray] = {}
    for w in WINDOWS:
        win = window(w)
        for i, (t, d) in enumerate(_TD):
            cols[f"{t}_{d}_{w}d"] = win[:, :, i].ravel()
    w90 = window(90)
    base = len(_TD)
    sent, opened, invited, attended = (w90[:, :, base + i].astype(float) for i in range(4))
    cols["push_open_rate_90d"] = _rate(opened, sent).ravel()
    cols["event_attend_rate_90d"] = _rate(attended, invited).ravel()
    high_in, high_out = (w90[:, :, _TD.index(("high", d))].astype(float) for d in DIRECTIONS)
    cols["high_response_rate_90d"] = np.minimum(_rate(high_in, high_out), 1.0).ravel()

    online = counts[:, :, _TD.index(("tech", "in"))] > 0
    offline = (counts[:, :, _TD.index(("low", "in"))] + counts[:, :, _TD.index(("high", "in"))]) > 0
    for name, now, before in (("online_to_offline", offline, online), ("offline_to_online", online, offline)):
        seq = (now & _seen_within(before, OMO_DAYS)).astype(np.int32)
        cum_seq = np.concatenate([np.zeros((n, 1), np.int32), seq.cumsum(axis=1, dtype=np.int32)], axis=1)
        cols[f"omo_{name}_90d"] = (cum_seq[:, snaps] - cum_seq[:, np.maximum(snaps - 90, 0)]).ravel()

    # Contact state strictly before each snapshot, to the second.
    known = channel[:, 0] >= 0
    tier = np.where(known, channel[:, 0] // len(DIRECTIONS), -1)
    masks = contact_state_masks(tier, np.where(known, channel[:, 0] % len(DIRECTIONS), -1))
    for name, mask in masks.items():
        last = np.full((n, days), -1, np.int64)
        np.maximum.at(last, (cust[mask], day[mask]), seconds[mask])
        before = np.maximum.accumulate(last, axis=1)[:, snaps - 1].ravel()
        cols[name] = (t0 + pd.to_timedelta(np.maximum(before, 0), unit="s")).where(before >= 0)
    cols["spend_90d"] = (cum_spend[:, snaps] - cum_spend[:, np.maximum(snaps - 90, 0)]).ravel()
    return pd.DataFrame(cols)


def _seen_within(days_with: np.ndarray, window: int) -> np.ndarray:
    """(customers, days) -> True where the flag was set on one of the ``window`` days before."""
    cum = np.concatenate([np.zeros((len(days_with), 1), np.int32), days_with.cumsum(axis=1, dtype=np.int32)], axis=1)
    d = np.arange(days_with.shape[1])
    return (cum[:, d] - cum[:, np.maximum(d - window, 0)]) > 0


def _rate(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), 0.0)
