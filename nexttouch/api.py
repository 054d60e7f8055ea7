"""Typed request and response bodies of the decision API."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from nexttouch.schemas import CLOCK_SKEW, TOUCH_TYPES

ID_PATTERN = r"^[A-Za-z0-9_.:@\-]+$"
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Digit groups with separators (+44 20 7946 0958, (030) 1234-5678) or an E.164 number (+447946095800).
PHONE = re.compile(r"(?<![\w.:-])\+?\(?\d{2,4}\)?(?:[ .-]\(?\d{2,4}\)?){2,4}(?![\w.:-])|\+\d{8,15}\b")


def personal_data(value: str) -> str | None:
    """What personal data ``value`` looks like (an e-mail address, a phone number), or None."""
    if "@" in value and EMAIL.search(value):
        return "an e-mail address"
    if any(sum(c.isdigit() for c in m.group()) >= 9 for m in PHONE.finditer(value)):  # 8 digits: a date
        return "a phone number"
    return None


def no_personal_data(value: Any) -> Any:
    """Refuse ids and labels that carry personal data: the service stores them (decision log, inbox)."""
    if isinstance(value, str) and (kind := personal_data(value)):
        raise ValueError(f"looks like {kind}: personal data is refused, never stored; send an opaque id or label")
    return value


# Request context: a few short labels (channel, campaign), stored with each decision; never free text.
ContextKey = Annotated[str, Field(min_length=1, max_length=64), BeforeValidator(no_personal_data)]
ContextValue = Annotated[str, Field(max_length=256), BeforeValidator(no_personal_data)]
Context = Annotated[
    dict[ContextKey, ContextValue],
    Field(max_length=16, description="Request context, e.g. {'channel': 'app'}: at most 16 short labels."),
]


class SourceKey(BaseModel):
    """A customer as a source system knows them, e.g. the app's own user key."""

    model_config = ConfigDict(extra="forbid")

    system: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN, examples=["app"])
    key: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN, examples=["app-0000a1b2"])

    _opaque = field_validator("system", "key", mode="before")(no_personal_data)


class CustomerRef(BaseModel):
    """One customer, named by customer id or by a source key."""

    model_config = ConfigDict(extra="forbid")

    customer_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=ID_PATTERN,
        description="Opaque nexttouch customer id.",
        examples=["C0000001"],
    )
    source: SourceKey | None = Field(None, description="A source system's key, instead of customer_id.")

    _opaque = field_validator("customer_id", mode="before")(no_personal_data)

    @model_validator(mode="after")
    def _one_identity(self) -> CustomerRef:
        if (self.customer_id is None) == (self.source is None):
            raise ValueError("give exactly one of customer_id or source {system, key}")
        return self


class DecideRequest(CustomerRef):
    """Decide the next contact for one customer, named by customer id or by a source key."""

    at: AwareDatetime | None = Field(None, description="When the contact would happen (default: now).")
    context: Context = Field(default_factory=dict)


class DecideBatchRequest(BaseModel):
    """Decide for many customers at once (at most settings.batch_limit), all at the same time ``at``."""

    model_config = ConfigDict(extra="forbid")

    customers: list[CustomerRef] = Field(min_length=1, max_length=100_000)
    at: AwareDatetime | None = Field(None, description="When the contact would happen (default: now).")
    context: Context = Field(default_factory=dict)


class DecideResponse(BaseModel):
    decision_id: str
    customer_id: str | None = Field(
        description="The resolved customer id (null: unknown source key).",
        json_schema_extra={"nullable": True},  # BentoML's OpenAPI keeps only the first type of `str | None`
    )
    action: str = Field(description="The chosen action from the catalog.")
    propensity: float = Field(description="Probability that this policy chose this action.")
    explored: bool = Field(description="True when the action was drawn by exploration.")
    values: dict[str, float] = Field(description="Expected net value of every action: P(success) x value - cost.")
    p_success: dict[str, float]
    eligible: list[str]
    reasons: list[str]
    cold_start: bool = Field(description="True when the customer has no features: a cold-start answer.")
    fallback: bool = Field(
        False, description="True for a rule-based answer: unknown customer or online store slow or down."
    )
    model_version: str
    decided_at: datetime
    send_at: datetime | None = Field(
        None,
        description="When to send the action: set when quiet hours hold it until their end (null: now).",
        json_schema_extra={"nullable": True},
    )


class DecideBatchResponse(BaseModel):
    decisions: list[DecideResponse] = Field(description="One decision per customer, in request order.")


class ModelInfo(BaseModel):
    """What the service decides with right now."""

    model_name: str
    champion_alias: str
    model_version: str
    loaded_at: datetime
    feature_service: str
    inputs: list[str] = Field(description="Features the model reads, by name.")
    catalog: list[dict] = Field(description="The action catalog: costs, values, contact rules, capacity.")


class TouchEvent(BaseModel):
    """One touch, as a source system reports it in real time."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN)
    occurred_at: AwareDatetime
    customer_id: str | None = Field(None, min_length=1, max_length=128, pattern=ID_PATTERN)
    source: SourceKey | None = Field(None, description="The source system's key, instead of customer_id.")
    touch_type: str = Field(description="One of the touch types, e.g. app_session, event_attended, advisor_call.")
    amount: float | None = Field(None, allow_inf_nan=False)
    decision_id: str | None = Field(None, max_length=128, pattern=ID_PATTERN)

    _opaque = field_validator("event_id", "customer_id", "decision_id", mode="before")(no_personal_data)

    @model_validator(mode="after")
    def _check(self) -> TouchEvent:
        if (self.customer_id is None) == (self.source is None):
            raise ValueError("give exactly one of customer_id or source {system, key}")
        if self.touch_type not in TOUCH_TYPES:
            raise ValueError(f"unknown touch_type {self.touch_type!r}; known: {', '.join(TOUCH_TYPES)}")
        if self.occurred_at > datetime.now(UTC) + CLOCK_SKEW:
            raise ValueError("occurred_at is in the future")
        return self


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[TouchEvent] = Field(min_length=1, max_length=1000)


class EventsResponse(BaseModel):
    accepted: int = Field(description="Events kept for the nightly ingest (all valid events).")
    customers_updated: int = Field(description="Customers whose contact state was updated online.")
    unresolved: list[str] = Field(description="Event ids with an unknown source key: kept, not featurised yet.")
    online_update_deferred: bool = Field(
        False,
        description="True when the online store was slow or down: the events are kept and the online contact "
        "update is retried in the background.",
    )


class FeedbackRequest(BaseModel):
    """The outcome of a decision: 1 success, 0 no success."""

    model_config = ConfigDict(extra="forbid")

    decision_id: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN)
    outcome: Literal[0, 1]
    at: AwareDatetime | None = Field(None, description="When the outcome happened (default: now).")


class FeedbackResponse(BaseModel):
    decision_id: str
    status: Literal["recorded", "unchanged"]
