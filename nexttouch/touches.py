"""Touch rules every stage shares: a touch type's tier and direction, the contact state and recency.

The nightly features (``features/touch_features.py``), the on-demand view Feast runs for training
and serving (``features/feature_views.py``), the service's own fast reads
(``serving/online_features.py``) and the real-time contact updates (``serving/contact_state.py``)
all use these definitions, so the four cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from nexttouch.schemas import DIRECTIONS, REQUEST_AT, TIERS, TOUCH_TYPES, utc_times

TYPE_NAMES: tuple[str, ...] = tuple(TOUCH_TYPES)
# Each touch type's tier and direction, as positions in TIERS and DIRECTIONS, indexed by its position in TYPE_NAMES.
TYPE_TIER = np.array([TIERS.index(TOUCH_TYPES[t].tier) for t in TYPE_NAMES], np.int64)
TYPE_DIRECTION = np.array([DIRECTIONS.index(TOUCH_TYPES[t].direction) for t in TYPE_NAMES], np.int64)
OUTBOUND = DIRECTIONS.index("out")

# Contact state: the last touch of each tier (either direction) and the last brand -> customer touch.
LAST_AT: dict[str, str] = {t: f"last_{t}_at" for t in TIERS}
LAST_CONTACT_AT = "last_contact_at"
CONTACT_STATE: list[str] = [*LAST_AT.values(), LAST_CONTACT_AT]
# Recency: days from each contact-state time to the moment of the decision.
RECENCY: dict[str, str] = {
    **{LAST_AT[t]: f"days_since_{t}" for t in TIERS},
    LAST_CONTACT_AT: "days_since_contact",
}
RECENCY_FEATURES: list[str] = list(RECENCY.values())
NEVER = 999.0  # days since a touch that never happened
SECONDS_PER_DAY = 86_400
_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}  # ticks of a timedelta64 unit per second


def codes(values: pd.Series | np.ndarray, vocabulary: Sequence[str], first: int = 0) -> np.ndarray:
    """``first`` + position of each value in ``vocabulary`` (-1 if absent or missing); any string dtype, no Python
    loop (an arrow hash lookup: arrow-backed text is not copied)."""
    text = pc.cast(pa.array(values, from_pandas=True), pa.large_string())
    found = pc.index_in(text, value_set=pa.array(list(vocabulary), pa.large_string()))
    found = pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(found >= 0, found + first, -1)


def tier_and_direction(type_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tier and direction (positions in TIERS, DIRECTIONS) of touch types (positions in TYPE_NAMES); -1 stays -1."""
    known = type_codes >= 0
    at = np.where(known, type_codes, 0)
    return np.where(known, TYPE_TIER[at], -1), np.where(known, TYPE_DIRECTION[at], -1)


def contact_state_masks(tier: np.ndarray, direction: np.ndarray) -> dict[str, np.ndarray]:
    """Which touches move each contact-state column (tier and direction as positions in TIERS, DIRECTIONS)."""
    return {**{LAST_AT[t]: tier == i for i, t in enumerate(TIERS)}, LAST_CONTACT_AT: direction == OUTBOUND}


def days_since(elapsed: np.ndarray) -> np.ndarray:
    """Recency: the days in each elapsed time (timedelta64 of any unit; NaT: no last touch).

    Never negative (a touch stamped a little after the request clock counts as now); ``NEVER`` where
    there was no touch. The seconds are the ticks over ticks per second, as pandas' ``total_seconds``
    computes them, so a frame, a typed batch and one customer's values give the same float64 days.
    """
    per_second = _PER_SECOND[np.datetime_data(elapsed.dtype)[0]]
    days = np.maximum(elapsed.view(np.int64) / per_second / SECONDS_PER_DAY, 0.0)
    return np.where(np.isnat(elapsed), NEVER, days)


def recency(last: Mapping[str, pd.Series], now: pd.Series | datetime) -> dict[str, np.ndarray]:
    """Recency features by name from contact-state columns (any of CONTACT_STATE) at ``now``.

    ``now`` is one time (serving: the request) or one per row (training: each decision's time).
    Typed UTC columns are used as they are; anything else is read as UTC timestamps first.
    """
    at = _stamps(now) if isinstance(now, pd.Series) else _stamp(now)
    return {RECENCY[name]: days_since(at - _stamps(column)) for name, column in last.items()}


def recency_frame(inputs: pd.DataFrame) -> pd.DataFrame:
    """Recency of every contact-state column at each row's ``request_at``: Feast's on-demand view's function."""
    days = recency({c: inputs[c] for c in CONTACT_STATE}, inputs[REQUEST_AT])
    return pd.DataFrame(days, index=inputs.index)


def recency_row(last: Mapping[str, datetime | None], now: datetime) -> dict[str, float]:
    """``recency`` of one customer's contact-state values (Python datetimes, None: never), without pandas.

    Naive times are UTC. The elapsed times are Python timedeltas (microseconds, as ``total_seconds``).
    """
    start = now.replace(tzinfo=now.tzinfo or UTC)
    elapsed = [None if t is None else start - t.replace(tzinfo=t.tzinfo or UTC) for t in last.values()]
    days = days_since(np.array(elapsed, dtype="m8[us]"))
    return {RECENCY[name]: d for name, d in zip(last, days.tolist(), strict=True)}


def _stamps(values: pd.Series) -> np.ndarray:
    """UTC timestamps as numpy datetime64 (NaT where missing), in the column's own unit."""
    utc = values if isinstance(values.dtype, pd.DatetimeTZDtype) and str(values.dtype.tz) == "UTC" else None
    if utc is None:
        utc = utc_times(values)
    return utc.array.asi8.view(f"M8[{utc.dtype.unit}]")


def _stamp(at: datetime) -> np.datetime64:
    stamp = pd.Timestamp(at)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return np.datetime64(stamp.value, "ns")
