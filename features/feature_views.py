"""Feature views: touch history, contact state (pushed in real time), recency and the profile."""

from datetime import timedelta

import pandas as pd
from data_sources import contact_push, customer_profile_source, decision_time, touch_history_source
from entities import customer
from feast import FeatureView, Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float32, Float64, Int64, UnixTimestamp

from features.touch_features import TOUCH_FEATURES
from nexttouch.touches import CONTACT_STATE, RECENCY_FEATURES

_TYPES = {"int": Int64, "float": Float32}

touch_history = FeatureView(
    name="touch_history",
    entities=[customer],
    ttl=timedelta(days=30),
    schema=[Field(name=name, dtype=_TYPES[kind]) for name, kind in TOUCH_FEATURES.items()],
    source=touch_history_source,
    online=True,
)

contact_state = FeatureView(
    name="contact_state",
    entities=[customer],
    ttl=timedelta(days=30),
    schema=[Field(name=name, dtype=UnixTimestamp) for name in CONTACT_STATE],
    source=contact_push,
    online=True,
)


@on_demand_feature_view(
    sources=[contact_state, decision_time],
    schema=[Field(name=name, dtype=Float64) for name in RECENCY_FEATURES],
    mode="pandas",
)
def recency(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast re-creates this function from its source text when it loads the registry: import inside.
    from nexttouch.touches import recency_frame

    return recency_frame(inputs)


# No schema: Feast infers the fields from the customers' profile columns at `feast apply`,
# so a brand's own profile columns become features with no code change.
customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(days=0),  # profile rows do not expire
    source=customer_profile_source,
    online=True,
)
