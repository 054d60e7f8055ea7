"""Typed request and response bodies of the decision API."""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

ID_PATTERN = r"^[A-Za-z0-9_.:@\-]+$"


class SourceKey(BaseModel):
    """A customer as a source system knows them, e.g. the app's own user key."""

    model_config = ConfigDict(extra="forbid")

    system: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN, examples=["app"])
    key: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN, examples=["app-0000a1b2"])


class DecideRequest(BaseModel):
    """Decide the next contact for one customer, named by customer id or by a source key."""

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
    at: AwareDatetime | None = Field(None, description="When the contact would happen (default: now).")
    context: dict[str, str] = Field(
        default_factory=dict, max_length=16, description="Request context, e.g. {'channel': 'app'}."
    )

    @model_validator(mode="after")
    def _one_identity(self) -> DecideRequest:
        if (self.customer_id is None) == (self.source is None):
            raise ValueError("give exactly one of customer_id or source {system, key}")
        return self


class DecideResponse(BaseModel):
    decision_id: str
    customer_id: str | None = Field(description="The resolved customer id (null: unknown source key).")
    action: str = Field(description="The chosen action from the catalog.")
    propensity: float = Field(description="Probability that this policy chose this action.")
    explored: bool = Field(description="True when the action was drawn by exploration.")
    values: dict[str, float] = Field(description="Expected net value of every action: P(success) x value - cost.")
    p_success: dict[str, float]
    eligible: list[str]
    reasons: list[str]
    cold_start: bool = Field(description="True when the customer has no features: a cold-start answer.")
    model_version: str
    decided_at: datetime
