"""Touch history -> per-customer feature snapshots: where the stored touch features are computed.

Events are binned per customer and day; cumulative sums give every rolling window in O(1).
A snapshot at day boundary ``s`` uses only events of days before ``s``, so a decision taken
on day ``s`` never sees its own day's touches (point-in-time correct by construction).
History features (response rates, decayed counts, days observed) cover every event before the
snapshot, also those before the first one: running totals carried from snapshot to snapshot.
Customers are processed in chunks so memory stays bounded for millions of customers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from nexttouch.schemas import CUSTOMER_ID, DECISION_ID, DIRECTIONS, EVENT_TIMESTAMP, SIGNUP_AT, TIERS, utc_times
from nexttouch.touches import CONTACT_STATE, SECONDS_PER_DAY, TYPE_NAMES, codes, contact_state_masks, tier_and_direction

WINDOWS = (7, 30, 90)
OMO_DAYS = 14
# Count channels: one per tier x direction, then specific touch types used for rates.
_TD = [(t, d) for t in TIERS for d in DIRECTIONS]
_TYPES = ("push_sent", "push_opened", "event_invited", "event_attended")
_K = len(_TD) + len(_TYPES)

# How a customer answers each tier: (touch the brand sends, touch that answers it). An answer counts
# when it names the decision that sent it (a store visit after an advisor call, not any store visit).
RESPONSES: dict[str, tuple[str, str]] = {
    "push_open": ("push_sent", "push_opened"),
    "event_attend": ("event_invited", "event_attended"),
    "call_visit": ("advisor_call", "store_visit"),
}
PRIOR_WEIGHT = 5.0  # a response rate is shrunk towards the population's as if by this many sends at its rate
HALF_LIFE_DAYS = 30.0  # of the decayed counts
# Touches the customer makes on their own, counted over all history (likes apart from app sessions).
ORGANIC_COUNTS = ("app_session", "app_like", "store_visit", "purchase")
# How deep a customer's own activity goes, over all history: (touches, per touches), smoothed by half
# a touch over one so a short history reads near one half instead of 0 or 1. Likes per app session
# are the trace of a taste for events; purchases per store visit, of a taste for personal advice.
ORGANIC_RATIOS = {
    "app_like_per_session_all": ("app_like", "app_session"),
    "purchase_per_visit_all": ("purchase", "store_visit"),
}

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
    # All history before the snapshot.
    **{f"{sent}_all": "int" for sent, _ in RESPONSES.values()},
    **{f"{name}_rate_all": "float" for name in RESPONSES},
    **{f"{t}_organic_all": "int" for t in ORGANIC_COUNTS},
    **{name: "float" for name in ORGANIC_RATIOS},
    # Touches of each type, each weighted by 2^(-age / half-life): touches made on their own and
    # touches that name a decision (sent by one, or answering one) apart.
    **{f"{t}_{kind}_decayed": "float" for t in TYPE_NAMES for kind in ("organic", "linked")},
    "days_observed": "int",  # since the customer's first touch
}
# The only columns of a snapshot row that can be null: no sign-up date (tenure), no touch yet (contact state).
MAY_BE_NULL = frozenset({"tenure_days", *CONTACT_STATE})


def build_touch_features(
    events: pd.DataFrame,
    customers: pd.DataFrame,
    end: datetime,
    days: int,
    every_days: int = 1,
    chunk: int = 50_000,
    priors: np.ndarray | None = None,
) -> pd.DataFrame:
    """Feature rows for every customer at every ``every_days``-th day boundary up to ``end``.

    One row per customer and snapshot: customers in the order of ``customers``, each one's snapshots
    earliest first. ``events`` must already carry ``customer_id`` (identity resolved), ``occurred_at``,
    ``touch_type`` and ``amount``, and may carry ``decision_id`` (the decision a touch was sent by
    or answers; null or absent: the customer's own touch). A touch type's tier and direction come
    from ``nexttouch.touches``. Events before the first snapshot count for the history features.
    ``priors`` are the population's response rates (``response_priors``); by default those of
    ``events``, so a caller that passes only some customers' events passes the population's.
    """
    frames = [
        pd.DataFrame(cols)  # in order: no reordering copy
        for cols in touch_feature_columns(events, customers, end, days, every_days, chunk, priors)
    ]
    columns = [CUSTOMER_ID, EVENT_TIMESTAMP, *TOUCH_FEATURES, *CONTACT_STATE]
    if not frames:
        return pd.DataFrame({c: [] for c in columns})
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def touch_feature_columns(
    events: pd.DataFrame,
    customers: pd.DataFrame,
    end: datetime,
    days: int,
    every_days: int = 1,
    chunk: int = 50_000,
    priors: np.ndarray | None = None,
) -> Iterator[dict[str, Any]]:
    """``build_touch_features``' columns, ``chunk`` customers at a time (numpy arrays and datetime indexes).

    Where the features are computed: the frame above and the pipeline's arrow tables are made of these.
    """
    t0 = pd.Timestamp(end - timedelta(days=days))
    snaps = snapshot_days(days, every_days)
    ids = customers[CUSTOMER_ID].to_numpy()

    cust = _positions(events[CUSTOMER_ID], ids)
    seconds = ((events["occurred_at"] - t0) // pd.Timedelta(seconds=1)).to_numpy().astype(np.int64)
    # Events from the end on, and of customers missing from the customer table, are not featurised.
    keep = (seconds < days * SECONDS_PER_DAY) & (cust >= 0)
    cust, seconds = cust[keep], seconds[keep]
    touch = codes(events["touch_type"], TYPE_NAMES)[keep]
    linked = events[DECISION_ID].notna().to_numpy(bool)[keep] if DECISION_ID in events else np.zeros(len(cust), bool)
    channel = _channels(touch)
    amount = events["amount"].fillna(0).to_numpy(dtype=float)[keep]
    bounds = snaps * SECONDS_PER_DAY
    if priors is None:
        priors = response_priors(touch, seconds, linked, bounds)
    window = seconds >= 0  # the rolling windows and contact state start at the first day

    stamps = t0 + pd.to_timedelta(snaps, unit="D")
    # Without a sign-up date there is no tenure (null), not one made up from the decision date.
    signup = (
        utc_times(customers[SIGNUP_AT]).dt.as_unit("ns").array.asi8.view("M8[ns]")
        if SIGNUP_AT in customers
        else np.full(len(customers), np.datetime64("NaT", "ns"))
    )
    columns = [CUSTOMER_ID, EVENT_TIMESTAMP, *TOUCH_FEATURES, *CONTACT_STATE]
    naive_stamps = stamps.tz_convert(None).to_numpy()
    for lo in range(0, len(ids), chunk):
        hi = min(lo + chunk, len(ids))
        m = (cust >= lo) & (cust < hi)
        w = m & window
        cols = _chunk_features(cust[w] - lo, seconds[w], channel[w], amount[w], hi - lo, days, snaps, t0)
        cols |= _history_features(cust[m] - lo, seconds[m], touch[m], linked[m], hi - lo, bounds, priors)
        cols[CUSTOMER_ID] = np.repeat(ids[lo:hi], len(snaps))
        cols[EVENT_TIMESTAMP] = pd.DatetimeIndex(np.tile(naive_stamps, hi - lo)).tz_localize("UTC")
        tenure = stamps.tz_convert(None).to_numpy()[None, :] - signup[lo:hi, None]
        cols["tenure_days"] = _days_or_null(tenure.ravel())
        yield {c: cols[c] for c in columns}


def _positions(values: pd.Series, ids: np.ndarray) -> np.ndarray:
    """Each value's position in ``ids`` (-1 if absent): an arrow hash lookup, no Python object per value."""
    values, known = pa.array(values, from_pandas=True), pa.array(ids, from_pandas=True)
    if pa.types.is_null(values.type) or not len(known):  # no events, or no id among them
        return np.full(len(values), -1, np.int64)
    found = pc.index_in(values, value_set=known.cast(values.type))
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _days_or_null(span: np.ndarray) -> np.ndarray | pd.arrays.IntegerArray:
    """Whole days of a timedelta64 array; a nullable integer where a span is unknown (NaT)."""
    unknown = np.isnat(span)
    days = np.where(unknown, np.timedelta64(0, "ns"), span) // np.timedelta64(1, "D")
    return pd.arrays.IntegerArray(days, unknown) if unknown.any() else days


def snapshot_days(days: int, every_days: int) -> np.ndarray:
    """Snapshot day boundaries, counted in days from ``end - days``: every ``every_days``-th, the last one ``end``."""
    return np.arange(days, 0, -every_days)[::-1]


def response_priors(touch: np.ndarray, seconds: np.ndarray, linked: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The population's rate of each of RESPONSES from the events before each boundary: (boundaries, responses).

    ``touch``: positions in TYPE_NAMES; ``seconds`` and ``bounds``: from the same origin. 0 before any send.
    """
    return priors_from_counts(response_counts(touch, seconds, linked, bounds))


def response_counts(touch: np.ndarray, seconds: np.ndarray, linked: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Sends and answers of each of RESPONSES before each boundary: (2, boundaries, responses).

    Counts add up: the counts of the population are the sum of those of any split of its events.
    """
    before = np.searchsorted(bounds, seconds, side="right")  # the first boundary each event is before
    counts = np.zeros((2, len(bounds), len(RESPONSES)), np.int64)
    for r, (sent, answer) in enumerate(RESPONSES.values()):
        for i, mask in enumerate((touch == TYPE_NAMES.index(sent), (touch == TYPE_NAMES.index(answer)) & linked)):
            counts[i, :, r] = np.bincount(before[mask], minlength=len(bounds) + 1)[: len(bounds)].cumsum()
    return counts


def priors_from_counts(counts: np.ndarray) -> np.ndarray:
    """``response_priors`` from (summed) ``response_counts``."""
    return _rate(counts[1].astype(float), counts[0].astype(float))


def _channels(touch: np.ndarray) -> np.ndarray:
    """For each event (its touch type's position in TYPE_NAMES), its tier x direction channel and its type channel."""
    tier, direction = tier_and_direction(touch)
    type_channel = codes(np.array(TYPE_NAMES, dtype=object), _TYPES, len(_TD))
    return np.stack(
        [
            np.where(tier >= 0, tier * len(DIRECTIONS) + direction, -1),
            np.where(touch >= 0, type_channel[np.maximum(touch, 0)], -1),
        ],
        axis=1,
    )


def _history_features(
    cust: np.ndarray,
    seconds: np.ndarray,
    touch: np.ndarray,
    linked: np.ndarray,
    n: int,
    bounds: np.ndarray,
    priors: np.ndarray,
) -> dict[str, np.ndarray]:
    """Features of all the events before each boundary (any age): running totals carried across snapshots.

    Each event is binned at the first boundary it precedes; a cumulative sum over the boundaries
    gives the totals, and decayed sums are carried as D[k] = D[k-1] * decay(gap) + bin[k].
    """
    s = len(bounds)
    before = np.searchsorted(bounds, seconds, side="right")
    ok = before < s  # events on or after the last boundary are in no snapshot
    cust, seconds, touch, linked, before = cust[ok], seconds[ok], touch[ok], linked[ok], before[ok]
    cell = cust * s + before

    def totals(mask: np.ndarray) -> np.ndarray:  # (n, s)
        return np.bincount(cell[mask], minlength=n * s).reshape(n, s).cumsum(axis=1)

    cols: dict[str, np.ndarray] = {}
    for r, (name, (sent, answer)) in enumerate(RESPONSES.items()):
        sends = totals(touch == TYPE_NAMES.index(sent))
        hits = totals((touch == TYPE_NAMES.index(answer)) & linked)
        cols[f"{sent}_all"] = sends.ravel()
        cols[f"{name}_rate_all"] = ((hits + PRIOR_WEIGHT * priors[:, r]) / (sends + PRIOR_WEIGHT)).ravel()
    for t in ORGANIC_COUNTS:
        cols[f"{t}_organic_all"] = totals((touch == TYPE_NAMES.index(t)) & ~linked).ravel()
    for name, (num, den) in ORGANIC_RATIOS.items():
        cols[name] = (cols[f"{num}_organic_all"] + 0.5) / (cols[f"{den}_organic_all"] + 1.0)

    # A touch's weight at boundary k is 2^-(age in half-lives) = exp(rate * (seconds - b)) * exp(rate * (b - bounds[k]))
    # with b the last boundary: the decayed sums are running sums of per-touch weights, scaled per boundary.
    rate = np.log(2) / (HALF_LIFE_DAYS * SECONDS_PER_DAY)
    known = touch >= 0
    kind = touch[known] * 2 + linked[known]  # (touch type, linked) as one number: one pass for every column
    weights = np.exp(rate * (seconds[known] - bounds[-1]))
    decayed = np.bincount(kind * (n * s) + cell[known], weights=weights, minlength=2 * len(TYPE_NAMES) * n * s)
    decayed = decayed.reshape(len(TYPE_NAMES), 2, n, s).astype(float, copy=False)  # (no touch: integer zeros)
    np.cumsum(decayed, axis=3, out=decayed)
    decayed *= np.exp(rate * (bounds[-1] - bounds))
    for i, t in enumerate(TYPE_NAMES):
        cols[f"{t}_organic_decayed"], cols[f"{t}_linked_decayed"] = decayed[i, 0].ravel(), decayed[i, 1].ravel()

    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, cust, seconds)
    age = bounds[None, :] - np.minimum(first, bounds[-1])[:, None]  # (no touch yet: masked below)
    cols["days_observed"] = np.where(first[:, None] < bounds[None, :], age // SECONDS_PER_DAY, 0).ravel()
    return cols


def _chunk_features(
    cust: np.ndarray,
    seconds: np.ndarray,
    channel: np.ndarray,
    amount: np.ndarray,
    n: int,
    days: int,
    snaps: np.ndarray,
    t0: pd.Timestamp,
) -> dict[str, np.ndarray]:
    """The rolling-window features and the contact state of the events from the first day on.

    The windows read running counts only at snapshots and at ``w`` days before them, so events are
    counted in the spans between those days (``edges``), not in every day: fewer cells to sum up.
    """
    day = seconds // 86_400
    edges = np.unique(np.concatenate([[0], snaps, *(np.maximum(snaps - w, 0) for w in WINDOWS)]))
    span = np.searchsorted(edges, day, side="right") - 1  # each event's span: days edges[i] to before edges[i + 1]
    # Channel first: each feature column below is then a contiguous slice, not a strided copy.
    counts = np.zeros((_K, n, len(edges)), np.int32)
    for col in range(channel.shape[1]):
        ok = channel[:, col] >= 0
        np.add.at(counts.reshape(-1), (channel[ok, col] * n + cust[ok]) * len(edges) + span[ok], np.int32(1))
    cum = np.zeros((_K, n, len(edges) + 1), np.int32)  # cum[..., i]: the events of the days before edges[i]
    np.cumsum(counts, axis=2, dtype=np.int32, out=cum[:, :, 1:])
    del counts
    snap_edges = np.searchsorted(edges, snaps)
    # np.take, not cum[:, :, edges]: gathering along the last axis, it copies a few times faster.
    at_snaps = np.take(cum, snap_edges, axis=2)

    def start(w: int) -> np.ndarray:  # the edge of each snapshot's window of w days
        return np.searchsorted(edges, np.maximum(snaps - w, 0))

    # (channels, n, len(snaps)): the events of days [s - w, s); the 90-day rates read the touch types' channels too
    cols: dict[str, np.ndarray] = {}
    w90 = at_snaps - np.take(cum, start(90), axis=2)
    td = len(_TD)
    for w in WINDOWS:
        counts = w90 if w == 90 else at_snaps[:td] - np.take(cum[:td], start(w), axis=2)
        for i, (t, d) in enumerate(_TD):
            cols[f"{t}_{d}_{w}d"] = counts[i].ravel()
    del counts, cum, at_snaps
    base = len(_TD)
    sent, opened, invited, attended = (w90[base + i].astype(float) for i in range(4))
    cols["push_open_rate_90d"] = _rate(opened, sent).ravel()
    cols["event_attend_rate_90d"] = _rate(attended, invited).ravel()
    high_in, high_out = (w90[_TD.index(("high", d))].astype(float) for d in DIRECTIONS)
    cols["high_response_rate_90d"] = np.minimum(_rate(high_in, high_out), 1.0).ravel()

    cell = cust * days + day  # (customer, day) as one flat index: numpy's fast path for scatters

    def on_days(channels: list[tuple[str, str]]) -> np.ndarray:  # (n, days): a touch of ``channels`` that day
        flags = np.zeros(n * days, bool)
        flags[cell[np.isin(channel[:, 0], [_TD.index(c) for c in channels])]] = True
        return flags.reshape(n, days)

    online, offline = on_days([("tech", "in")]), on_days([("low", "in"), ("high", "in")])
    for name, now, before in (("online_to_offline", offline, online), ("offline_to_online", online, offline)):
        seq = (now & _seen_within(before, OMO_DAYS)).astype(np.int32)
        cum_seq = np.concatenate([np.zeros((n, 1), np.int32), seq.cumsum(axis=1, dtype=np.int32)], axis=1)
        cols[f"omo_{name}_90d"] = (cum_seq[:, snaps] - cum_seq[:, np.maximum(snaps - 90, 0)]).ravel()

    # Contact state strictly before each snapshot, to the second.
    known = channel[:, 0] >= 0
    tier = np.where(known, channel[:, 0] // len(DIRECTIONS), -1)
    masks = contact_state_masks(tier, np.where(known, channel[:, 0] % len(DIRECTIONS), -1))
    after = np.searchsorted(snaps, day, side="right")  # the first snapshot after each event's day
    origin = t0.tz_convert(None).to_datetime64()
    for name, mask in masks.items():
        last = np.full((n, len(snaps) + 1), -1, np.int64)
        np.maximum.at(last.reshape(-1), cust[mask] * (len(snaps) + 1) + after[mask], seconds[mask])
        before = np.maximum.accumulate(last, axis=1)[:, :-1].ravel()
        at = np.where(before >= 0, origin + before.astype("timedelta64[s]"), np.datetime64("NaT"))
        cols[name] = pd.DatetimeIndex(at.astype("datetime64[ns]")).tz_localize("UTC").tz_convert(t0.tz)
    # Spend summed in event order within the spans between edges, as the counts are.
    spend = np.zeros((n, len(edges) + 1))
    spent = np.bincount(cust * len(edges) + span, weights=amount, minlength=n * len(edges))
    np.cumsum(spent.reshape(n, len(edges)), axis=1, out=spend[:, 1:])
    cols["spend_90d"] = (spend[:, snap_edges] - spend[:, start(90)]).ravel()
    return cols


def _seen_within(days_with: np.ndarray, window: int) -> np.ndarray:
    """(customers, days) -> True where the flag was set on one of the ``window`` days before."""
    n, days = days_with.shape
    cum = np.zeros((n, days + 1), np.int32)  # cum[:, d]: flagged days before day d
    np.cumsum(days_with, axis=1, dtype=np.int32, out=cum[:, 1:])
    seen = cum[:, :days].copy()  # flagged days in [d - window, d); in slices, not gathers of every day
    if window < days:
        seen[:, window:] -= cum[:, : days - window]
    return seen > 0


def _rate(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), 0.0)
