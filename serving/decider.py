"""One decision: features -> P(success) per action -> policy -> answer. No HTTP, no Feast here."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from nexttouch.api import DecideRequest, DecideResponse
from nexttouch.catalog import Catalog
from nexttouch.model import DecisionModel
from nexttouch.policy import choose, eligibility

FeatureReader = Callable[[str, datetime | None], dict[str, Any] | None]
Resolver = Callable[[str, str], str | None]


class Decider:
    """The decision logic with its model and feature reader injected (tests pass their own)."""

    def __init__(
        self,
        catalog: Catalog,
        model: DecisionModel,
        model_version: str,
        read_features: FeatureReader,
        epsilon: float,
        seed: int | None = None,
        resolve: Resolver = lambda _system, _key: None,
    ) -> None:
        missing = set(catalog.names) - set(model.actions)
        if missing:
            raise ValueError(f"model does not score catalog actions {sorted(missing)}")
        self.catalog = catalog
        self.model = model
        self.model_version = model_version
        self.read_features = read_features
        self.resolve = resolve
        self.epsilon = epsilon
        self.rng = np.random.default_rng(seed)
        self._columns = [self.model.actions.index(a) for a in catalog.names]

    def decide(self, request: DecideRequest) -> DecideResponse:
        customer_id = request.customer_id
        if request.source is not None:
            customer_id = self.resolve(request.source.system, request.source.key)
        features = self.read_features(customer_id, request.at) if customer_id else None
        cold_start = features is None
        row = pd.DataFrame([features or {}], columns=self.model.inputs)
        p = self.model.predict_all(row)[0, self._columns]
        consents = {} if cold_start else features
        removed = eligibility(self.catalog, consents)
        choice = choose(self.catalog, p, removed, self.epsilon, self.rng)

        reasons = [f"{a} removed: {why}" for a, why in removed.items()]
        if customer_id is None:
            reasons.insert(0, "cold start: unknown source key; consent unknown")
        elif cold_start:
            reasons.insert(0, "cold start: no features for this customer; consent unknown")
        if choice.explored:
            reasons.append(f"exploration: {choice.action} drawn at random among {len(choice.eligible)} eligible")
        else:
            a = self.catalog[choice.action]
            reasons.append(
                f"{a.name} has the highest net value: {p[self.catalog.names.index(a.name)]:.3f} x "
                f"{a.value_of_success:g} - {a.cost:g} = {choice.values[a.name]:.2f}"
            )
        if not cold_start:
            reasons.extend(self._drivers(row, choice.action))
        return DecideResponse(
            decision_id=uuid.uuid4().hex,
            customer_id=customer_id,
            action=choice.action,
            propensity=round(choice.propensity, 6),
            explored=choice.explored,
            values=choice.values,
            p_success={a: round(float(v), 4) for a, v in zip(self.catalog.names, p, strict=True)},
            eligible=choice.eligible,
            reasons=reasons,
            cold_start=cold_start,
            model_version=self.model_version,
            decided_at=request.at or datetime.now(UTC),
        )

    def _drivers(self, row: pd.DataFrame, action: str, top: int = 3) -> list[str]:
        """The features that pushed the chosen action's score most (LightGBM contributions)."""
        x = self.model.design(row, np.array([action]))
        contrib = self.model.booster.predict(x, pred_contrib=True)[0, : len(self.model.inputs)]
        order = np.argsort(-np.abs(contrib))[:top]
        return [
            f"{self.model.inputs[j]}={_plain(row.iloc[0, j])} {'raised' if contrib[j] > 0 else 'lowered'} "
            f"the {action} score ({contrib[j]:+.3f} log-odds)"
            for j in order
        ]


def _plain(value: object) -> str:
    """A feature value as a person reads it: 2.27, not 2.2663194444444446."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
