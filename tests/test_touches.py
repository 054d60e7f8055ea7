"""The shared touch rules: tier and direction of each touch type, contact-state masks, recency."""

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from nexttouch.schemas import DIRECTIONS, REQUEST_AT, TIERS, TOUCH_TYPES
from nexttouch.touches import (
    CONTACT_STATE,
    NEVER,
    RECENCY_FEATURES,
    TYPE_NAMES,
    codes,
    contact_state_masks,
    recency,
    recency_frame,
    recency_row,
    tier_and_direction,
)


def test_tier_and_direction_of_every_touch_type() -> None:
    types = pd.Series([*TYPE_NAMES, "fax_sent", None, "push_sent"], dtype=object)
    tier, direction = tier_and_direction(codes(types, TYPE_NAMES))
    for i, name in enumerate(TYPE_NAMES):
        assert (TIERS[tier[i]], DIRECTIONS[direction[i]]) == (TOUCH_TYPES[name].tier, TOUCH_TYPES[name].direction)
    assert tier[-3:].tolist() == [-1, -1, TIERS.index("tech")] and direction[-2] == -1
    masks = contact_state_masks(tier, direction)
    assert list(masks) == CONTACT_STATE
    assert masks["last_contact_at"][: len(TYPE_NAMES)].tolist() == [
        TOUCH_TYPES[t].direction == "out" for t in TYPE_NAMES
    ]
    assert masks["last_high_at"][TYPE_NAMES.index("purchase")]  # either direction moves a tier's last touch
    assert not any(m[-3] or m[-2] for m in masks.values())  # unknown types move nothing


def test_recency_is_measured_to_the_request_time() -> None:
    state = pd.DataFrame(
        {
            "last_tech_at": pd.to_datetime(["2026-03-30T12:00:00Z", None], utc=True),
            "last_low_at": pd.to_datetime([None, None], utc=True),
            "last_high_at": pd.to_datetime(["2026-03-01T00:00:00Z", None], utc=True),
            "last_contact_at": pd.to_datetime(["2026-03-31T06:00:00Z", None], utc=True),
            "request_at": pd.to_datetime(["2026-03-31T18:00:00Z", "2026-03-31T18:00:00Z"], utc=True),
        }
    )
    got = recency_frame(state)
    assert list(got.columns) == RECENCY_FEATURES
    assert got.loc[0].tolist() == [1.25, NEVER, 30.75, 0.5]
    assert got.loc[1].tolist() == [NEVER] * 4


def _last_touches(at: datetime, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    seconds = np.round(rng.uniform(-3 * 86_400, 400 * 86_400, n))  # future ones and > 2**53 ns ago
    frame = pd.DataFrame(
        {c: pd.Timestamp(at) - pd.to_timedelta(rng.permutation(seconds), unit="s") for c in CONTACT_STATE}
    ).apply(lambda col: col.dt.tz_convert(UTC))
    frame.iloc[::7, 0] = pd.NaT  # never touched
    frame.iloc[5, :] = pd.NaT
    return frame.astype("datetime64[ns, UTC]")


def _pandas_reference(last: pd.DataFrame, now: pd.Timestamp) -> dict[str, np.ndarray]:
    """Recency in plain pandas arithmetic: (now - last) in seconds / 86,400, clipped at 0, NEVER where none."""
    names = dict(zip(CONTACT_STATE, RECENCY_FEATURES, strict=True))
    return {
        names[c]: ((now - last[c]).dt.total_seconds() / 86_400).clip(lower=0).fillna(NEVER).to_numpy()
        for c in last.columns
    }


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 11, 2, 12, tzinfo=UTC),
        datetime(2026, 10, 1, 7, 30, 15, tzinfo=timezone(timedelta(hours=2))),
    ],
)
def test_every_form_of_recency_gives_the_same_days(at: datetime) -> None:
    """Typed batch, per-row request times, object columns, microsecond columns and one customer: the same float64."""
    last = _last_touches(at)
    now = pd.Timestamp(at).tz_convert(UTC)
    want = _pandas_reference(last, now)
    assert (want[RECENCY_FEATURES[0]][::7] == NEVER).all() and (want[RECENCY_FEATURES[0]] == 0.0).any()
    forms = {
        "typed batch": recency(dict(last.items()), at),
        "one time per row": dict(recency_frame(last.assign(**{REQUEST_AT: now})).items()),
        "objects": recency({c: last[c].astype(object) for c in last.columns}, at),
        "microseconds": recency({c: last[c].astype("datetime64[us, UTC]") for c in last.columns}, at),
    }
    for form, got in forms.items():
        assert list(got) == RECENCY_FEATURES, form
        for name in RECENCY_FEATURES:
            np.testing.assert_array_equal(np.asarray(got[name]), want[name], err_msg=f"{form}: {name}")
    for i in range(0, len(last), 13):
        values = {c: None if pd.isna(v) else v.to_pydatetime() for c, v in last.iloc[i].items()}
        assert recency_row(values, at) == {n: want[n][i] for n in RECENCY_FEATURES}, i
