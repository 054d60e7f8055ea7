"""Read customers' features from the Feast online store, by name.

Stored views are read by ``features.online_read.OnlineReader``, which returns what Feast's
``get_online_features`` returns: one customer with one indexed lookup per view and cached value
decoding (~0.1 ms against Feast's ~0.8 ms), many with one query per view, decoding each distinct
value once (Feast's own call costs 0.5-2 s for 1,000 customers; see benchmarks/bench_online_read.py).
The request-time recency is computed here instead of by Feast's on-demand view, with the function
that view runs (``nexttouch.touches``): for one customer on its Python values (pandas would cost
~10x the rest of the read), for many on the typed frame's columns.
tests/test_http.py checks both give exactly what Feast's on-demand view gives.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from features.online_read import OnlineReader
from nexttouch.feature_store import open_store
from nexttouch.schemas import CUSTOMER_ID, REQUEST_AT
from nexttouch.settings import Settings
from nexttouch.touches import RECENCY, RECENCY_FEATURES, recency, recency_row

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
        self._last = [last for last, name in RECENCY.items() if name in computed]  # what recency is computed from

    def read(self, customer_id: str, at: datetime | None = None) -> dict[str, Any] | None:
        """Feature values by name as of ``at`` (default now), or None when the customer is unknown."""
        at = at or datetime.now(UTC)
        if not self._fast:
            return self.read_feast(customer_id, at)
        values = self.reader.row(customer_id)
        if all(values.get(name) is None for name in self.stored):
            return None
        if self._last:
            values.update(recency_row({last: values.get(last) for last in self._last}, _whole_seconds(at)))
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

        Recency is computed by the on-demand view's own function, vectorised, without Feast's per-row
        request-data handling.
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
        if self._fast and self._last:
            for name, days in recency({last: frame[last] for last in self._last}, _whole_seconds(at)).items():
                frame[name] = days
        return frame, known


def _whole_seconds(at: datetime) -> datetime:
    """The request time as Feast passes it to an on-demand view online: whole seconds, UTC if naive."""
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).replace(microsecond=0)
