"""Parquet files written by `nexttouch features`, read through Feast's DuckDB offline store.

Feast resolves a relative FileSource path against the working directory of whoever queries
it, so the path is made absolute from this file: the data of a repo is `<repo>/../data`.
"""

from pathlib import Path

from feast import Field, FileSource, PushSource, RequestSource
from feast.types import UnixTimestamp

OFFLINE_DIR = Path(__file__).resolve().parent.parent / "data" / "offline"

touch_history_source = FileSource(
    name="touch_history_source",
    path=str(OFFLINE_DIR / "touch_history.parquet"),
    timestamp_field="event_timestamp",
    description="Daily per-customer touch-history snapshots (features/touch_features.py).",
)

customer_profile_source = FileSource(
    name="customer_profile_source",
    path=str(OFFLINE_DIR / "customer_profile.parquet"),
    timestamp_field="event_timestamp",
    description="Customer profile and consent flags as of each load.",
)

# Touch events posted to the service update the contact state at once through this push source;
# the nightly build writes the same columns to the batch file behind it.
contact_push = PushSource(name="contact_push", batch_source=touch_history_source)

# The moment a decision is (or was) made: training passes decided_at, serving passes now.
decision_time = RequestSource(name="decision_time", schema=[Field(name="request_at", dtype=UnixTimestamp)])
