from pathlib import Path

import pytest
from pydantic import ValidationError

from nexttouch.catalog import Catalog, load_catalog


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


def test_capacity_periods_and_buckets(catalog: Catalog) -> None:
    from datetime import UTC, datetime

    call, invite = catalog["advisor_call"].capacity, catalog["event_invite"].capacity
    assert call is not None and invite is not None
    at = datetime(2026, 11, 1, 23, 30, tzinfo=UTC)
    assert call.period_of(at) == "2026-11-01"
    assert invite.period_of(at) == "2026-W44"
    assert call.bucket("north") == "region=north"
    assert call.bucket(None) == call.bucket(float("nan")) == "region=unknown"
    assert call.model_copy(update={"per": None}).bucket("north") == "all"
