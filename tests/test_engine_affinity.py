"""Per-customer learning: the posterior update, Thompson sampling's exact propensities, the engine's use."""

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from nexttouch.catalog import Catalog
from nexttouch.columns import from_frame
from nexttouch.engine import DecisionEngine
from nexttouch.engine.affinity import Affinity, fit_prior_sd, prior_sds, update, update_many
from nexttouch.engine.choice import choose, net_values
from nexttouch.logodds import sigmoid
from nexttouch.model import DecisionModel
from tests.test_decisions import ACTIVE

NOON = datetime(2026, 11, 2, 12, tzinfo=UTC)


def test_an_outcome_moves_the_posterior_towards_it_and_makes_it_surer() -> None:
    mean, precision = update(0.0, 4.0, 0.0, 1.0)
    assert mean > 0 and precision == pytest.approx(4.25)
    down, _ = update(0.0, 4.0, 0.0, 0.0)
    assert down == pytest.approx(-mean)
    # many failures of a customer the model thinks likely to respond: their affinity ends up clearly negative
    m, p = 0.0, 4.0
    for _ in range(20):
        m, p = update(m, p, 1.0, 0.0)
    assert sigmoid(np.float64(1.0 + m)) < 0.4 < sigmoid(np.float64(1.0))
    vm, vp = update_many(np.zeros(3), np.full(3, 4.0), np.zeros(3), np.array([1.0, 0.0, 1.0]))
    assert vm.tolist() == pytest.approx([mean, down, mean]) and vp.tolist() == pytest.approx([4.25] * 3)


def test_thompson_propensities_are_the_shares_of_actions_chosen(catalog: Catalog) -> None:
    """Each logged propensity is the probability the policy had of its action: OPE stays unbiased."""
    rng = np.random.default_rng(0)
    n = 20_000
    p = np.tile([0.10, 0.30, 0.32, 0.28], (n, 1))  # push and invite close: the posterior decides
    affinity = Affinity.prior(n, np.full(4, 0.6))
    base = np.log(p / (1 - p))
    sampled = net_values(catalog, sigmoid(base[None] + affinity.draws(rng)))
    allowed = np.ones((n, 4), bool)
    c = choose(catalog, net_values(catalog, p), allowed, 0.05, rng.random(n), 1 - rng.random(n), 0, sampled)
    for j in range(4):
        share = np.mean(c.action == j)
        assert share == pytest.approx(c.propensity[c.action == j].mean() if share else 0.0, abs=0.015), j
    assert 0.1 < np.mean(c.action == 1) < 0.9 and 0.1 < np.mean(c.action == 2) < 0.9  # both get tried
    # an off-policy estimate of a constant policy with these propensities matches its value
    reward = rng.binomial(1, p[np.arange(n), c.action])
    ips = np.mean((c.action == 2) * reward / c.propensity)
    assert ips == pytest.approx(0.32, abs=0.03)


def test_own_responses_change_the_next_decision_and_say_so(catalog: Catalog, model: DecisionModel) -> None:
    # a dear push: worth it for a customer who opens most pushes, not for one who ignores them
    dear = Catalog(
        actions=tuple(a.model_copy(update={"cost": 20.0}) if a.name == "push" else a for a in catalog.actions)
    )
    engine = DecisionEngine(dear, model, "7", epsilon=0.0, seed=1, prior_sd=2.0, sample=True)
    features = from_frame(pd.DataFrame([ACTIVE]))
    before = engine.decide(["C1"], features, NOON, ["a"])[0]
    assert before["action"] == "push"
    draft = engine.draft(["C1"], features, NOON)
    push = catalog.names.index("push")
    own = Affinity.prior(1, engine.prior_sd)
    for _ in range(8):  # eight pushes ignored
        own.mean[0, push], own.precision[0, push] = update(
            own.mean[0, push],
            own.precision[0, push],
            float(np.log(draft.population[0, push] / (1 - draft.population[0, push]))),
            0.0,
        )
        own.outcomes[0, push] += 1
    engine.personalise(draft, own)
    engine.allocate(draft)
    (after,) = engine.answers(draft, ["b"])
    assert after["p_success"]["push"] < before["p_success"]["push"]
    assert after["action"] != "push"
    assert any("own responses (8 outcomes) changed the best action from push" in r for r in after["reasons"])


@pytest.mark.parametrize("spread", [0.0, 0.4, 0.8])
def test_the_prior_is_fitted_to_the_spread_the_model_leaves_unexplained(spread: float) -> None:
    """Customers whose own affinity spreads by ``spread`` around a model's predictions, six decisions each."""
    rng = np.random.default_rng(3)
    n, k = 20_000, 6
    own = rng.normal(0, spread, n)
    customer = np.repeat(np.arange(n), k)
    model_logit = rng.normal(-1.5, 1.0, n * k)
    outcome = (rng.random(n * k) < sigmoid(model_logit + own[customer])).astype(float)
    assert fit_prior_sd(customer, sigmoid(model_logit), outcome) == pytest.approx(spread, abs=0.08)


def test_a_fitted_prior_applies_per_action_and_an_action_without_one_is_not_learnt(
    catalog: Catalog, model: DecisionModel
) -> None:
    model.affinity_sd = {"push": 0.3, "event_invite": 0.5}
    try:
        sd = prior_sds("fitted", catalog.names, model.affinity_sd)
        assert sd is not None and sd.tolist() == [0.0, 0.3, 0.5, 0.0]  # none, push, event_invite, advisor_call
        assert prior_sds(0.7, catalog.names, {}).tolist() == [0.7] * 4
        assert prior_sds(0.0, catalog.names, model.affinity_sd) is None
        assert prior_sds("fitted", catalog.names, {}) is None  # a model without a fitted prior: off
        engine = DecisionEngine(catalog, model, "7", epsilon=0.0, seed=1, prior_sd=sd, sample=True)
        draft = engine.draft(["C1"], from_frame(pd.DataFrame([ACTIVE])), NOON)
        assert draft.sampled is not None
        spread = draft.sampled.std(axis=0)[0]  # sampled net values per action
        assert spread[catalog.names.index("advisor_call")] < 1e-6 < spread[catalog.names.index("push")]
    finally:
        model.affinity_sd = {}


def test_without_sampling_a_customer_decides_on_the_posterior_mean(catalog: Catalog, model: DecisionModel) -> None:
    """Learning on, sampling off: a customer with no outcomes gets the model's own decision, one with some
    gets the decision of their posterior mean, and exploration stays the engine's epsilon."""
    engine = DecisionEngine(catalog, model, "7", epsilon=0.0, seed=1, prior_sd=1.0)
    static = DecisionEngine(catalog, model, "7", epsilon=0.0, seed=1)
    features = from_frame(pd.DataFrame([ACTIVE]))
    cold = engine.draft(["C1"], features, NOON)
    assert cold.sampled is None and cold.p.tolist() == static.draft(["C1"], features, NOON).p.tolist()
    push = catalog.names.index("push")
    own = Affinity.prior(1, engine.prior_sd)
    own.mean[0, push], own.outcomes[0, push] = -3.0, 4  # pushes ignored
    engine.personalise(cold, own)
    assert cold.sampled is None and cold.choice.propensity.tolist() == [1.0]
    assert cold.p[0, push] < static.draft(["C1"], features, NOON).p[0, push]
