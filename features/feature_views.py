"""Feature views: touch history (schema from touch_features) and the customer profile."""

from datetime import timedelta

from data_sources import customer_profile_source, touch_history_source
from entities import customer
from feast import FeatureView, Field
from feast.types import Float32, Int64
from touch_features import TOUCH_FEATURES

_TYPES = {"int": Int64, "float": Float32}

touch_history = FeatureView(
    name="touch_history",
    entities=[customer],
    ttl=timedelta(days=30),
    schema=[Field(name=name, dtype=_TYPES[kind]) for name, kind in TOUCH_FEATURES.items()],
    source=touch_history_source,
    online=True,
)

# No schema: Feast infers the fields from the customers' profile columns at `feast apply`,
# so a brand's own profile columns become features with no code change.
customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(days=0),  # profile rows do not expire
    source=customer_profile_source,
    online=True,
)
