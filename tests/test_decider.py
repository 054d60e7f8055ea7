"""The decision class with an injected model and feature reader: no Feast, no HTTP."""

from datetime import UTC, datetime

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from nexttouch.api import DecideRequest
from nexttouch.catalog import Catalog
from nexttouch.model import DecisionModel
from serving.decider import Decider


@pytest.fixture(scope="module")
def model(catalog: Catalog) -> DecisionModel:
    """A tiny model where push succeeds for app-active customers and nothing else does."""
    rng = np.random.default_rng(0)
    n = 4000
    frame = pd.DataFrame(
        {
            "tech_in_30d": rng.integers(0, 30, n).astype(float),
            "push_opt_in": 1.0,
            "call_consent": 1.0,
            "region": rng.choice(["north", "south"], n),
        }
    )
    actions = rng.choice(catalog.names, n)
    y = (actions == "push") & (frame["tech_in_30d"] > 15)
    template = DecisionModel(
        None, ["tech_in_30d", "push_opt_in", "call_consent"], {"region": ["north", "south"]}, catalog.names
    )  # type: ignore[arg-type]
    x = template.design(frame, actions)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 20},
        lgb.Dataset(x, y.astype(float), categorical_feature=[3, 4]),
        num_boost_round=40,
    )
    return DecisionModel(booster, template.numeric, template.categorical, catalog.names)


def _decider(catalog: Catalog, model: DecisionModel, features: dict | None, epsilon: float = 0.0) -> Decider:
    return Decider(catalog, model, "7", lambda _cid, _at: features, epsilon=epsilon, seed=1)


ACTIVE = {"tech_in_30d": 25, "push_opt_in": 1, "call_consent": 1, "region": "north"}


def test_active_customer_gets_a_push_with_values_and_reasons(catalog: Catalog, model: DecisionModel) -> None:
    at = datetime(2026, 11, 1, 9, tzinfo=UTC)
    answer = _decider(catalog, model, ACTIVE).decide(DecideRequest(customer_id="C1", at=at))
    assert answer.action == "push"
    assert (answer.propensity, answer.explored, answer.cold_start) == (1.0, False, False)
    assert answer.model_version == "7" and answer.decided_at == at
    assert set(answer.values) == set(catalog.names)
    for action in catalog.names:
        a = catalog[action]
        assert answer.values[action] == pytest.approx(
            answer.p_success[action] * a.value_of_success - a.cost, abs=4e-3
        )  # p is rounded to 4 places
    assert answer.values["push"] == max(answer.values.values())
    assert answer.reasons[0].startswith("push has the highest net value")
    assert any(r.startswith("tech_in_30d=25 raised the push score") for r in answer.reasons)
    assert len(answer.decision_id) == 32


def test_no_consent_removes_push_and_none_wins(catalog: Catalog, model: DecisionModel) -> None:
    answer = _decider(catalog, model, {**ACTIVE, "push_opt_in": 0}).decide(DecideRequest(customer_id="C1"))
    assert "push" not in answer.eligible
    assert answer.action == "none"
    assert "push removed: no push_opt_in on record" in answer.reasons


def test_unknown_customer_gets_a_flagged_cold_start_answer(catalog: Catalog, model: DecisionModel) -> None:
    answer = _decider(catalog, model, None).decide(DecideRequest(customer_id="nobody"))
    assert answer.cold_start is True
    assert answer.eligible == ["none", "event_invite"]  # consent unknown: no push, no call
    assert answer.action in answer.eligible
    assert answer.reasons[0].startswith("cold start")


def test_exploration_logs_the_probability_of_its_choice(catalog: Catalog, model: DecisionModel) -> None:
    decider = _decider(catalog, model, ACTIVE, epsilon=0.4)
    answers = [decider.decide(DecideRequest(customer_id="C1")) for _ in range(400)]
    explored = [a for a in answers if a.explored]
    assert 0.3 < len(explored) / len(answers) < 0.5
    for a in answers:
        expected = 0.4 / 4 + (0.6 if a.action == "push" else 0.0)
        assert a.propensity == pytest.approx(expected)


def test_model_must_score_every_catalog_action(catalog: Catalog, model: DecisionModel) -> None:
    partial = DecisionModel(model.booster, model.numeric, model.categorical, ["none", "push"])
    with pytest.raises(ValueError, match="event_invite"):
        _decider(catalog, partial, ACTIVE)


def test_a_source_key_resolves_to_the_customer(catalog: Catalog, model: DecisionModel) -> None:
    seen = []

    def read(cid: str, _at: object) -> dict:
        seen.append(cid)
        return ACTIVE

    keys = {("app", "app-1"): "C1"}
    decider = Decider(catalog, model, "7", read, epsilon=0.0, resolve=lambda s, k: keys.get((s, k)))
    answer = decider.decide(DecideRequest(source={"system": "app", "key": "app-1"}))
    assert (answer.customer_id, answer.cold_start, answer.action) == ("C1", False, "push")
    unknown = decider.decide(DecideRequest(source={"system": "crm", "key": "app-1"}))
    assert (unknown.customer_id, unknown.cold_start) == (None, True)
    assert unknown.reasons[0] == "cold start: unknown source key; consent unknown"
    assert seen == ["C1"]  # an unresolved key never reaches the feature store


def test_exactly_one_identity_is_required() -> None:
    from pydantic import ValidationError

    for body in ({}, {"customer_id": "C1", "source": {"system": "app", "key": "k"}}):
        with pytest.raises(ValidationError, match="exactly one of customer_id or source"):
            DecideRequest.model_validate(body)
