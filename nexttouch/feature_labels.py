"""What each model input says about a customer, in words an advisor or a marketer reads.

One label per feature name, for every input of the default feature service: the touch history
(features/touch_features.py), recency (nexttouch.touches) and the simulated brand's profile. The
names are built from the same vocabularies as the features (tiers, directions, touch types, cap
windows), so a renamed vocabulary shows up here too. A feature without a label (a brand's own
profile column) reads as its name and value. Values are formatted by ``plain``, the one number
format every answer uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nexttouch.catalog import CAP_WINDOWS
from nexttouch.schemas import TIERS, TOUCH_TYPES
from nexttouch.touches import LAST_AT, LAST_CONTACT_AT, NEVER, RECENCY

HISTORY_WINDOW = 90  # days of the response rates, OMO counts and spend


def plain(value: object) -> str:
    """A value as a person reads it: 2.27, 1502 and 12, not 2.2663194444444446 or 1.5e+03."""
    if missing(value):
        return "missing"
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer() and abs(value) < 1e15:
            return f"{value:.0f}"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def missing(value: object) -> bool:
    """None, NaN or pandas' NA (NaN is the one value unequal to itself; NA's comparison has no truth value)."""
    try:
        return value is None or bool(value != value)
    except TypeError:
        return True


def count(n: float, one: str, many: str) -> str:
    """``no pushes``, ``1 push``, ``3 pushes``."""
    if n == 0:
        return f"no {many}"
    return f"1 {one}" if n == 1 else f"{plain(float(n))} {many}"


def span(days: float) -> str:
    """A duration in the unit a person would use, rounded down: ``3 days``, ``7 weeks``, ``4 months``."""
    for unit, size, below in (("day", 1, 14), ("week", 7, 70), ("month", 30.44, 730), ("year", 365.25, np.inf)):
        if days < below:
            n = int(days // size)
            return f"{n} {unit}" + ("" if n == 1 else "s")
    raise AssertionError("unreachable")


def share(rate: float) -> str:
    return f"{rate:.0%}"


@dataclass(frozen=True)
class Label:
    """``says(value)`` for a known value; ``unknown`` when the value is missing."""

    says: Callable[[Any], str]
    unknown: str
    numeric: bool = True  # the value is a number (a profile label reads any value)


# Touches per tier and direction, as counted by `{tier}_{direction}_{days}d` (singular, plural).
TIER_TOUCHES: dict[tuple[str, str], tuple[str, str]] = {
    ("tech", "in"): ("app visit, like or push open", "app visits, likes or push opens"),
    ("tech", "out"): ("push", "pushes"),
    ("low", "in"): ("event attended or store visit", "events attended or store visits"),
    ("low", "out"): ("event invitation", "event invitations"),
    ("high", "in"): ("purchase", "purchases"),
    ("high", "out"): ("advisor call", "advisor calls"),
}
# What the last touch of a tier (either direction) was, for recency.
TIER_LAST: dict[str, str] = {
    "tech": "app visit or push",
    "low": "event, invitation or store visit",
    "high": "advisor call or purchase",
}
# Each touch type: (one, many, an occurrence as the success of an action).
TOUCH_WORDS: dict[str, tuple[str, str, str]] = {
    "app_session": ("app session", "app sessions", "an app session"),
    "app_like": ("like in the app", "likes in the app", "a like in the app"),
    "push_sent": ("push", "pushes", "a push"),
    "push_opened": ("push opened", "pushes opened", "opening the push"),
    "event_invited": ("event invitation", "event invitations", "an invitation"),
    "event_attended": ("event attended", "events attended", "attending the event"),
    "store_visit": ("store visit", "store visits", "a store visit"),
    "purchase": ("purchase", "purchases", "a purchase"),
    "advisor_call": ("advisor call", "advisor calls", "an advisor call"),
}
assert set(TOUCH_WORDS) == set(TOUCH_TYPES), "every touch type has words"
assert set(TIER_LAST) == set(TIERS), "every tier has words"


def _window(tier: str, direction: str, days: int) -> Label:
    one, many = TIER_TOUCHES[tier, direction]
    return Label(lambda v: f"{count(v, one, many)} in the last {days} days", f"{many} in the last {days} days unknown")


def _recency(tier_words: str) -> Label:
    def says(days: float) -> str:
        if days >= NEVER:
            return f"no {tier_words} on record"
        if days < 1:
            return f"last {tier_words} today"
        return f"no {tier_words} for {span(days)}"

    return Label(says, f"last {tier_words} unknown")


def _rate(answered: str, of: str, window: str) -> Label:
    return Label(lambda v: f"{answered} about {share(v)} of the {of} ({window})", f"no {of} to answer ({window})")


def _per(what: str, per: str, window: str) -> Label:
    return Label(lambda v: f"about {plain(float(v))} {what} per {per} ({window})", f"{what} per {per} unknown")


def _decayed(touch: str, linked: bool) -> Label:
    _one, many, _success = TOUCH_WORDS[touch]
    inbound = TOUCH_TYPES[touch].direction == "in"
    if linked:
        how = "in answer to a contact" if inbound else "sent by a decision"
    else:
        how = "on their own" if inbound else "outside the decisions"

    # a count weighted by age (a touch 30 days old counts half): "about", to one decimal
    def says(v: float) -> str:
        n = round(v, 1)
        return f"no recent {many} {how}" if n == 0 else f"about {plain(n)} recent {many} {how}"

    return Label(says, f"recent {many} {how} unknown")


# Consent flags (a contact rule's `requires`): what is given when the flag is 1.
CONSENTS = {"push_opt_in": "push opt-in", "call_consent": "consent to advisor calls"}


def _flag(feature: str, yes: str) -> Label:
    return Label(lambda v: yes if v == 1 else f"no {CONSENTS[feature]}", f"no {CONSENTS[feature]} on record")


def _profile(name: str) -> Label:
    return Label(lambda v: f"{name} {plain(v)}", f"{name} unknown", numeric=False)


def _all_touches(touch: str) -> Label:
    one, many, _ = TOUCH_WORDS[touch]
    return Label(lambda v: f"{count(v, one, many)} in all", f"{many} in all unknown")


LABELS: dict[str, Label] = {
    **{
        f"{t}_{d}_{w}d": _window(t, d, w)
        for (t, d) in TIER_TOUCHES
        for w in CAP_WINDOWS  # the rolling windows the features count (and caps read)
    },
    "push_open_rate_90d": _rate("opens", "pushes", f"last {HISTORY_WINDOW} days"),
    "event_attend_rate_90d": _rate("attends", "event invitations", f"last {HISTORY_WINDOW} days"),
    "high_response_rate_90d": _rate("buys after", "advisor calls", f"last {HISTORY_WINDOW} days"),
    "omo_online_to_offline_90d": Label(
        lambda v: f"{count(v, 'day', 'days')} in person soon after using the app (last {HISTORY_WINDOW} days)",
        "days in person after using the app unknown",
    ),
    "omo_offline_to_online_90d": Label(
        lambda v: f"{count(v, 'day', 'days')} in the app soon after meeting in person (last {HISTORY_WINDOW} days)",
        "days in the app after meeting in person unknown",
    ),
    "spend_90d": Label(lambda v: f"spent {plain(float(v))} in the last {HISTORY_WINDOW} days", "spend unknown"),
    "tenure_days": Label(lambda v: f"customer for {span(v)}", "time as a customer unknown"),
    "days_observed": Label(lambda v: f"first touch {span(v)} ago", "first touch unknown"),
    "push_sent_all": _all_touches("push_sent"),
    "event_invited_all": _all_touches("event_invited"),
    "advisor_call_all": _all_touches("advisor_call"),
    "push_open_rate_all": _rate("opens", "pushes", "all history"),
    "event_attend_rate_all": _rate("attends", "event invitations", "all history"),
    "call_visit_rate_all": _rate("visits a store after", "advisor calls", "all history"),
    **{f"{t}_organic_all": _all_touches(t) for t in ("app_session", "app_like", "store_visit", "purchase")},
    "app_like_per_session_all": _per("likes", "app session", "all history"),
    "purchase_per_visit_all": _per("purchases", "store visit", "all history"),
    **{f"{t}_{kind}_decayed": _decayed(t, kind == "linked") for t in TOUCH_WORDS for kind in ("organic", "linked")},
    **{RECENCY[LAST_AT[t]]: _recency(TIER_LAST[t]) for t in TIERS},
    RECENCY[LAST_CONTACT_AT]: _recency("contact from the brand"),
    "push_opt_in": _flag("push_opt_in", "opted in to pushes"),
    "call_consent": _flag("call_consent", "agreed to advisor calls"),
    "region": _profile("region"),
    "segment": _profile("segment"),
    "time_zone": _profile("time zone"),
}


def describe(feature: str, value: object) -> str:
    """What ``feature`` = ``value`` says about the customer; a feature without a label reads as its name."""
    label = LABELS.get(feature)
    if label is None:
        return f"{feature.replace('_', ' ')}: {plain(value)}"
    if missing(value):
        return label.unknown
    if not label.numeric:
        return label.says(value)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # not the number the label expects: say it as it is
        return f"{feature.replace('_', ' ')}: {plain(value)}"
    return label.unknown if number != number else label.says(number)  # NaN


def consent(feature: str) -> str:
    """The consent a contact rule needs, in words: ``push opt-in``."""
    return CONSENTS.get(feature, feature.replace("_", " "))


def success(touch: str | None, action: str) -> str:
    """What an action's success is, in words: ``opening the push``."""
    return TOUCH_WORDS[touch][2] if touch in TOUCH_WORDS else f"{action} succeeding"
