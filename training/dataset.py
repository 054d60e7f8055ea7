"""Point-in-time-correct training set: the decision log joined with the FeatureService."""

from __future__ import annotations

import pandas as pd

from nexttouch.feature_store import open_store
from nexttouch.schemas import (
    ACTION,
    CUSTOMER_ID,
    DECIDED_AT,
    DECISION_ID,
    DECISIONS_COLUMNS,
    EVENT_TIMESTAMP,
    OUTCOME,
    REQUEST_AT,
    check_columns,
)
from nexttouch.settings import Settings


def training_set(settings: Settings, decisions: pd.DataFrame) -> pd.DataFrame:
    """Features as they were at each ``decided_at`` (Feast ``get_historical_features``).

    Decisions without a known outcome are not training rows yet; they are reported by the caller.
    """
    check_columns(decisions, DECISIONS_COLUMNS, "decisions")
    labelled = decisions.loc[decisions[OUTCOME].notna()]
    entity_df = labelled[[DECISION_ID, CUSTOMER_ID, DECIDED_AT]].rename(columns={DECIDED_AT: EVENT_TIMESTAMP})
    entity_df[REQUEST_AT] = entity_df[EVENT_TIMESTAMP]  # recency is measured at decision time
    store = open_store(settings)
    service = store.get_feature_service(settings.feature_service)
    features = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    # The offline store does not keep row order: join back by decision id.
    features = features.drop(columns=[CUSTOMER_ID, REQUEST_AT]).rename(columns={EVENT_TIMESTAMP: DECIDED_AT})
    out = labelled[[DECISION_ID, CUSTOMER_ID, ACTION, "propensity", OUTCOME]].merge(
        features, on=DECISION_ID, how="left", validate="one_to_one"
    )
    if len(out) != len(labelled):
        raise RuntimeError(f"training set has {len(out)} rows for {len(labelled)} decisions")
    return out.sort_values([DECIDED_AT, DECISION_ID], ignore_index=True)
