"""Arbitration: expected net value, the best eligible action, cost-aware exploration, exact propensity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nexttouch.catalog import Catalog

_ARRAYS: dict[int, tuple[Catalog, np.ndarray, np.ndarray, np.ndarray]] = {}


def _arrays(catalog: Catalog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The catalog's values, costs and explore weights as arrays, built once per catalog object."""
    found = _ARRAYS.get(id(catalog))
    if found is None or found[0] is not catalog:  # a catalog is frozen: its arrays never change
        arrays = (
            np.array([a.value_of_success for a in catalog.actions]),
            np.array([a.cost for a in catalog.actions]),
            np.array([a.explore_weight for a in catalog.actions]),
        )
        if len(_ARRAYS) > 64:
            _ARRAYS.clear()
        found = _ARRAYS[id(catalog)] = (catalog, *arrays)
    return found[1], found[2], found[3]


def net_values(catalog: Catalog, p_success: np.ndarray) -> np.ndarray:
    """value(a) = P(success | a) * value_of_success(a) - cost(a), per row and action."""
    value, cost, _ = _arrays(catalog)
    return p_success * value - cost


def explore_probabilities(catalog: Catalog, allowed: np.ndarray) -> np.ndarray:
    """P(action | exploring): explore weights renormalised over each row's allowed actions.

    ``allowed`` is a bool array (..., actions); rows with nothing to explore get all zeros.
    """
    weights = _arrays(catalog)[2] * allowed
    total = weights.sum(axis=-1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


def best(values: np.ndarray, allowed: np.ndarray, none: int) -> np.ndarray:
    """Column of the highest value among allowed actions, per row (and per draw for (draws, rows, actions)
    values); ``none`` (always allowed) wins ties."""
    masked = np.where(allowed, values, -np.inf)
    top = masked.argmax(axis=-1)
    top_value = np.take_along_axis(masked, top[..., None], axis=-1)[..., 0]
    return np.where(masked[..., none] >= top_value, none, top)


@dataclass(frozen=True)
class Choice:
    action: np.ndarray  # (rows,) catalog column
    explored: np.ndarray  # (rows,) drawn at random, or not the action the point estimates rank best
    propensity: np.ndarray  # (rows,) exact P(this policy chose the action)
    epsilon: np.ndarray  # (rows,) exploration share (0 where nothing can be explored)
    explore_p: np.ndarray  # (rows, actions) P(action | exploring)
    best: np.ndarray  # (rows,) the best action by the point estimates


def explore(
    catalog: Catalog,
    planned: np.ndarray,
    explorable: np.ndarray,
    epsilon: float,
    explore_u: np.ndarray,
    draw_u: np.ndarray,
    planned_p: np.ndarray | None = None,
    best_action: np.ndarray | None = None,
) -> Choice:
    """With probability epsilon, an action drawn among ``explorable`` by explore weight instead of ``planned``.

    Exploration is cost-aware (cheap pushes more often than advisor calls, by catalog weight). The
    propensity is exact: epsilon * P(a | exploring) + (1 - epsilon) * P(a is planned), logged so
    training and off-policy evaluation can correct for the policy; ``planned_p`` (rows, actions) is
    that distribution when the plan itself is drawn (posterior sampling), else ``planned`` is certain.
    ``explore_u`` and ``draw_u`` are the rows' uniform numbers in [0, 1) and (0, 1]; a caller that
    chooses again (capacity) reuses them.
    """
    explore_p = explore_probabilities(catalog, explorable)
    total = explore_p.sum(axis=1)
    can = total > 0
    eps = np.where(can, epsilon, 0.0)
    drawn_by_epsilon = can & (explore_u < epsilon)
    drawn = (explore_p.cumsum(axis=1) >= (draw_u * total)[:, None]).argmax(axis=1)
    action = np.where(drawn_by_epsilon, drawn, planned)
    rows = np.arange(len(action))
    planned_share = (action == planned).astype(np.float64) if planned_p is None else planned_p[rows, action]
    propensity = eps * explore_p[rows, action] + (1 - eps) * planned_share
    best_action = planned if best_action is None else best_action
    explored = drawn_by_epsilon | (action != best_action)  # drawn at random, or a posterior draw's pick
    return Choice(action, explored, propensity, eps, explore_p, best_action)


def choose(
    catalog: Catalog,
    values: np.ndarray,
    allowed: np.ndarray,
    epsilon: float,
    explore_u: np.ndarray,
    draw_u: np.ndarray,
    none: int,
    sampled: np.ndarray | None = None,
) -> Choice:
    """The best allowed action per row, explored among the allowed ones with probability epsilon.

    With ``sampled`` (draws, rows, actions) posterior samples of the values, the plan is the best
    action of draw 0 (Thompson sampling) and its probability the share of draws it wins.
    """
    top = best(values, allowed, none)
    if sampled is None:
        return explore(catalog, top, allowed, epsilon, explore_u, draw_u)
    winners = best(sampled, allowed, none)  # (draws, rows)
    k = values.shape[1]
    share = np.stack([(winners == j).mean(axis=0) for j in range(k)], axis=1)
    return explore(catalog, winners[0], allowed, epsilon, explore_u, draw_u, share, top)
