"""The batch's recency: recency_frame's numbers, computed on the typed frame's nanosecond counts."""

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from features.touch_features import CONTACT_STATE, RECENCY_FEATURES, recency_frame
from nexttouch.schemas import REQUEST_AT
from serving.online_features import recency_columns


def _last_touches(at: datetime, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    seconds = np.round(rng.uniform(-3 * 86_400, 400 * 86_400, n))  # future ones and > 2**53 ns ago
    frame = pd.DataFrame(
        {c: pd.Timestamp(at) - pd.to_timedelta(rng.permutation(seconds), unit="s") for c in CONTACT_STATE}
    ).apply(lambda col: col.dt.tz_convert(UTC))
    frame.iloc[::7, 0] = pd.NaT  # never touched
    frame.iloc[5, :] = pd.NaT
    return frame.astype("datetime64[ns, UTC]")


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 11, 2, 12, tzinfo=UTC),
        datetime(2026, 10, 1, 7, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2))),
    ],
)
def test_recency_columns_are_recency_frames(at: datetime) -> None:
    last = _last_touches(at)
    want = recency_frame(last.assign(**{REQUEST_AT: pd.Timestamp(at).tz_convert(UTC).floor("s")}))
    got = recency_columns(last, at)
    assert list(got) == RECENCY_FEATURES
    for name in RECENCY_FEATURES:
        np.testing.assert_array_equal(got[name], want[name].to_numpy())  # exactly, NEVER and clipped zeros too
    assert (got[RECENCY_FEATURES[0]][::7] == 999.0).all() and (got[RECENCY_FEATURES[0]] == 0.0).any()
    as_objects = recency_columns(last.astype(object), at)  # not the typed frame: recency_frame itself
    for name in RECENCY_FEATURES:
        np.testing.assert_array_equal(as_objects[name], got[name])
