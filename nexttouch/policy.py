"""Arbitration: expected net value per action, eligibility, epsilon exploration, propensity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nexttouch.catalog import NO_ACTION, Catalog


@dataclass(frozen=True)
class Choice:
    action: str
    propensity: float
    explored: bool
    values: dict[str, float]  # expected net value of every action (ineligible ones too)
    eligible: list[str]
    removed: dict[str, str]  # ineligible action -> reason


def eligibility(catalog: Catalog, consents: dict[str, float | None]) -> dict[str, str]:
    """Actions removed by consent rules, with the reason; ``none`` is always eligible."""
    removed = {}
    for action in catalog.actions:
        if action.requires and consents.get(action.requires) != 1:
            removed[action.name] = f"no {action.requires} on record"
    return removed


def net_values(catalog: Catalog, p_success: np.ndarray) -> np.ndarray:
    """value(a) = P(success | a) * value_of_success(a) - cost(a), per row and action."""
    value = np.array([a.value_of_success for a in catalog.actions])
    cost = np.array([a.cost for a in catalog.actions])
    return p_success * value - cost


def choose(
    catalog: Catalog, p_success: np.ndarray, removed: dict[str, str], epsilon: float, rng: np.random.Generator
) -> Choice:
    """Best eligible action by net value; with probability epsilon a uniform eligible one.

    The propensity is the probability this policy had of choosing the returned action,
    logged so that later training and off-policy evaluation can correct for the policy.
    """
    names = catalog.names
    values = net_values(catalog, p_success)
    eligible = [a for a in names if a not in removed]
    best = max(eligible, key=lambda a: (values[names.index(a)], a == NO_ACTION))
    explored = bool(rng.random() < epsilon)
    action = eligible[int(rng.integers(len(eligible)))] if explored else best
    propensity = epsilon / len(eligible) + (1 - epsilon) * (action == best)
    return Choice(
        action=action,
        propensity=float(propensity),
        explored=explored,
        values={a: round(float(v), 4) for a, v in zip(names, values, strict=True)},
        eligible=eligible,
        removed=removed,
    )
