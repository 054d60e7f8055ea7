"""Arbitration: expected net value, the best eligible action, cost-aware exploration, exact propensity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nexttouch.catalog import Catalog


def net_values(catalog: Catalog, p_success: np.ndarray) -> np.ndarray:
    """value(a) = P(success | a) * value_of_success(a) - cost(a), per row and action."""
    value = np.array([a.value_of_success for a in catalog.actions])
    cost = np.array([a.cost for a in catalog.actions])
    return p_success * value - cost


def explore_probabilities(catalog: Catalog, allowed: np.ndarray) -> np.ndarray:
    """P(action | exploring): explore weights renormalised over each row's allowed actions.

    ``allowed`` is a bool array (..., actions); rows with nothing to explore get all zeros.
    """
    weights = np.array([a.explore_weight for a in catalog.actions]) * allowed
    total = weights.sum(axis=-1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


def best(values: np.ndarray, allowed: np.ndarray, none: int) -> np.ndarray:
    """Column of the highest value among allowed actions per row; ``none`` (always allowed) wins ties."""
    masked = np.where(allowed, values, -np.inf)
    top = masked.argmax(axis=1)
    return np.where(masked[:, none] >= masked[np.arange(len(top)), top], none, top)


@dataclass(frozen=True)
class Choice:
    action: np.ndarray  # (rows,) catalog column
    explored: np.ndarray  # (rows,) drawn by exploration
    propensity: np.ndarray  # (rows,) exact P(this policy chose the action)
    epsilon: np.ndarray  # (rows,) exploration share (0 where nothing can be explored)
    explore_p: np.ndarray  # (rows, actions) P(action | exploring)


def explore(
    catalog: Catalog,
    planned: np.ndarray,
    explorable: np.ndarray,
    epsilon: float,
    explore_u: np.ndarray,
    draw_u: np.ndarray,
) -> Choice:
    """With probability epsilon, an action drawn among ``explorable`` by explore weight instead of ``planned``.

    Exploration is cost-aware (cheap pushes more often than advisor calls, by catalog weight). The
    propensity is exact: epsilon * P(a | exploring) + (1 - epsilon) * [a is planned], logged so
    training and off-policy evaluation can correct for the policy. ``explore_u`` and ``draw_u`` are
    the rows' uniform numbers in [0, 1) and (0, 1]; a caller that chooses again (capacity) reuses them.
    """
    explore_p = explore_probabilities(catalog, explorable)
    total = explore_p.sum(axis=1)
    can = total > 0
    eps = np.where(can, epsilon, 0.0)
    explored = can & (explore_u < epsilon)
    drawn = (explore_p.cumsum(axis=1) >= (draw_u * total)[:, None]).argmax(axis=1)
    action = np.where(explored, drawn, planned)
    rows = np.arange(len(action))
    propensity = eps * explore_p[rows, action] + (1 - eps) * (action == planned)
    return Choice(action, explored, propensity, eps, explore_p)


def choose(
    catalog: Catalog,
    values: np.ndarray,
    allowed: np.ndarray,
    epsilon: float,
    explore_u: np.ndarray,
    draw_u: np.ndarray,
    none: int,
) -> Choice:
    """The best allowed action per row, explored among the allowed ones with probability epsilon."""
    return explore(catalog, best(values, allowed, none), allowed, epsilon, explore_u, draw_u)
