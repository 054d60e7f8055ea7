"""Typed request and response bodies of the decision API."""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class DecideRequest(BaseModel):
    """Decide the next contact for one customer."""

    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:\-]+$",
        description="Opaque nexttouch customer id.",
        examples=["C0000001"],
    )
    at: AwareDatetime | None = Field(None, description="When the contact would happen (default: now).")
    context: dict[str, str] = Field(
        default_factory=dict, max_length=16, description="Request context, e.g. {'channel': 'app'}."
    )


class DecideResponse(BaseModel):
    decision_id: str
    customer_id: str
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
