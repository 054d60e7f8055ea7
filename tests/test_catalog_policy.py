from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from nexttouch.catalog import Catalog, load_catalog
from nexttouch.policy import (
    OK,
    RULES,
    broken_rules,
    choose,
    eligibility,
    eligible_mask,
    explore_probabilities,
    net_values,
    why_not,
)


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
    with pytest.raises(ValidationError, match="no contact is always allowed"):
        load("{name: rest, tier: none, cost: 0, value_of_success: 1, requires: push_opt_in}")
    ok = load("{name: push, tier: tech, cost: 0, value_of_success: 1, caps: [{max: 3, days: 30}]}")
    assert ok["push"].cap_feature(ok["push"].caps[0]) == "tech_out_30d"


def test_cap_windows_are_the_feature_windows(catalog: Catalog) -> None:
    from features.touch_features import TOUCH_FEATURES, WINDOWS
    from nexttouch.catalog import CAP_WINDOWS

    assert CAP_WINDOWS == WINDOWS
    for action in catalog.actions:
        for cap in action.caps:
            assert action.cap_feature(cap) in TOUCH_FEATURES


NOW = datetime(2026, 11, 2, 21, 30, tzinfo=UTC)  # 22:30 in Berlin, 16:30 in New York


def _customer(**over: object) -> dict[str, object]:
    base = {
        "push_opt_in": 1,
        "call_consent": 1,
        "time_zone": "America/New_York",
        "tech_out_7d": 0,
        "tech_out_30d": 0,
        "low_out_30d": 0,
        "high_out_90d": 0,
        "last_low_at": None,
        "last_high_at": None,
    }
    return {**base, **over}


def test_quiet_hours_are_local_to_the_customer(catalog: Catalog) -> None:
    assert eligibility(catalog, _customer(), NOW) == {}
    berlin = eligibility(catalog, _customer(time_zone="Europe/Berlin"), NOW)
    assert berlin == {
        "push": "quiet hours 21:00-08:00 (22:30 in Europe/Berlin)",
        "advisor_call": "quiet hours 19:00-09:00 (22:30 in Europe/Berlin)",
    }
    # no time zone on the profile: the default applies; a zone nobody knows is not guessed
    assert set(eligibility(catalog, _customer(time_zone=None), NOW, default_time_zone="Europe/Paris")) == {
        "push",
        "advisor_call",
    }
    assert eligibility(catalog, _customer(time_zone=None), NOW, default_time_zone="America/New_York") == {}
    assert eligibility(catalog, _customer(time_zone="Mars/Olympus"), NOW)["push"].startswith("unknown time zone")
    morning = datetime(2026, 11, 2, 7, 59, tzinfo=ZoneInfo("Europe/Berlin"))
    assert set(eligibility(catalog, _customer(time_zone="Europe/Berlin"), morning)) == {"push", "advisor_call"}
    assert set(eligibility(catalog, _customer(time_zone="Europe/Berlin"), morning + timedelta(minutes=1))) == {
        "advisor_call"
    }


def test_frequency_caps_and_cool_downs(catalog: Catalog) -> None:
    capped = eligibility(catalog, _customer(tech_out_7d=3, low_out_30d=1), NOW)
    assert capped == {"push": "frequency cap: 3 tech touches out in 7 days (max 3)"}
    assert "push" in eligibility(catalog, _customer(tech_out_7d=1, tech_out_30d=8), NOW)
    called = _customer(last_high_at=NOW - timedelta(days=13, hours=12))
    assert eligibility(catalog, called, NOW) == {"advisor_call": "cool-down: last high touch 13.5 days ago (wait 14)"}
    assert eligibility(catalog, _customer(last_high_at=NOW - timedelta(days=14, hours=1)), NOW) == {}
    # without `now`, the recency feature computed at request time decides the cool-down
    assert set(eligibility(catalog, {**_customer(), "days_since_low": 2.0})) == {"event_invite"}
    # features absent: only consent is known (cold start)
    assert set(eligibility(catalog, {}, NOW)) == {"push", "advisor_call"}


def _random_rows(n: int, rng: np.random.Generator) -> pd.DataFrame:
    def holes(values: np.ndarray, share: float = 0.1) -> pd.Series:
        s = pd.Series(values)
        return s.where(rng.random(n) > share)

    last = pd.Series(NOW - pd.to_timedelta(rng.exponential(20, n), unit="D"))
    return pd.DataFrame(
        {
            "push_opt_in": holes(rng.integers(0, 2, n).astype(float)),
            "call_consent": holes(rng.integers(0, 2, n).astype(float)),
            "time_zone": holes(rng.choice(["Europe/Berlin", "Asia/Tokyo", "America/Phoenix", "Nowhere/Land"], n)),
            "tech_out_7d": holes(rng.integers(0, 5, n)),
            "tech_out_30d": holes(rng.integers(0, 12, n)),
            "low_out_30d": holes(rng.integers(0, 4, n)),
            "high_out_90d": holes(rng.integers(0, 4, n)),
            "last_low_at": last.where(rng.random(n) > 0.3),
            "last_high_at": last.sample(frac=1, random_state=1).to_numpy(),
            "days_since_low": holes(rng.exponential(10, n), 0.5),
        }
    )


@pytest.mark.parametrize("hour", [3, 9, 14, 20])
def test_vectorised_mask_agrees_with_per_request_eligibility(catalog: Catalog, hour: int) -> None:
    rng = np.random.default_rng(hour)
    frame = _random_rows(3_000, rng)
    now = NOW.replace(hour=hour, minute=int(rng.integers(60)))
    rules = broken_rules(catalog, frame, now, "Europe/London")
    np.testing.assert_array_equal(eligible_mask(catalog, frame, now, "Europe/London"), rules == OK)
    for i, row in enumerate(frame.to_dict("records")):
        per_row = [why_not(a, row, now, "Europe/London")[0] for a in catalog.actions]
        assert per_row == rules[i].tolist(), (row, per_row, rules[i])
    assert {RULES[r] for r in np.unique(rules)} == set(RULES)  # every rule was exercised


def test_exploration_follows_explore_weights_and_propensity_is_exact(catalog: Catalog) -> None:
    weights = {"none": 1.0, "push": 1.0, "event_invite": 0.3, "advisor_call": 0.1}
    weighted = catalog.model_copy(
        update={"actions": tuple(a.model_copy(update={"explore_weight": weights[a.name]}) for a in catalog.actions)}
    )
    rng = np.random.default_rng(3)
    p = np.array([0.1, 0.3, 0.2, 0.2])  # push is best
    for removed in ({}, {"push": "no consent"}):
        eligible = [a for a in weighted.names if a not in removed]
        best = "push" if not removed else "event_invite"
        draws = [choose(weighted, p, removed, epsilon=0.3, rng=rng) for _ in range(20_000)]
        total = sum(weights[a] for a in eligible)
        for action in weighted.names:
            expected = (0.3 * weights[action] / total + 0.7 * (action == best)) if action in eligible else 0.0
            share = np.mean([d.action == action for d in draws])
            assert share == pytest.approx(expected, abs=0.01)
            assert all(d.propensity == pytest.approx(expected) for d in draws if d.action == action)
    # advisor calls are explored 10x less than pushes
    assert explore_probabilities(weighted, np.ones(4, bool)).tolist() == pytest.approx(
        [1 / 2.4, 1 / 2.4, 0.125, 0.1 / 2.4]
    )
