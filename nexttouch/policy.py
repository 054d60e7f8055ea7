"""Arbitration: contact policy (eligibility), expected net value, cost-aware exploration, propensity.

Eligibility exists twice on purpose: ``eligibility`` explains one request (reasons), ``eligible_mask``
decides millions of rows at once (plan, batch, OPE). Both apply the same rules in the same order and
a test checks they agree row by row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from nexttouch.catalog import NO_ACTION, Action, Catalog
from nexttouch.schemas import utc_times

TIME_ZONE = "time_zone"  # profile column: the customer's IANA time zone
DAY_S = 86_400.0


@dataclass(frozen=True)
class Choice:
    action: str
    propensity: float
    explored: bool
    values: dict[str, float]  # expected net value of every action (ineligible ones too)
    eligible: list[str]
    removed: dict[str, str]  # ineligible action -> reason


# Contact rules in the order they are checked; an action is reported under the first one it breaks.
RULES = ("eligible", "no consent", "unknown time zone", "quiet hours", "frequency cap", "cool-down")
OK, CONSENT, UNKNOWN_ZONE, QUIET, CAP, COOLDOWN = range(len(RULES))


def eligibility(
    catalog: Catalog,
    features: Mapping[str, Any],
    now: datetime | None = None,
    default_time_zone: str = "UTC",
) -> dict[str, str]:
    """Actions removed by the contact policy, each with the first rule it breaks; ``none`` always stays.

    Consent is always checked (no consent on record = no contact). Caps are checked when their
    count feature is present, cool-downs when the last-touch time (with ``now``) or the recency
    feature is present, quiet hours when ``now`` is given.
    """
    removed: dict[str, str] = {}
    for action in catalog.actions:
        rule, reason = why_not(action, features, now, default_time_zone)
        if rule != OK:
            removed[action.name] = reason
    return removed


def why_not(action: Action, f: Mapping[str, Any], now: datetime | None, default_tz: str) -> tuple[int, str]:
    """The first contact rule ``action`` breaks for one customer (index into ``RULES``) and why."""
    if action.requires and _number(f.get(action.requires)) != 1:
        return CONSENT, f"no {action.requires} on record"
    if action.quiet_hours and now is not None:
        zone = f.get(TIME_ZONE)
        zone = default_tz if _missing(zone) else str(zone)
        try:
            local = _utc(now).astimezone(ZoneInfo(zone))
        except (ZoneInfoNotFoundError, ValueError):
            return UNKNOWN_ZONE, f"unknown time zone {zone!r}: quiet hours cannot be checked"
        start, end = action.quiet_hours.minutes
        if _quiet(local.hour * 60 + local.minute, start, end):
            q = action.quiet_hours
            return QUIET, f"quiet hours {q.start}-{q.end} ({local:%H:%M} in {zone})"
    for cap in action.caps:
        count = _number(f.get(action.cap_feature(cap)))
        if count is not None and count >= cap.max:
            return CAP, f"frequency cap: {count:g} {action.tier} touches out in {cap.days} days (max {cap.max})"
    if action.cooldown_days:
        days = None
        last = f.get(action.last_touch_feature)
        if now is not None and not _missing(last):
            days = max((_utc(now) - _utc(pd.Timestamp(last))).total_seconds() / DAY_S, 0.0)
        elif not _missing(f.get(action.recency_feature)):
            days = float(f[action.recency_feature])
        if days is not None and days < action.cooldown_days:
            return COOLDOWN, f"cool-down: last {action.tier} touch {days:.1f} days ago (wait {action.cooldown_days:g})"
    return OK, ""


def eligible_mask(
    catalog: Catalog, frame: pd.DataFrame, now: datetime | None, default_time_zone: str = "UTC"
) -> np.ndarray:
    """Vectorised ``eligibility``: True where an action is allowed, shape (rows, actions)."""
    return broken_rules(catalog, frame, now, default_time_zone) == OK


def broken_rules(
    catalog: Catalog, frame: pd.DataFrame, now: datetime | None, default_time_zone: str = "UTC"
) -> np.ndarray:
    """Vectorised ``why_not``: the first rule each action breaks per row (``OK`` = eligible), int8 (rows, actions)."""
    n = len(frame)
    out = np.zeros((n, len(catalog.actions)), np.int8)
    local_minute = _local_minutes(frame, now, default_time_zone) if now is not None else None
    for j, action in enumerate(catalog.actions):
        rule = out[:, j]  # a view: rules below only mark rows that no earlier rule removed

        def mark(broken: np.ndarray, code: int, rule: np.ndarray = rule) -> None:
            rule[(rule == OK) & broken] = code

        if action.requires:
            mark(~(_column(frame, action.requires) == 1), CONSENT)  # NaN or missing: no consent
        if action.quiet_hours and local_minute is not None:
            start, end = action.quiet_hours.minutes
            mark(np.isnan(local_minute), UNKNOWN_ZONE)
            mark(_quiet(local_minute, start, end), QUIET)
        for cap in action.caps:
            mark(_column(frame, action.cap_feature(cap)) >= cap.max, CAP)  # NaN: feature absent, no cap
        if action.cooldown_days:
            days = _column(frame, action.recency_feature)
            if now is not None and action.last_touch_feature in frame:
                last = utc_times(frame[action.last_touch_feature])
                since = ((pd.Timestamp(_utc(now)) - last).dt.total_seconds() / DAY_S).clip(lower=0).to_numpy()
                days = np.where(np.isnan(since), days, since)
            mark(days < action.cooldown_days, COOLDOWN)
    return out


def _local_minutes(frame: pd.DataFrame, now: datetime, default_tz: str) -> np.ndarray:
    """Minute of the local day at ``now`` for every row's time zone (NaN for unknown zones)."""
    if TIME_ZONE not in frame:
        zones = pd.Series(default_tz, index=frame.index)
    else:
        zones = frame[TIME_ZONE].astype(object).where(frame[TIME_ZONE].notna(), default_tz).astype(str)
    codes, uniques = pd.factorize(zones)
    minute = np.full(len(uniques), np.nan)
    for i, zone in enumerate(uniques):
        try:
            local = _utc(now).astimezone(ZoneInfo(zone))
        except (ZoneInfoNotFoundError, ValueError):
            continue
        minute[i] = local.hour * 60 + local.minute
    return minute[codes]


def _quiet(minute: Any, start: int, end: int) -> Any:
    """Inside [start, end) of the local day; the window wraps midnight when start > end."""
    return (minute >= start) & (minute < end) if start < end else (minute >= start) | (minute < end)


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _utc(t: datetime) -> datetime:
    """Naive times are UTC."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def net_values(catalog: Catalog, p_success: np.ndarray) -> np.ndarray:
    """value(a) = P(success | a) * value_of_success(a) - cost(a), per row and action."""
    value = np.array([a.value_of_success for a in catalog.actions])
    cost = np.array([a.cost for a in catalog.actions])
    return p_success * value - cost


def explore_probabilities(catalog: Catalog, eligible: np.ndarray) -> np.ndarray:
    """P(action | exploring): explore weights renormalised over each row's eligible actions.

    ``eligible`` is a bool array (..., actions); rows with no explorable action get all zeros.
    """
    weights = np.array([a.explore_weight for a in catalog.actions]) * eligible
    total = weights.sum(axis=-1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


def choose(
    catalog: Catalog, p_success: np.ndarray, removed: dict[str, str], epsilon: float, rng: np.random.Generator
) -> Choice:
    """Best eligible action by net value; with probability epsilon one drawn by explore weight.

    Exploration is cost-aware: among the eligible actions, each is drawn with probability
    proportional to its catalog ``explore_weight`` (cheap pushes more often than advisor calls).
    The propensity is the exact probability this policy had of choosing the returned action,
    epsilon * P(a | exploring) + (1 - epsilon) * [a is the best], logged so that later training
    and off-policy evaluation can correct for the policy.
    """
    names = catalog.names
    values = net_values(catalog, p_success)
    eligible_mask_row = np.array([a not in removed for a in names])
    eligible = [a for a, ok in zip(names, eligible_mask_row, strict=True) if ok]
    best = max(eligible, key=lambda a: (values[names.index(a)], a == NO_ACTION))
    explore_p = explore_probabilities(catalog, eligible_mask_row)
    can_explore = explore_p.sum() > 0
    explored = bool(can_explore and rng.random() < epsilon)
    action = names[int(rng.choice(len(names), p=explore_p))] if explored else best
    eps = epsilon if can_explore else 0.0
    propensity = eps * explore_p[names.index(action)] + (1 - eps) * (action == best)
    return Choice(
        action=action,
        propensity=float(propensity),
        explored=explored,
        values={a: round(float(v), 4) for a, v in zip(names, values, strict=True)},
        eligible=eligible,
        removed=removed,
    )
