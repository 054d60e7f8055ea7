"""Typed request and response bodies of the decision API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nexttouch import personal_data
from nexttouch.schemas import CLOCK_SKEW, TOUCH_TYPES
from nexttouch.settings import Settings

ID_PATTERN = r"^[A-Za-z0-9_.:@\-]+$"
# Every stage stores times as nanoseconds since 1970 (pandas, parquet): 1677-09-22 .. 2262-04-11. Inside a
# safe margin of that, nothing a client sends can stop an export or the nightly job.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def no_personal_data(value: Any) -> Any:
    """Refuse ids and labels that carry personal data: the service stores them (decision log, inbox)."""
    if isinstance(value, str) and (kind := personal_data.find(value)):
        raise ValueError(f"looks like {kind}: personal data is refused, never stored; send an opaque id or label")
    return value


def plain_label(value: Any) -> Any:
    """Refuse control characters and free text in a context label: labels are stored with every decision."""
    if not isinstance(value, str):
        return value
    no_personal_data(value)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("holds a control character (e.g. NUL): labels are printable text")
    if sum(any(c.isalpha() for c in word) for word in value.split()) > 1:
        raise ValueError("looks like free text (several words): send a short label such as 'summer-sale'")
    return value


def _time_text(value: Any) -> Any:
    """A time is an ISO 8601 string: a number would be read as seconds or milliseconds by its size."""
    if isinstance(value, bool | int | float):
        raise ValueError("must be an ISO 8601 date-time string with a time zone, e.g. 2026-11-01T09:30:00Z")
    return value


def _representable(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValueError(f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC)")
    return value


Time = Annotated[AwareDatetime, BeforeValidator(_time_text), AfterValidator(_representable)]


@dataclass(frozen=True)
class TimeBounds:
    """The configured window around the server's clock for times in requests (validation context ``bounds``)."""

    now: datetime
    at_window: timedelta  # a decision's ``at``: this far from now, either way
    event_age: timedelta  # a touch event's ``occurred_at``: at most this old

    @classmethod
    def now_for(cls, settings: Settings) -> TimeBounds:
        window, age = timedelta(hours=settings.at_window_hours), timedelta(days=settings.max_event_age_days)
        return cls(datetime.now(UTC), window, age)

    def context(self) -> dict[str, TimeBounds]:
        return {"bounds": self}


def _bounds(info: ValidationInfo) -> TimeBounds | None:
    return (info.context or {}).get("bounds")


def _check_at(at: datetime | None, info: ValidationInfo) -> None:
    bounds = _bounds(info)
    if at is None or bounds is None:
        return
    if abs(at - bounds.now) > bounds.at_window:
        hours = bounds.at_window.total_seconds() / 3600
        raise ValueError(
            f"at {at.isoformat()} is outside the allowed window of {hours:g} h either side of the server's clock "
            f"({bounds.now.isoformat(timespec='seconds')}); NEXTTOUCH_AT_WINDOW_HOURS sets it"
        )


# Request context: a few short labels (channel, campaign), stored with each decision; never free text.
ContextKey = Annotated[str, Field(min_length=1, max_length=64), BeforeValidator(plain_label)]
ContextValue = Annotated[str, Field(max_length=256), BeforeValidator(plain_label)]
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
    """One customer, named by customer id, by a source key or by their ID token from the brand's CIAM."""

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
    # Not checked for personal data: a token holds some by nature; it is verified, never stored or logged.
    id_token: str | None = Field(
        None,
        min_length=1,
        max_length=8192,
        description="The signed-in customer's OpenID Connect ID token from the brand's CIAM, instead of "
        "customer_id: its signature, issuer, audience and expiry are checked (401 if bad) and its `sub` is "
        "resolved through the identity map.",
    )

    _opaque = field_validator("customer_id", mode="before")(no_personal_data)

    @model_validator(mode="after")
    def _one_identity(self) -> CustomerRef:
        if sum(x is not None for x in (self.customer_id, self.source, self.id_token)) != 1:
            raise ValueError("give exactly one of customer_id or source {system, key} or id_token")
        return self


class DecideRequest(CustomerRef):
    """Decide the next contact for one customer, named by customer id, source key or ID token."""

    at: Time | None = Field(
        None, description="When the contact would happen (default: now); within a window around the server's clock."
    )
    context: Context = Field(default_factory=dict)

    @model_validator(mode="after")
    def _at_in_window(self, info: ValidationInfo) -> DecideRequest:
        _check_at(self.at, info)
        return self


class DecideBatchRequest(BaseModel):
    """Decide for many customers at once (at most settings.batch_limit), all at the same time ``at``."""

    model_config = ConfigDict(extra="forbid")

    customers: list[CustomerRef] = Field(min_length=1, max_length=100_000)
    at: Time | None = Field(
        None, description="When the contact would happen (default: now); within a window around the server's clock."
    )
    context: Context = Field(default_factory=dict)
    explain: bool = Field(
        True,
        description="false: the model's answers come without `reasons` and `explanation` (empty lists; a "
        "fallback answer still says why), for bulk exports that only need the actions: wording the reasons is a "
        "large part of a batch's cost.",
    )

    @model_validator(mode="after")
    def _at_in_window(self, info: ValidationInfo) -> DecideBatchRequest:
        _check_at(self.at, info)
        return self


class Explanation(BaseModel):
    """One reason for a decision, for machines; ``text`` is the sentence ``reasons`` lists for people."""

    code: str = Field(
        description="What kind of reason: best_uplift, no_uplift, only_eligible, explored, sampled, own_history, "
        "deferred, driver, fallback, or the contact rule that removed an action (no_consent, quiet_hours, "
        "unknown_time_zone, frequency_cap, cool_down, no_capacity)."
    )
    action: str = Field(description="The action the reason is about.")
    feature: str | None = Field(
        description="The feature it quotes (a driver's input, the count a cap reads), or null.",
        json_schema_extra={"nullable": True},
    )
    value: float | str | None = Field(
        description="A driver's or rule's feature value; for best_uplift/no_uplift/only_eligible the uplift over "
        "no contact; for explored/sampled the propensity; null when missing.",
        json_schema_extra={"nullable": True},
    )
    effect: float | None = Field(
        description="A driver's contribution to the action's log-odds of success (positive: more likely), else null.",
        json_schema_extra={"nullable": True},
    )
    text: str = Field(description="The same reason in plain words.")


class DecideResponse(BaseModel):
    decision_id: str
    customer_id: str | None = Field(
        description="The resolved customer id (null: unknown source key or token subject).",
        json_schema_extra={"nullable": True},  # BentoML's OpenAPI keeps only the first type of `str | None`
    )
    action: str = Field(description="The chosen action from the catalog.")
    propensity: float = Field(description="Probability that this policy chose this action.")
    explored: bool = Field(description="True when the action was drawn by exploration.")
    uplift: dict[str, float] = Field(
        description="Expected uplift of every action over doing nothing: values[action] - values['none']."
    )
    values: dict[str, float] = Field(
        description="Expected net value of every action: P(its own success) x value - cost. Not comparable on its "
        "own: none's success is an app session the customer makes without contact; compare uplift."
    )
    p_success: dict[str, float] = Field(description="P(success) of every action, each by its own success touch.")
    eligible: list[str] = Field(description="The actions the contact rules and capacity allowed.")
    reasons: list[str] = Field(description="Why, in plain words: removed actions, the choice, the top features.")
    explanation: list[Explanation] = Field(description="The same reasons, structured for machines, in that order.")
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
    occurred_at: Time
    customer_id: str | None = Field(None, min_length=1, max_length=128, pattern=ID_PATTERN)
    source: SourceKey | None = Field(None, description="The source system's key, instead of customer_id.")
    touch_type: str = Field(description="One of the touch types, e.g. app_session, event_attended, advisor_call.")
    amount: float | None = Field(None, allow_inf_nan=False)
    decision_id: str | None = Field(None, max_length=128, pattern=ID_PATTERN)

    _opaque = field_validator("event_id", "customer_id", "decision_id", mode="before")(no_personal_data)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> TouchEvent:
        if (self.customer_id is None) == (self.source is None):
            raise ValueError("give exactly one of customer_id or source {system, key}")
        if self.touch_type not in TOUCH_TYPES:
            raise ValueError(f"unknown touch_type {self.touch_type!r}; known: {', '.join(TOUCH_TYPES)}")
        bounds = _bounds(info)
        now = bounds.now if bounds else datetime.now(UTC)
        if self.occurred_at > now + CLOCK_SKEW:
            raise ValueError("occurred_at is in the future")
        if bounds and self.occurred_at < now - bounds.event_age:
            raise ValueError(
                f"occurred_at is more than {bounds.event_age.days} days ago (NEXTTOUCH_MAX_EVENT_AGE_DAYS): "
                "load older touches with `nexttouch ingest`"
            )
        return self


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[TouchEvent] = Field(min_length=1, max_length=1000)


class EventsResponse(BaseModel):
    accepted: int = Field(description="Events kept for the nightly ingest (new event ids only).")
    duplicates: int = Field(
        0,
        description="Events not kept again: their event_id was already kept (an earlier request, e.g. a retry, "
        "or earlier in this one). Event ids are idempotency keys.",
    )
    customers_updated: int = Field(description="Customers whose contact state was updated online.")
    unresolved: list[str] = Field(
        description="Event ids of customers the service does not know (unknown source key or customer id): kept "
        "for the nightly ingest, which resolves them; not applied online."
    )
    online_update_deferred: bool = Field(
        False,
        description="True when the online store was slow or down: the events are kept and the online contact "
        "update is retried in the background.",
    )


def _exact_outcome(value: Any) -> Any:
    if type(value) is not int:  # bool is an int subclass: true must not pass as 1
        raise ValueError(f"outcome must be the integer 0 or 1, not a {type(value).__name__}")
    return value


class FeedbackRequest(BaseModel):
    """The outcome of a decision: 1 success, 0 no success."""

    model_config = ConfigDict(extra="forbid")

    decision_id: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN)
    outcome: Annotated[Literal[0, 1], BeforeValidator(_exact_outcome)] = Field(
        description="The integer 1 (success) or 0 (no success); not true/false, not 1.0."
    )
    at: Time | None = Field(
        None, description="When the outcome happened (default: now); not before the decision, not in the future."
    )

    @model_validator(mode="after")
    def _not_in_future(self, info: ValidationInfo) -> FeedbackRequest:
        bounds = _bounds(info)
        if self.at is not None and self.at > (bounds.now if bounds else datetime.now(UTC)) + CLOCK_SKEW:
            raise ValueError("at is in the future")
        return self


class FeedbackResponse(BaseModel):
    decision_id: str
    status: Literal["recorded", "unchanged"]
