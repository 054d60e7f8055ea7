from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from nexttouch.catalog import Catalog, load_catalog
from nexttouch.policy import choose, eligibility, net_values


def test_default_catalog_has_the_three_tiers_and_none(catalog: Catalog) -> None:
    assert catalog.names == ["none", "push", "event_invite", "advisor_call"]
    assert [a.tier for a in catalog.actions] == ["none", "tech", "low", "high"]


def test_catalog_rejects_duplicates_and_missing_none(tmp_path: Path) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text(
        "actions:\n- {name: none, tier: none, cost: 0, value_of_success: 1}\n"
        "- {name: none, tier: none, cost: 0, value_of_success: 1}\n"
    )
    with pytest.raises(ValidationError, match="duplicate"):
        load_catalog(dup)
    no_none = tmp_path / "no_none.yaml"
    no_none.write_text("actions:\n- {name: push, tier: tech, cost: 0, value_of_success: 1}\n")
    with pytest.raises(ValidationError, match="'none'"):
        load_catalog(no_none)


def test_net_value_is_p_times_value_minus_cost(catalog: Catalog) -> None:
    p = np.array([[0.1, 0.2, 0.3, 0.5]])
    expected = [0.1 * 60, 0.2 * 60 - 0.05, 0.3 * 60 - 4.0, 0.5 * 60 - 10.0]
    np.testing.assert_allclose(net_values(catalog, p)[0], expected)


def test_consent_rules_remove_actions(catalog: Catalog) -> None:
    assert eligibility(catalog, {"push_opt_in": 1, "call_consent": 0}) == {"advisor_call": "no call_consent on record"}
    assert set(eligibility(catalog, {})) == {"push", "advisor_call"}


def test_best_eligible_action_wins_and_ineligible_never_chosen(catalog: Catalog) -> None:
    rng = np.random.default_rng(0)
    p = np.array([0.1, 0.2, 0.3, 0.9])  # advisor_call would win but is not allowed
    for _ in range(200):
        c = choose(catalog, p, {"advisor_call": "no consent"}, epsilon=0.3, rng=rng)
        assert c.action != "advisor_call"
    c = choose(catalog, p, {"advisor_call": "no consent"}, epsilon=0.0, rng=rng)
    assert (c.action, c.propensity, c.explored) == ("event_invite", 1.0, False)


def test_none_wins_when_nothing_pays_for_its_cost(catalog: Catalog) -> None:
    p = np.array([0.2, 0.2, 0.25, 0.3])  # uplifts smaller than the costs
    c = choose(catalog, p, {}, epsilon=0.0, rng=np.random.default_rng(0))
    assert c.action == "none"


def test_propensity_is_the_probability_of_the_chosen_action(catalog: Catalog) -> None:
    rng = np.random.default_rng(1)
    p = np.array([0.1, 0.3, 0.2, 0.2])
    draws = [choose(catalog, p, {}, epsilon=0.2, rng=rng) for _ in range(20_000)]
    for action in catalog.names:
        share = np.mean([d.action == action for d in draws])
        logged = {d.propensity for d in draws if d.action == action}
        assert len(logged) == 1
        assert share == pytest.approx(logged.pop(), abs=0.01)
