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


def test_contact_rules_are_validated(tmp_path: Path) -> None:
    def load(action: str) -> Catalog:
        path = tmp_path / "c.yaml"
        path.write_text(f"actions:\n- {{name: none, tier: none, cost: 0, value_of_success: 1}}\n- {action}\n")
        return load_catalog(path)

    with pytest.raises(
        ValidationError, match=r"cap window of 14 days: the touch-count features only cover \[7, 30, 90\] days"
    ):
        load("{name: push, tier: tech, cost: 0, value_of_success: 1, caps: [{max: 3, days: 14}]}")
    with pytest.raises(ValidationError, match=r"quiet_hours\.start\n  String should match pattern"):
        load("{name: push, tier: tech, cost: 0, value_of_success: 1, quiet_hours: {start: '25:00', end: '08:00'}}")
    with pytest.raises(ValidationError, match="ambiguous"):
        load("{name: push, tier: tech, cost: 0, value_of_success: 1, quiet_hours: {start: '08:00', end: '08:00'}}")
    with pytest.raises(ValidationError, match="period"):
        load("{name: call, tier: high, cost: 1, value_of_success: 1, capacity: {limit: 3, period: month}}")
    with pytest.raises(ValidationError, match="success_touch 'email_opened'"):
        load("{name: mail, tier: tech, cost: 0, value_of_success: 1, success_touch: email_opened}")
    ok = load("{name: push, tier: tech, cost: 0, value_of_success: 1, caps: [{max: 3, days: 30}]}")
    assert ok["push"].cap_feature(ok["push"].caps[0]) == "tech_out_30d"


def test_cap_windows_are_the_feature_windows(catalog: Catalog) -> None:
    from features.touch_features import TOUCH_FEATURES, WINDOWS
    from nexttouch.catalog import CAP_WINDOWS

    assert CAP_WINDOWS == WINDOWS
    for action in catalog.actions:
        for cap in action.caps:
            assert action.cap_feature(cap) in TOUCH_FEATURES
