from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from features.touch_features import TOUCH_FEATURES, build_touch_features
from nexttouch.schemas import TOUCH_TYPES
from nexttouch.touches import CONTACT_STATE

END = datetime(2026, 3, 31, tzinfo=UTC)


def _events(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    """(customer_id, occurred_at, touch_type, amount) -> a resolved touch-event frame."""
    frame = pd.DataFrame(rows, columns=["customer_id", "occurred_at", "touch_type", "amount"])
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True)
    frame["tier"] = frame["touch_type"].map(lambda t: TOUCH_TYPES[t].tier)
    frame["direction"] = frame["touch_type"].map(lambda t: TOUCH_TYPES[t].direction)
    return frame


CUSTOMERS = pd.DataFrame(
    {"customer_id": ["a", "b"], "signup_at": pd.to_datetime(["2025-03-31", "2026-03-01"], utc=True)}
)


def _at(features: pd.DataFrame, customer: str, day: str) -> pd.Series:
    row = features[(features["customer_id"] == customer) & (features["event_timestamp"] == pd.Timestamp(day, tz="UTC"))]
    assert len(row) == 1
    return row.iloc[0]


def test_windows_count_only_touches_before_the_snapshot() -> None:
    events = _events(
        [
            ("a", "2026-03-30T10:00:00", "app_session", np.nan),  # 1 day before the end snapshot
            ("a", "2026-03-20T10:00:00", "push_sent", np.nan),
            ("a", "2026-03-20T11:00:00", "push_opened", np.nan),
            ("a", "2026-02-01T09:00:00", "event_invited", np.nan),
            ("a", "2026-01-15T09:00:00", "purchase", 120.5),
            ("a", "2026-03-31T00:00:00", "app_session", np.nan),  # at the end: outside the window
        ]
    )
    f = build_touch_features(events, CUSTOMERS, END, days=90)
    assert list(f.columns) == ["customer_id", "event_timestamp", *TOUCH_FEATURES, *CONTACT_STATE]
    assert len(f) == 2 * 90
    last = _at(f, "a", "2026-03-31")
    assert (last["tech_in_7d"], last["tech_in_30d"], last["tech_out_30d"]) == (1, 2, 1)
    assert (last["low_out_30d"], last["low_out_90d"], last["high_in_90d"]) == (0, 1, 1)
    assert last["push_open_rate_90d"] == 1.0
    assert last["event_attend_rate_90d"] == 0.0
    assert last["spend_90d"] == 120.5
    assert last["last_tech_at"] == pd.Timestamp("2026-03-30T10:00:00Z")
    assert last["last_high_at"] == pd.Timestamp("2026-01-15T09:00:00Z")
    assert last["last_contact_at"] == pd.Timestamp("2026-03-20T10:00:00Z")  # the push: brand -> customer
    assert last["tenure_days"] == 365
    # the snapshot of the day of a touch does not see it: point-in-time by construction
    day_of = _at(f, "a", "2026-03-30")
    assert day_of["tech_in_7d"] == 0 and day_of["last_tech_at"] == pd.Timestamp("2026-03-20T11:00:00Z")
    assert last["high_response_rate_90d"] == 0.0  # a purchase but no advisor call
    quiet = _at(f, "b", "2026-03-31")
    assert quiet["tech_in_90d"] == 0 and pd.isna(quiet["last_low_at"])


def test_without_sign_up_dates_tenure_is_unknown_and_the_rest_unchanged() -> None:
    events = _events([("a", "2026-03-20T10:00:00", "push_sent", np.nan), ("b", "2026-02-01T09:00:00", "purchase", 9.0)])
    dated = build_touch_features(events, CUSTOMERS, END, days=30)
    undated = build_touch_features(events, CUSTOMERS.drop(columns="signup_at"), END, days=30)
    assert undated["tenure_days"].isna().all() and dated["tenure_days"].notna().all()
    pd.testing.assert_frame_equal(undated.drop(columns="tenure_days"), dated.drop(columns="tenure_days"))


def test_chunking_does_not_change_the_result() -> None:
    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(50)]
    customers = pd.DataFrame({"customer_id": ids, "signup_at": pd.Timestamp("2025-01-01", tz="UTC")})
    types = ["app_session", "push_sent", "event_attended", "advisor_call", "purchase"]
    events = _events(
        [
            (
                ids[rng.integers(50)],
                str(pd.Timestamp("2026-01-01") + pd.Timedelta(seconds=int(s))),
                types[rng.integers(5)],
                10.0,
            )
            for s in rng.integers(0, 89 * 86400, 2000)
        ]
    )
    whole = build_touch_features(events, customers, END, days=90, every_days=7)
    chunked = build_touch_features(events, customers, END, days=90, every_days=7, chunk=7)
    pd.testing.assert_frame_equal(whole, chunked)


def test_omo_loop_counts_offline_after_online_and_the_reverse() -> None:
    events = _events(
        [
            ("a", "2026-03-01T10:00:00", "app_session", np.nan),
            ("a", "2026-03-10T10:00:00", "event_attended", np.nan),  # 9 days after app use: online -> offline
            ("a", "2026-03-12T10:00:00", "app_like", np.nan),  # 2 days after the event: offline -> online
            ("a", "2026-03-29T10:00:00", "store_visit", np.nan),  # 17 days after app use: no loop
        ]
    )
    last = _at(build_touch_features(events, CUSTOMERS, END, days=90), "a", "2026-03-31")
    assert (last["omo_online_to_offline_90d"], last["omo_offline_to_online_90d"]) == (1, 1)


def test_history_features_count_every_touch_before_the_snapshot() -> None:
    """All-history totals, shrunk response rates, decayed counts and days observed, by hand."""
    from features.touch_features import HALF_LIFE_DAYS, PRIOR_WEIGHT

    events = _events(
        [
            ("a", "2025-06-01T00:00:00", "app_like", np.nan),  # long before the first snapshot: still counted
            ("a", "2026-03-01T12:00:00", "push_sent", np.nan),
            ("a", "2026-03-01T13:00:00", "push_opened", np.nan),
            ("a", "2026-03-20T09:00:00", "push_sent", np.nan),
            ("a", "2026-03-20T10:00:00", "app_session", np.nan),
            ("a", "2026-03-21T10:00:00", "advisor_call", np.nan),
            ("a", "2026-03-22T10:00:00", "store_visit", np.nan),  # answers the call
            ("a", "2026-03-25T10:00:00", "store_visit", np.nan),  # on their own
            ("b", "2026-03-10T08:00:00", "push_sent", np.nan),
            ("b", "2026-03-30T08:00:00", "push_sent", np.nan),
            ("b", "2026-03-31T08:00:00", "push_opened", np.nan),  # on the last snapshot's day: not seen
        ]
    )
    events["decision_id"] = ["", "d1", "d1", "d2", "", "d3", "d3", "", "d4", "d5", "d5"]
    events["decision_id"] = events["decision_id"].replace("", None)
    f = build_touch_features(events, CUSTOMERS, END, days=90)
    a, b = _at(f, "a", "2026-03-31"), _at(f, "b", "2026-03-31")
    assert (a["push_sent_all"], a["advisor_call_all"], a["event_invited_all"], b["push_sent_all"]) == (2, 1, 0, 2)
    prior = 1 / 4  # the population's pushes before the snapshot: 4 sent, 1 opened
    assert a["push_open_rate_all"] == pytest.approx((1 + PRIOR_WEIGHT * prior) / (2 + PRIOR_WEIGHT))
    assert b["push_open_rate_all"] == pytest.approx((0 + PRIOR_WEIGHT * prior) / (2 + PRIOR_WEIGHT))
    assert a["call_visit_rate_all"] == pytest.approx((1 + PRIOR_WEIGHT * 1.0) / (1 + PRIOR_WEIGHT))
    assert a["event_attend_rate_all"] == 0.0  # nobody was invited: no prior either
    assert (a["app_like_organic_all"], a["app_session_organic_all"], a["store_visit_organic_all"]) == (1, 1, 1)
    # depth of their own activity: 1 like per 1 session, 0 purchases per 1 visit (the answer to the call not counted)
    assert (a["app_like_per_session_all"], a["purchase_per_visit_all"]) == ((1 + 0.5) / (1 + 1), (0 + 0.5) / (1 + 1))
    assert b["app_like_per_session_all"] == 0.5  # nothing of their own yet: half a touch over one
    assert a["tech_in_90d"] == 2  # the windows forget the like of last June

    def decayed(*ages_days: float) -> float:
        return sum(2 ** (-age / HALF_LIFE_DAYS) for age in ages_days)

    assert a["store_visit_organic_decayed"] == pytest.approx(decayed(5 + 14 / 24), rel=1e-12)
    assert a["store_visit_linked_decayed"] == pytest.approx(decayed(8 + 14 / 24), rel=1e-12)
    assert a["push_sent_linked_decayed"] == pytest.approx(decayed(29.5, 10 + 15 / 24), rel=1e-12)
    assert a["push_sent_organic_decayed"] == 0.0
    assert a["app_like_organic_decayed"] == pytest.approx(decayed(303), rel=1e-12)
    assert b["push_opened_linked_decayed"] == 0.0
    assert (a["days_observed"], b["days_observed"]) == (303, 20)
    early = _at(f, "b", "2026-03-10")  # b's first touch is on that day
    assert (early["days_observed"], early["push_sent_all"], early["push_sent_linked_decayed"]) == (0, 0, 0.0)


def test_history_features_are_point_in_time() -> None:
    """Each snapshot equals the one built from only the events before it: nothing later leaks in, priors included."""
    rng = np.random.default_rng(5)
    ids = [f"c{i}" for i in range(40)]
    customers = pd.DataFrame({"customer_id": ids, "signup_at": pd.Timestamp("2024-01-01", tz="UTC")})
    types = list(TOUCH_TYPES)
    n = 3000
    events = _events(
        [
            (ids[rng.integers(40)], str(pd.Timestamp("2025-10-01") + pd.Timedelta(seconds=int(s))), t, 10.0)
            for s, t in zip(rng.integers(0, 180 * 86400, n), rng.choice(types, n), strict=True)
        ]
    )
    events["decision_id"] = np.where(rng.random(n) < 0.5, "d", None)
    full = build_touch_features(events, customers, END, days=90, every_days=5)
    for cut in sorted(full["event_timestamp"].unique())[::4]:
        seen = build_touch_features(events.loc[events["occurred_at"] < cut], customers, END, days=90, every_days=5)
        pd.testing.assert_frame_equal(
            full.loc[full["event_timestamp"] == cut].reset_index(drop=True),
            seen.loc[seen["event_timestamp"] == cut].reset_index(drop=True),
            check_exact=True,
        )


def test_the_populations_priors_make_a_part_of_the_customers_features_those_of_the_whole() -> None:
    """The pipeline featurises customers in batches: passing the population's priors gives the same rows."""
    from features.touch_features import response_priors, snapshot_days
    from nexttouch.touches import TYPE_NAMES, codes

    rng = np.random.default_rng(2)
    ids = [f"c{i}" for i in range(30)]
    customers = pd.DataFrame({"customer_id": ids, "signup_at": pd.Timestamp("2025-01-01", tz="UTC")})
    n = 2000
    events = _events(
        [
            (ids[rng.integers(30)], str(pd.Timestamp("2025-12-01") + pd.Timedelta(seconds=int(s))), t, 1.0)
            for s, t in zip(rng.integers(0, 120 * 86400, n), rng.choice(list(TOUCH_TYPES), n), strict=True)
        ]
    )
    events["decision_id"] = np.where(rng.random(n) < 0.6, "d", None)
    whole = build_touch_features(events, customers, END, days=90, every_days=3)
    t0 = pd.Timestamp(END) - pd.Timedelta(days=90)
    seconds = ((events["occurred_at"] - t0) // pd.Timedelta(seconds=1)).to_numpy()
    touch = codes(events["touch_type"], TYPE_NAMES)
    priors = response_priors(touch, seconds, events["decision_id"].notna().to_numpy(), snapshot_days(90, 3) * 86_400)
    some = customers.iloc[:7]
    part = build_touch_features(events, some, END, days=90, every_days=3, priors=priors)
    pd.testing.assert_frame_equal(part, whole.loc[whole["customer_id"].isin(some["customer_id"])], check_exact=True)
    alone = build_touch_features(events.loc[events["customer_id"].isin(some["customer_id"])], some, END, 90, 3)
    assert not np.allclose(alone["push_open_rate_all"], part["push_open_rate_all"])  # their own priors differ
