"""Column names, touch types and table contracts, defined once for every stage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas loads only where frames are checked: the CLI's --help does not need it
    import pandas as pd

CUSTOMER_ID = "customer_id"
EVENT_TIMESTAMP = "event_timestamp"  # Feast's timestamp column in sources and entity frames
REQUEST_AT = "request_at"  # Feast request field: when a decision is made (recency is measured to it)
DECISION_ID = "decision_id"
DECIDED_AT = "decided_at"
ACTION = "action"
PROPENSITY = "propensity"
OUTCOME = "outcome"
SIGNUP_AT = "signup_at"  # optional customers column: when given, the features carry the customer's tenure

CLOCK_SKEW = timedelta(minutes=5)  # a timestamp further in the future than this is refused
TIERS = ("tech", "low", "high")
DIRECTIONS = ("in", "out")  # in: customer -> brand, out: brand -> customer


@dataclass(frozen=True)
class TouchType:
    name: str
    tier: str
    direction: str
    source_system: str


TOUCH_TYPES: dict[str, TouchType] = {
    t.name: t
    for t in (
        TouchType("app_session", "tech", "in", "app"),
        TouchType("app_like", "tech", "in", "app"),
        TouchType("push_sent", "tech", "out", "app"),
        TouchType("push_opened", "tech", "in", "app"),
        TouchType("event_invited", "low", "out", "events"),
        TouchType("event_attended", "low", "in", "events"),
        TouchType("store_visit", "low", "in", "store"),
        TouchType("purchase", "high", "in", "store"),
        TouchType("advisor_call", "high", "out", "crm"),
    )
}
SOURCE_SYSTEMS = ("app", "events", "store", "crm")

# Table contracts: column -> pandas dtype kind ("O" string/object, "M" datetime, "f"/"i" numbers).
EVENTS_COLUMNS = {
    "event_id": "O",
    "occurred_at": "M",
    "source_system": "O",
    "source_key": "O",
    "touch_type": "O",
    "tier": "O",
    "direction": "O",
    "amount": "f",
    DECISION_ID: "O",
}
CUSTOMERS_COLUMNS = {CUSTOMER_ID: "O"}  # plus SIGNUP_AT ("M") when the brand has it
IDENTITY_COLUMNS = {"source_system": "O", "source_key": "O", CUSTOMER_ID: "O"}
DECISIONS_COLUMNS = {
    DECISION_ID: "O",
    CUSTOMER_ID: "O",
    DECIDED_AT: "M",
    ACTION: "O",
    PROPENSITY: "f",
    OUTCOME: "f",
}


class SchemaError(ValueError):
    """A table does not have the columns or types its contract says."""


def check_columns(frame: pd.DataFrame, contract: dict[str, str], table: str) -> None:
    """Fail loudly at a boundary when a table misses a column or has the wrong kind of type."""
    missing = [c for c in contract if c not in frame.columns]
    if missing:
        raise SchemaError(f"{table}: missing columns {missing}")
    wrong = {c: str(frame[c].dtype) for c, kind in contract.items() if not _kind_ok(frame[c], kind)}
    if wrong:
        raise SchemaError(f"{table}: wrong column types {wrong} (expected {contract})")


def _kind_ok(column: pd.Series, kind: str) -> bool:
    import pandas as pd  # see the imports above

    if kind == "O":
        return pd.api.types.is_string_dtype(column) or pd.api.types.is_object_dtype(column)
    if kind == "M":
        return isinstance(column.dtype, pd.DatetimeTZDtype) and str(column.dtype.tz) == "UTC"
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def utc_times(values: pd.Series) -> pd.Series:
    import pandas as pd  # see the imports above

    """Timestamps in UTC. Typed ones are converted directly: ``pd.to_datetime`` samples every Series it
    gets, typed or not, which cost ~1 ms per 1,000 rows on the batch path."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    return pd.to_datetime(values, utc=True)
