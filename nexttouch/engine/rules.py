"""Contact rules: which actions each customer may get now, and why the others were removed.

Rules are checked in the order of ``Rule``; an action is reported under the first one it breaks.
Consent is always checked (no consent on record = no contact); caps when their count feature is
present; cool-downs when the last-touch time or the recency feature is present; quiet hours when
the decision time is known.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import IntEnum
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from nexttouch.catalog import Action, Catalog
from nexttouch.columns import labels, numbers
from nexttouch.feature_labels import TIER_LAST, consent, describe

TIME_ZONE = "time_zone"  # profile column: the customer's IANA time zone
DAY_S = 86_400.0


class Rule(IntEnum):
    OK = 0
    CONSENT = 1
    UNKNOWN_ZONE = 2
    QUIET = 3
    CAP = 4
    COOLDOWN = 5
    CAPACITY = 6  # set by the engine when a scarce action's capacity is used up

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def code(self) -> str:
        """The rule's name in an answer's structured reasons: ``frequency_cap``."""
        return _LABELS[self].replace(" ", "_").replace("-", "_")


# Plain ints for the array code: comparing numpy arrays with enum members costs an enum lookup each.
OK, CONSENT, UNKNOWN_ZONE, QUIET, CAP, COOLDOWN = (int(r) for r in list(Rule)[:6])

_LABELS = {
    Rule.OK: "eligible",
    Rule.CONSENT: "no consent",
    Rule.UNKNOWN_ZONE: "unknown time zone",
    Rule.QUIET: "quiet hours",
    Rule.CAP: "frequency cap",
    Rule.COOLDOWN: "cool-down",
    Rule.CAPACITY: "no capacity",
}


@dataclass(frozen=True)
class Check:
    """The first rule each action breaks per row (``Rule.OK`` = eligible), with what the reasons quote."""

    rules: np.ndarray  # int8 (rows, actions)
    zone: np.ndarray  # (rows,) time zone name used for quiet hours
    local_minute: np.ndarray | None  # (rows,) minute of the local day, NaN for unknown zones
    counts: dict[tuple[int, int], np.ndarray]  # (action, cap) -> touches in the cap's window
    days: dict[int, np.ndarray]  # action -> days since its tier's last touch (at the send time)
    send_at: np.ndarray  # (rows, actions) Unix seconds an allowed action waits for (quiet hours), NaN: now
    eligible: np.ndarray  # (rows, actions) rules == OK


def check(
    catalog: Catalog, features: Mapping[str, np.ndarray], n: int, now: datetime | None, default_time_zone: str = "UTC"
) -> Check:
    """Apply every action's contact rules to ``n`` customers at once."""
    out = np.zeros((n, len(catalog.actions)), np.int8)
    send_at = np.full(out.shape, np.nan)
    zone = labels(features, TIME_ZONE, n)
    zone[zone == None] = default_time_zone  # noqa: E711 - elementwise
    local_minute = local_minutes(zone, now) if now is not None else None
    now_s = _utc(now).timestamp() if now is not None else None
    counts: dict[tuple[int, int], np.ndarray] = {}
    days: dict[int, np.ndarray] = {}
    for j, action in enumerate(catalog.actions):
        rule = out[:, j]  # a view: each rule marks only rows no earlier rule removed

        def mark(broken: np.ndarray, code: int, rule: np.ndarray = rule) -> None:
            rule[(rule == OK) & broken] = code

        if action.requires:
            mark(~(numbers(features, action.requires, n) == 1), CONSENT)  # NaN or missing: no consent
        wait = np.zeros(n)  # days until the action may go out
        if action.quiet_hours and local_minute is not None:
            start, end = action.quiet_hours.minutes
            mark(np.isnan(local_minute), UNKNOWN_ZONE)
            night = quiet(local_minute, start, end)
            later = (rule == OK) & night if action.defer_quiet_hours and now is not None else None
            if later is not None and later.any():  # later rules are checked at the send time
                at = quiet_end(zone, now, action.quiet_hours.end)
                send_at[later, j] = at[later]
                wait = np.where(later, (at - _utc(now).timestamp()) / DAY_S, 0.0)
            elif later is None:
                mark(night, QUIET)
        for c, cap in enumerate(action.caps):
            count = counts[j, c] = numbers(features, action.cap_feature(cap), n)
            mark(count >= cap.max, CAP)  # NaN: feature absent, no cap
        if action.cooldown_days:
            since = numbers(features, action.recency_feature, n) + wait
            if now_s is not None and action.last_touch_feature in features:
                last = numbers(features, action.last_touch_feature, n)
                exact = np.maximum((now_s - last) / DAY_S, 0.0) + wait
                since = np.where(np.isnan(exact), since, exact)
            days[j] = since
            mark(since < action.cooldown_days, COOLDOWN)
    eligible = out == OK
    send_at[~eligible] = np.nan  # a later rule removed it after all
    return Check(out, zone, local_minute, counts, days, send_at, eligible)


# One removal: (rule, its text, the feature it quotes, that feature's value for the row).
Removal = tuple[Rule, str, str | None, object]


def reasons(catalog: Catalog, c: Check) -> list[dict[str, str]]:
    """Why each removed action was removed, row by row, quoting the row's own numbers."""
    return [{a: text for a, (_rule, text, _f, _v) in row.items()} for row in removals(catalog, c)]


def removals(catalog: Catalog, c: Check) -> list[dict[str, Removal]]:
    """Each removed action's rule, text and the feature value it quotes, row by row."""
    out: list[dict[str, Removal]] = [{} for _ in range(len(c.rules))]
    memo: dict[tuple[int, int, object], Removal] = {}  # consent and quiet-hour texts depend on the zone only
    for r, j in zip(*np.nonzero(c.rules), strict=True):
        row, code = int(r), Rule(int(c.rules[r, j]))
        action = catalog.actions[j]
        if code in (Rule.CONSENT, Rule.QUIET, Rule.UNKNOWN_ZONE):
            key = (int(j), int(code), c.zone[row] if code != Rule.CONSENT else None)
            found = memo.get(key)
            if found is None:
                found = memo[key] = _removal(action, int(j), code, c, row)
        else:
            found = _removal(action, int(j), code, c, row)
        out[r][action.name] = found
    return out


def _removal(action: Action, j: int, code: Rule, c: Check, row: int) -> Removal:
    if code == Rule.CONSENT:
        assert action.requires is not None
        return code, f"no {consent(action.requires)} on record", action.requires, None
    if code == Rule.UNKNOWN_ZONE:
        return code, f"unknown time zone {c.zone[row]!r}: quiet hours cannot be checked", TIME_ZONE, c.zone[row]
    if code == Rule.QUIET:
        q = action.quiet_hours
        assert q is not None and c.local_minute is not None
        minute = int(c.local_minute[row])
        text = f"quiet hours {q.start}-{q.end} ({minute // 60:02d}:{minute % 60:02d} in {c.zone[row]})"
        return code, text, TIME_ZONE, c.zone[row]
    if code == Rule.CAP:
        for k, cap in enumerate(action.caps):
            count = c.counts[j, k][row]
            if count >= cap.max:
                feature = action.cap_feature(cap)
                return code, f"{describe(feature, count)} (at most {cap.max})", feature, count
    if code == Rule.COOLDOWN:
        days = c.days[j][row]
        text = f"cool-down: last {TIER_LAST[action.tier]} {days:.1f} days ago (wait {action.cooldown_days:g} days)"
        return code, text, action.recency_feature, days
    raise ValueError(f"no reason text for rule {code!r}")


def local_minutes(zones: np.ndarray, now: datetime) -> np.ndarray:
    """Minute of the local day at ``now`` for every row's time zone (NaN for unknown zones)."""
    if len(zones) == 1:  # one customer: no factorizing
        return np.array([_local_minute(str(zones[0]), _utc(now))])
    codes, uniques = pd.factorize(zones)
    minute = np.array([_local_minute(str(z), _utc(now)) for z in uniques], dtype=np.float64)
    return minute[codes]


def quiet_end(zones: np.ndarray, now: datetime, end: str) -> np.ndarray:
    """Unix seconds of the next local ``end`` (HH:MM) after ``now`` in every row's zone (NaN: unknown zone)."""
    codes, uniques = (np.zeros(1, np.int64), zones) if len(zones) == 1 else pd.factorize(zones)
    hour, minute = int(end[:2]), int(end[3:])
    out = np.full(len(uniques), np.nan)
    for i, name in enumerate(uniques):
        tz = _zone(str(name))
        if tz is None:
            continue
        local = _utc(now).astimezone(tz)
        at = datetime.combine(local.date(), time(hour, minute), tzinfo=tz)
        if at <= local:
            at = datetime.combine(local.date() + timedelta(days=1), time(hour, minute), tzinfo=tz)
        out[i] = at.timestamp()
    return out[codes]


def _local_minute(zone: str, now: datetime) -> float:
    tz = _zone(zone)
    if tz is None:
        return np.nan
    local = now.astimezone(tz)
    return float(local.hour * 60 + local.minute)


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def quiet(minute: np.ndarray, start: int, end: int) -> np.ndarray:
    """Inside [start, end) of the local day; the window wraps midnight when start > end."""
    return (minute >= start) & (minute < end) if start < end else (minute >= start) | (minute < end)


def _utc(t: datetime) -> datetime:
    """Naive times are UTC."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t
