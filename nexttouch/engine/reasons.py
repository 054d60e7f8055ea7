"""Every reason text a decision carries, written once: the API, the batch and the plan quote these."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from nexttouch.catalog import NO_ACTION, Action


def deferred(action: Action, send_at: datetime, zone: str) -> str:
    q = action.quiet_hours
    assert q is not None
    local = send_at.astimezone(ZoneInfo(zone)) if zone else send_at
    return f"{action.name} deferred by quiet hours {q.start}-{q.end}: send at {local:%H:%M} in {zone}"


def removed(action: str, why: str) -> str:
    return f"{action} removed: {why}"


def no_capacity(action: Action) -> str:
    c = action.capacity
    assert c is not None
    return f"no capacity left: all {c.limit} per {c.period}" + (f" for this {c.per}" if c.per else "") + " are taken"


def explored(action: str, eligible: int) -> str:
    return f"exploration: {action} drawn at random among {eligible} eligible"


def sampled(action: str, propensity: float) -> str:
    return (
        f"exploration: {action} drawn from this customer's uncertain affinity "
        f"(chosen with probability {propensity:.2f})"
    )


def own_history(outcomes: int, model_pick: str, own_pick: str) -> str:
    return (
        f"this customer's own responses ({outcomes} outcomes) changed the best action from {model_pick} to {own_pick}"
    )


def best_value(action: Action, p: float, net: float, eligible: int) -> str:
    if eligible == 1:
        return f"{action.name} is the only eligible action"
    return (
        f"{action.name} has the highest net value: {p:.3f} x {action.value_of_success:g} - {action.cost:g} = {net:.2f}"
    )


def driver(feature: str, value: object, action: str, contribution: float) -> str:
    """A feature that pushed the chosen action's score (its LightGBM contribution, in log-odds)."""
    direction = "raised" if contribution > 0 else "lowered"
    return f"{feature}={plain(value)} {direction} the {action} score ({contribution:+.3f} log-odds)"


def fallback(cause: str) -> list[str]:
    return [f"fallback: {cause}", f"rule: no contact ({NO_ACTION}) without the customer's features"]


# The plan's reasons: why each customer got its action.
PLAN_BEST = "best net value"
PLAN_EXPLORED = "exploration: drawn among eligible non-scarce actions by explore weight"
PLAN_ASSIGNED = "scarce action assigned where it adds most over the best alternative"
PLAN_CAPACITY_FULL = "{scarce} would add more, but its capacity went to customers where it adds most"


def plain(value: object) -> str:
    """A feature value as a person reads it: 2.27, 1502 and 12, not 2.2663194444444446 or 1.5e+03."""
    if value is None:
        return "missing"
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "missing"
        if float(value).is_integer() and abs(value) < 1e15:
            return f"{value:.0f}"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
