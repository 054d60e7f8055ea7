"""One FeatureService per model version: training and serving ask for exactly this."""

from feast import FeatureService
from feature_views import contact_state, customer_profile, recency, touch_history

nexttouch_v1 = FeatureService(
    name="nexttouch_v1",
    features=[touch_history, contact_state, recency, customer_profile],
    description="Features of nexttouch decision models v1.",
)
