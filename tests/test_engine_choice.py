"""Arbitration: net value, the best eligible action, cost-aware exploration and its exact propensity."""

import numpy as np
import pytest

from nexttouch.catalog import Catalog
from nexttouch.engine.choice import choose, explore_probabilities, net_values


def _choose(catalog: Catalog, p: np.ndarray, allowed: np.ndarray, epsilon: float, n: int, seed: int = 0):
    """``n`` independent decisions for a customer with P(success) ``p``."""
    rng = np.random.default_rng(seed)
    values = np.tile(net_values(catalog, p[None, :]), (n, 1))
    mask = np.tile(allowed, (n, 1))
    return choose(catalog, values, mask, epsilon, rng.random(n), 1.0 - rng.random(n), catalog.names.index("none"))


def test_net_value_is_p_times_value_minus_cost(catalog: Catalog) -> None:
    p = np.array([[0.1, 0.2, 0.3, 0.5]])
    expected = [0.1 * 60, 0.2 * 60 - 0.05, 0.3 * 60 - 4.0, 0.5 * 60 - 10.0]
    np.testing.assert_allclose(net_values(catalog, p)[0], expected)


def test_best_eligible_action_wins_and_ineligible_never_chosen(catalog: Catalog) -> None:
    p = np.array([0.1, 0.2, 0.3, 0.9])  # advisor_call would win but is not allowed
    allowed = np.array([True, True, True, False])
    assert not (_choose(catalog, p, allowed, 0.3, 2_000).action == 3).any()
    c = _choose(catalog, p, allowed, 0.0, 1)
    assert (catalog.names[c.action[0]], c.propensity[0], c.explored[0]) == ("event_invite", 1.0, False)


def test_none_wins_when_nothing_pays_for_its_cost_and_wins_ties(catalog: Catalog) -> None:
    c = _choose(catalog, np.array([0.2, 0.2, 0.25, 0.3]), np.ones(4, bool), 0.0, 1)  # uplifts below the costs
    assert catalog.names[c.action[0]] == "none"
    free = catalog.model_copy(update={"actions": tuple(a.model_copy(update={"cost": 0.0}) for a in catalog.actions)})
    tie = _choose(free, np.array([0.3, 0.3, 0.3, 0.3]), np.ones(4, bool), 0.0, 1)
    assert free.names[tie.action[0]] == "none"


def test_exploration_follows_explore_weights_and_propensity_is_exact(catalog: Catalog) -> None:
    weights = {"none": 1.0, "push": 1.0, "event_invite": 0.3, "advisor_call": 0.1}
    weighted = catalog.model_copy(
        update={"actions": tuple(a.model_copy(update={"explore_weight": weights[a.name]}) for a in catalog.actions)}
    )
    p = np.array([0.1, 0.3, 0.2, 0.2])  # push is best
    for allowed in (np.ones(4, bool), np.array([True, False, True, True])):
        eligible = [a for a, ok in zip(weighted.names, allowed, strict=True) if ok]
        best = "push" if allowed[1] else "event_invite"
        c = _choose(weighted, p, allowed, 0.3, 40_000, seed=3)
        total = sum(weights[a] for a in eligible)
        for j, action in enumerate(weighted.names):
            expected = (0.3 * weights[action] / total + 0.7 * (action == best)) if action in eligible else 0.0
            assert np.mean(c.action == j) == pytest.approx(expected, abs=0.01)
            np.testing.assert_allclose(c.propensity[c.action == j], expected)
    # advisor calls are explored 10x less than pushes
    assert explore_probabilities(weighted, np.ones(4, bool)).tolist() == pytest.approx(
        [1 / 2.4, 1 / 2.4, 0.125, 0.1 / 2.4]
    )
