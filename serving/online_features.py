"""Read one customer's features from the Feast online store, by name."""

from __future__ import annotations

from typing import Any

from nexttouch.feature_store import open_store
from nexttouch.schemas import CUSTOMER_ID
from nexttouch.settings import Settings


class OnlineFeatures:
    """Feast online reads for a FeatureService looked up once (each lookup costs ~3.5 ms)."""

    def __init__(self, settings: Settings) -> None:
        self.store = open_store(settings)
        self.service = self.store.get_feature_service(settings.feature_service)

    def read(self, customer_id: str) -> dict[str, Any] | None:
        """Feature values by name, or None when the store knows nothing of the customer."""
        row = self.store.get_online_features(features=self.service, entity_rows=[{CUSTOMER_ID: customer_id}]).to_dict()
        values = {k: v[0] for k, v in row.items() if k != CUSTOMER_ID}
        return values if any(v is not None for v in values.values()) else None
