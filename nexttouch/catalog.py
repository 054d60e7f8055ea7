"""The action catalog: names, tiers, costs and values, and the contact policy, loaded from YAML."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nexttouch.schemas import TOUCH_TYPES

Tier = Literal["none", "tech", "low", "high"]
NO_ACTION = "none"
# Rolling windows of the touch-count features (`{tier}_out_{days}d` in features/touch_features.py):
# a frequency cap can only be checked over a window the features provide.
CAP_WINDOWS = (7, 30, 90)
ALL_BUCKETS = "all"  # the capacity bucket of a limit without `per`
UNKNOWN_BUCKET = "unknown"  # the `per` value of customers without one
_CLOCK = r"^([01]\d|2[0-3]):[0-5]\d$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Capacity(_Strict):
    """At most ``limit`` of this action per ``period`` (per value of the profile column ``per``, if set)."""

    limit: int = Field(ge=0)
    period: Literal["day", "week"]
    per: str | None = Field(None, description="Profile column the limit applies to separately, e.g. region.")

    def period_of(self, when: datetime) -> str:
        """The period a decision at ``when`` counts against: ``2026-11-01`` or ``2026-W44`` (UTC)."""
        day = when.astimezone(UTC).date()
        if self.period == "day":
            return day.isoformat()
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"

    def bucket(self, value: object) -> str:
        """The share of the limit a customer draws from, e.g. ``region=north``; ``all`` without ``per``.

        A customer without a value in the ``per`` column (e.g. cold start) is in ``<per>=unknown``.
        """
        if self.per is None:
            return ALL_BUCKETS
        missing = value is None or value != value  # NaN
        return f"{self.per}={UNKNOWN_BUCKET if missing else value}"


class QuietHours(_Strict):
    """No contact between ``start`` and ``end`` in the customer's local time; wraps midnight when start > end."""

    start: str = Field(pattern=_CLOCK)
    end: str = Field(pattern=_CLOCK)

    @model_validator(mode="after")
    def _check(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError(f"quiet hours start and end are both {self.start}: an empty or full day is ambiguous")
        return self

    @property
    def minutes(self) -> tuple[int, int]:
        """(start, end) as minutes after local midnight."""
        return tuple(int(t[:2]) * 60 + int(t[3:]) for t in (self.start, self.end))  # type: ignore[return-value]


class Cap(_Strict):
    """At most ``max`` outbound touches of the action's tier in the last ``days`` days."""

    max: int = Field(ge=0)
    days: int

    @model_validator(mode="after")
    def _check(self) -> Cap:
        if self.days not in CAP_WINDOWS:
            raise ValueError(
                f"cap window of {self.days} days: the touch-count features only cover {list(CAP_WINDOWS)} days "
                "(features/touch_features.py WINDOWS); use one of those"
            )
        return self


class Action(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    tier: Tier
    cost: float = Field(ge=0)
    value_of_success: float = Field(ge=0)
    requires: str | None = Field(None, description="Consent feature that must be 1.")
    capacity: Capacity | None = Field(None, description="Scarce action: limit per period (and per region).")
    quiet_hours: QuietHours | None = Field(None, description="Local hours in which the action is not allowed.")
    defer_quiet_hours: bool = Field(
        False,
        description="When quiet hours are all that blocks the action, schedule it for their end (send_at) "
        "instead of dropping it.",
    )
    caps: tuple[Cap, ...] = Field((), description="Frequency caps on outbound touches of this tier.")
    cooldown_days: float | None = Field(None, ge=0, description="Days after the last touch of this tier.")
    explore_weight: float = Field(1.0, ge=0, description="Relative chance of being drawn when exploring.")
    attribution_days: int = Field(2, ge=1, description="Days in which the success touch counts as success.")
    success_touch: str | None = Field(None, description="Touch type that shows the action succeeded.")

    @model_validator(mode="after")
    def _check(self) -> Action:
        rules = self.requires or self.caps or self.cooldown_days or self.quiet_hours or self.capacity
        if (self.tier == NO_ACTION or self.name == NO_ACTION) and rules:
            raise ValueError(f"{self.name}: no contact is always allowed; it takes no consent or contact rules")
        if self.defer_quiet_hours and self.quiet_hours is None:
            raise ValueError(f"{self.name}: defer_quiet_hours needs quiet_hours")
        if self.success_touch is not None and self.success_touch not in TOUCH_TYPES:
            raise ValueError(f"{self.name}: success_touch {self.success_touch!r} is not one of {list(TOUCH_TYPES)}")
        return self

    def cap_feature(self, cap: Cap) -> str:
        """The touch-count feature a cap is checked against, e.g. ``tech_out_7d``."""
        return f"{self.tier}_out_{cap.days}d"

    @property
    def last_touch_feature(self) -> str:
        """The last-touch timestamp a cool-down is measured from, e.g. ``last_high_at``."""
        return f"last_{self.tier}_at"

    @property
    def recency_feature(self) -> str:
        """Days since the last touch of the tier (the recency on-demand feature), e.g. ``days_since_high``."""
        return f"days_since_{self.tier}"


class Catalog(_Strict):
    actions: tuple[Action, ...]

    @model_validator(mode="after")
    def _check(self) -> Catalog:
        names = [a.name for a in self.actions]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate action names in catalog: {names}")
        if NO_ACTION not in names:
            raise ValueError(f"the catalog must contain the '{NO_ACTION}' action")
        return self

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.actions]

    def __getitem__(self, name: str) -> Action:
        for action in self.actions:
            if action.name == name:
                return action
        raise KeyError(name)


def load_catalog(path: Path | None = None) -> Catalog:
    """Read a catalog file; without a path, the default catalog shipped with nexttouch."""
    text = path.read_text() if path else files("nexttouch").joinpath("catalog.yaml").read_text()
    return Catalog.model_validate(yaml.safe_load(text))
