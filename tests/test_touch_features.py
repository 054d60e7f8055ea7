from datetime import UTC, datetime

import numpy as np
import pandas as pd

from features.touch_features import TOUCH_FEATURES, build_touch_features
from nexttouch.touches import CONTACT_STATE

END = datetime(2026, 3, 31, tzinfo=UTC)


def _events(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    """(customer_id, occurred_at, touch_type, amount) -> a resolved touch-event frame."""
    from nexttouch.schemas import TOUCH_TYPES

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
