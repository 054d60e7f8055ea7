"""The action catalog: names, tiers, costs and values, loaded from YAML."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

Tier = Literal["none", "tech", "low", "high"]
NO_ACTION = "none"


class Action(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    tier: Tier
    cost: float = Field(ge=0)
    value_of_success: float = Field(ge=0)
    requires: str | None = Field(None, description="Consent feature that must be 1.")


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

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
