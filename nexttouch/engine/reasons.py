"""Every reason a decision carries, written once: the API, the batch and the plan quote these.

A reason is an ``Explanation``: a plain sentence for people (``text``, what ``reasons`` lists) and
the same fact for machines (``code``, ``action``, ``feature``, ``value``, ``effect``). Feature facts
are worded by ``nexttouch.feature_labels``, the one place that says what a feature means.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict
from zoneinfo import ZoneInfo

from nexttouch.catalog import NO_ACTION, Action
from nexttouch.feature_labels import describe, missing, plain, success

__all__ = ["Explanation", "plain"]


class Explanation(TypedDict):
    code: str
    action: str
    feature: str | None
    value: float | str | None
    effect: float | None
    text: str


def _item(
    code: str,
    action: str,
    text: str,
    feature: str | None = None,
    value: float | str | None = None,
    effect: float | None = None,
) -> Explanation:
    return {"code": code, "action": action, "feature": feature, "value": value, "effect": effect, "text": text}


def machine_value(value: object) -> float | str | None:
    """A feature value as the structured form carries it: a float to 4 places (as ``values``; a batch's times
    and one customer's differ in the 12th), a string or null (missing)."""
    if missing(value):
        return None
    if isinstance(value, str):
        return value
    try:
        return round(float(value), 4)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)


def deferred(action: Action, send_at: datetime, zone: str) -> Explanation:
    q = action.quiet_hours
    assert q is not None
    local = send_at.astimezone(ZoneInfo(zone)) if zone else send_at
    text = f"{action.name} deferred by quiet hours {q.start}-{q.end}: send at {local:%H:%M} in {zone}"
    return _item("deferred", action.name, text, "time_zone", f"{local:%H:%M}")


def removed(action: str, code: str, why: str, feature: str | None, value: object) -> Explanation:
    """An action a contact rule (``code``: the rule's name) or capacity took out of the choice."""
    return _item(code, action, f"{action} removed: {why}", feature, machine_value(value))


def no_capacity(action: Action) -> str:
    c = action.capacity
    assert c is not None
    return f"no capacity left: all {c.limit} per {c.period}" + (f" for this {c.per}" if c.per else "") + " are taken"


def explored(action: str, eligible: int, propensity: float) -> Explanation:
    text = f"exploration: {action} drawn at random among {eligible} eligible actions, to learn what works"
    return _item("explored", action, text, value=propensity)


def sampled(action: str, propensity: float) -> Explanation:
    text = (
        f"exploration: {action} drawn from this customer's uncertain affinity "
        f"(chosen with probability {propensity:.2f})"
    )
    return _item("sampled", action, text, value=propensity)


def own_history(outcomes: int, model_pick: str, own_pick: str) -> Explanation:
    text = (
        f"this customer's own responses ({outcomes} outcomes) changed the best action from {model_pick} to {own_pick}"
    )
    return _item("own_history", own_pick, text, value=float(outcomes))


def choice(action: str, uplift: float, eligible: int, runner_up: tuple[str, float] | None) -> Explanation:
    """Why the best eligible action won, in uplift over no contact (``value``: the uplift behind the choice).

    ``runner_up`` is the best other eligible action and its uplift (None when there is none).
    """
    if eligible == 1:
        return _item("only_eligible", action, f"{action} is the only eligible action", value=uplift)
    if action == NO_ACTION and runner_up is not None:
        other, gain = runner_up
        text = f"no contact: no eligible action is expected to add value (best: {other}, {gain:+.2f} over no contact)"
        return _item("no_uplift", action, text, value=gain)
    return _item("best_uplift", action, f"{action} adds the most over no contact: {uplift:+.2f} expected", value=uplift)


def driver(feature: str, value: object, action: Action, contribution: float) -> Explanation:
    """A feature that pushed the chosen action's chance of success (its contribution, in log-odds)."""
    what = success(action.success_touch, action.name)
    if action.name == NO_ACTION:
        what += " without contact"
    direction = "raises" if contribution > 0 else "lowers"
    text = f"{describe(feature, value)}: {direction} the chance of {what}"
    return _item("driver", action.name, text, feature, machine_value(value), round(contribution, 4))


def fallback(cause: str) -> list[Explanation]:
    return [
        _item("fallback", NO_ACTION, f"fallback: {cause}"),
        _item("fallback", NO_ACTION, f"rule: no contact ({NO_ACTION}) without the customer's features"),
    ]


def texts(items: list[Explanation]) -> list[str]:
    return [e["text"] for e in items]


# The plan's reasons: why each customer got its action.
PLAN_BEST = "adds the most over no contact"
PLAN_NOTHING = "no eligible action is expected to add value over no contact"
PLAN_ONLY = "the only eligible action"
PLAN_EXPLORED = "exploration: drawn among eligible non-scarce actions by explore weight"
PLAN_ASSIGNED = "scarce action assigned where it adds most over the best alternative"
PLAN_CAPACITY_FULL = "{scarce} would add more, but its capacity went to customers where it adds most"
