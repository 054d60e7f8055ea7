"""Read customers' features from the Feast online store, by name.

Stored views are read by ``features.online_read.OnlineReader``, which returns what Feast's
``get_online_features`` returns: one customer with one indexed lookup per view and cached value
decoding (~0.1 ms against Feast's ~0.8 ms), many with one query per view, decoding each distinct
value once (Feast's own call costs 0.5-2 s for 1,000 customers; see benchmarks/bench_online_read.py).
The request-time recency is computed here instead of by Feast's on-demand view: for one customer
by ``_recency`` (plain Python on scalars; pandas would cost ~10x the rest of the read), for many
by ``recency_frame`` itself, vectorised.
tests/test_http.py checks both give exactly what Feast's on-demand view gives.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from features.online_read import OnlineReader
from features.touch_features import CONTACT_STATE, NEVER, RECENCY_FEATURES, recency_frame
from nexttouch.feature_store import open_store
from nexttouch.schemas import CUSTOMER_ID, REQUEST_AT
from nexttouch.settings import Settings

RECENCY_VIEW = "recency"


class OnlineFeatures:
    """Feast online reads for a FeatureService looked up once (each lookup costs ~3.5 ms)."""

    def __init__(self, settings: Settings) -> None:
        self.store = open_store(settings)
        self.service = self.store.get_feature_service(settings.feature_service)
        # Features computed at request time exist for anyone; they do not make a customer known.
        on_demand = {v.name for v in self.store.list_on_demand_feature_views()}
        projections = self.service.feature_view_projections
        self.stored = {f.name for p in projections if p.name not in on_demand for f in p.features}
        self.reader = OnlineReader(self.store, self.service)  # the stored views only
        computed = {f.name for p in projections if p.name in on_demand for f in p.features}
        # The fast path knows one on-demand view (recency); any other one goes through Feast.
        self._fast = {p.name for p in projections if p.name in on_demand} <= {RECENCY_VIEW} and computed <= set(
            RECENCY_FEATURES
        )
        self._recency = [
            (last, name) for last, name in zip(CONTACT_STATE, RECENCY_FEATURES, strict=True) if name in computed
        ]

    def read(self, customer_id: str, at: datetime | None = None) -> dict[str, Any] | None:
        """Feature values by name as of ``at`` (default now), or None when the customer is unknown."""
        at = at or datetime.now(UTC)
        if not self._fast:
            return self.read_feast(customer_id, at)
        values = self.reader.row(customer_id)
        if all(values.get(name) is None for name in self.stored):
            return None
        for last, name in self._recency:
            values[name] = _recency(values.get(last), at)
        return values

    def read_feast(self, customer_id: str, at: datetime | None = None) -> dict[str, Any] | None:
        """The same through Feast's FeatureService, on-demand view included (the reference)."""
        row = self.store.get_online_features(
            features=self.service,
            entity_rows=[{CUSTOMER_ID: customer_id, REQUEST_AT: at or datetime.now(UTC)}],
        ).to_dict()
        values = {k: v[0] for k, v in row.items() if k not in (CUSTOMER_ID, REQUEST_AT)}
        return values if any(values.get(name) is not None for name in self.stored) else None

    def read_many(self, customer_ids: list[str], at: datetime | None = None) -> tuple[pd.DataFrame, np.ndarray]:
        """One online read for many customers: features by name (rows in order) and who is known.

        Recency is computed by ``recency_frame`` itself, vectorised, instead of Feast's on-demand view
        (the same function, without Feast's per-row request-data handling).
        """
        at = at or datetime.now(UTC)
        if not self._fast:
            rows = [{CUSTOMER_ID: c, REQUEST_AT: at} for c in customer_ids]
            frame = pd.DataFrame(self.store.get_online_features(features=self.service, entity_rows=rows).to_dict())
        else:
            frame = self.reader.frame(customer_ids)
        frame = frame.drop(columns=[CUSTOMER_ID, REQUEST_AT], errors="ignore")
        stored = [c for c in frame.columns if c in self.stored]
        known = frame[stored].notna().any(axis=1).to_numpy()
        if self._fast and self._recency:
            for name, days in recency_columns(frame[[last for last, _ in self._recency]], at).items():
                frame[name] = days
        return frame, known


def recency_columns(last: pd.DataFrame, at: datetime) -> dict[str, np.ndarray]:
    """``recency_frame`` of the last-touch columns at ``at``, by name: the same float64 days.

    The typed frame's timestamps are datetime64[ns, UTC], and for those this is recency_frame's own
    arithmetic on the nanosecond counts (int64 difference, ``/ 1e9`` as ``total_seconds``,
    ``/ 86,400``, negative -> 0, none -> ``NEVER``) without pandas' per-column overhead (~6 ms per
    1,000 customers). Other dtypes go through ``recency_frame`` itself; tests check both agree exactly.
    """
    now = pd.Timestamp(at).tz_convert(UTC).floor("s")
    names = dict(zip(CONTACT_STATE, RECENCY_FEATURES, strict=True))
    if not all(isinstance(dtype, pd.DatetimeTZDtype) and dtype.unit == "ns" for dtype in last.dtypes):
        recency = recency_frame(last.assign(**{REQUEST_AT: now}))
        return {names[c]: recency[names[c]].to_numpy() for c in last.columns}
    out = {}
    for column in last.columns:
        ns = last[column].array.asi8
        days = np.maximum((now.value - ns) / 1e9 / 86_400, 0.0)
        out[names[column]] = np.where(last[column].isna().to_numpy(), NEVER, days)
    return out


def _recency(last: datetime | None, at: datetime) -> float:
    """features.touch_features.recency_frame for one value: days since ``last``, never negative."""
    if last is None:
        return NEVER
    last = last if last.tzinfo else last.replace(tzinfo=UTC)
    now = (at if at.tzinfo else at.replace(tzinfo=UTC)).replace(microsecond=0)  # Feast passes whole seconds
    return max((now - last).total_seconds() / 86_400, 0.0)
