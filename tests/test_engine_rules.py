"""Contact rules: consent, quiet hours, caps and cool-downs, with the reason for each removal."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from nexttouch.catalog import Catalog
from nexttouch.columns import from_frame, from_row
from nexttouch.engine.rules import Rule, check, reasons

NOW = datetime(2026, 11, 2, 21, 30, tzinfo=UTC)  # 22:30 in Berlin, 16:30 in New York


def eligibility(
    catalog: Catalog, features: dict[str, object], now: datetime | None = None, default_time_zone: str = "UTC"
) -> dict[str, str]:
    """The actions one customer may not get, each with its reason (what /decide quotes)."""
    c = check(catalog, from_row(features), 1, now, default_time_zone)
    return reasons(catalog, c)[0]


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


def test_consent_rules_remove_actions(catalog: Catalog) -> None:
    assert eligibility(catalog, {"push_opt_in": 1, "call_consent": 0}) == {
        "advisor_call": "no consent to advisor calls on record"
    }
    assert set(eligibility(catalog, {})) == {"push", "advisor_call"}


def _no_deferral(catalog: Catalog) -> Catalog:
    return Catalog(actions=tuple(a.model_copy(update={"defer_quiet_hours": False}) for a in catalog.actions))


def test_quiet_hours_are_local_to_the_customer(catalog: Catalog) -> None:
    catalog = _no_deferral(catalog)
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


def test_a_push_blocked_only_by_quiet_hours_waits_for_their_end(catalog: Catalog) -> None:
    assert catalog["push"].defer_quiet_hours and not catalog["advisor_call"].defer_quiet_hours
    push = catalog.names.index("push")
    berlin = check(catalog, from_row(_customer(time_zone="Europe/Berlin")), 1, NOW)  # 22:30 in Berlin
    assert berlin.rules[0, push] == Rule.OK
    assert datetime.fromtimestamp(berlin.send_at[0, push], UTC) == datetime(2026, 11, 3, 7, tzinfo=UTC)  # 08:00
    assert reasons(catalog, berlin)[0] == {"advisor_call": "quiet hours 19:00-09:00 (22:30 in Europe/Berlin)"}
    new_york = check(catalog, from_row(_customer()), 1, NOW)  # 16:30: now
    assert np.isnan(new_york.send_at[0, push])
    # the other rules are checked at the send time: a cap still removes it, and then it is not deferred
    capped = check(catalog, from_row(_customer(time_zone="Europe/Berlin", tech_out_7d=3)), 1, NOW)
    assert capped.rules[0, push] == Rule.CAP and np.isnan(capped.send_at[0, push])
    # across a daylight-saving change the send time is the local 08:00 of the next day
    before_dst_end = datetime(2026, 10, 24, 22, tzinfo=UTC)  # 00:00 on 25 Oct in Berlin, clocks go back at 03:00
    dst = check(catalog, from_row(_customer(time_zone="Europe/Berlin")), 1, before_dst_end)
    assert datetime.fromtimestamp(dst.send_at[0, push], UTC) == datetime(2026, 10, 25, 7, tzinfo=UTC)


def test_frequency_caps_and_cool_downs(catalog: Catalog) -> None:
    capped = eligibility(catalog, _customer(tech_out_7d=3, low_out_30d=1), NOW)
    assert capped == {"push": "3 pushes in the last 7 days (at most 3)"}
    assert "push" in eligibility(catalog, _customer(tech_out_7d=1, tech_out_30d=8), NOW)
    called = _customer(last_high_at=NOW - timedelta(days=13, hours=12))
    assert eligibility(catalog, called, NOW) == {
        "advisor_call": "cool-down: last advisor call or purchase 13.5 days ago (wait 14 days)"
    }
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
def test_a_batch_gives_each_customer_the_rules_and_reasons_it_gets_alone(catalog: Catalog, hour: int) -> None:
    """/decide reads one customer's values (``from_row``), /decide/batch a typed frame (``from_frame``)."""
    catalog = _no_deferral(catalog) if hour % 2 else catalog  # deferral or the quiet-hours rule
    rng = np.random.default_rng(hour)
    frame = _random_rows(2_000, rng)
    now = NOW.replace(hour=hour, minute=int(rng.integers(60)))
    batch = check(catalog, from_frame(frame), len(frame), now, "Europe/London")
    batch_reasons = reasons(catalog, batch)
    for i, row in enumerate(frame.to_dict("records")):
        row = {k: None if v is None or (not isinstance(v, str) and pd.isna(v)) else v for k, v in row.items()}
        alone = check(catalog, from_row(row), 1, now, "Europe/London")
        assert alone.rules[0].tolist() == batch.rules[i].tolist(), (row, alone.rules[0], batch.rules[i])
        assert reasons(catalog, alone)[0] == batch_reasons[i]
        np.testing.assert_array_equal(alone.send_at[0], batch.send_at[i])
    seen = {Rule(int(r)) for r in np.unique(batch.rules)}
    assert seen == set(Rule) - {Rule.CAPACITY}  # every contact rule was exercised


def test_rule_codes_hand_checked(catalog: Catalog) -> None:
    frame = pd.DataFrame(
        {
            "push_opt_in": [1.0, 0.0, 1.0],
            "call_consent": [1.0, 1.0, np.nan],
            "time_zone": ["Europe/Berlin", "America/New_York", None],
            "tech_out_7d": [0, 0, 3],
        }
    )
    c = check(catalog, from_frame(frame), 3, NOW, "UTC")
    push, call = catalog.names.index("push"), catalog.names.index("advisor_call")
    assert c.rules[:, push].tolist() == [Rule.OK, Rule.CONSENT, Rule.CAP]  # 21:30 UTC is quiet: pushes wait
    assert np.isfinite(c.send_at[0, push]) and np.isnan(c.send_at[1:, push]).all()
    assert c.rules[:, call].tolist() == [Rule.QUIET, Rule.OK, Rule.CONSENT]


def test_timestamps_count_in_seconds_whatever_their_unit() -> None:
    """Parquet stores microseconds: the rules must read the same time from them as from nanoseconds."""
    from nexttouch.columns import seconds

    at = pd.Timestamp("2026-11-02 21:30", tz="UTC")
    for unit in ("s", "ms", "us", "ns"):
        column = pd.Series([at, pd.NaT]).dt.as_unit(unit)
        got = seconds(column)
        assert got[0] == at.timestamp() and np.isnan(got[1]), unit
    assert seconds(pd.Series([at.tz_localize(None)]))[0] == at.timestamp()  # naive: UTC
