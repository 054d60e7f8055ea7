"""The closed-loop what-if: a tiny world, a few days, policies run through the same rules."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from features.touch_features import TOUCH_FEATURES
from nexttouch.catalog import NO_ACTION, Catalog
from nexttouch.columns import from_frame
from nexttouch.engine.rules import Rule, check
from nexttouch.jobs.whatif import START, default_policies, touch_featurizer
from nexttouch.schemas import CUSTOMER_ID, DECISION_ID
from nexttouch.simulate import TYPE_CODE
from nexttouch.touches import CONTACT_STATE, RECENCY_FEATURES
from nexttouch.whatif import ConstantPolicy, RunResult, compare, run_policy
from nexttouch.world import Origin, World, burn_in

HISTORY = 60
DAYS = 8


@pytest.fixture(scope="module")
def origin(catalog: Catalog) -> Origin:
    return burn_in(catalog, 300, HISTORY, START, seed=3, decision_rate=0.3)


def run(origin: Origin, make, epsilon: float = 0.05, days: int = DAYS) -> RunResult:
    return run_policy(origin, make, days, touch_featurizer(HISTORY), epsilon, history_days=HISTORY)


def test_the_oracle_beats_random_and_the_best_single_action(origin: Origin, catalog: Catalog) -> None:
    policies = default_policies(catalog, None)
    results = [run(origin, policies[name]) for name in (*(f"always {a}" for a in catalog.names), "random", "oracle")]
    c = compare(results)
    v = c.metrics.set_index("policy")["value_per_customer_day"]
    assert c.best_single in {f"always {a}" for a in catalog.names}
    assert v[c.best_single] == max(v[[f"always {a}" for a in catalog.names]])
    assert v["oracle"] > v[c.best_single] + 0.02 and v["oracle"] > v["random"] + 0.05
    assert c.share_of_oracle_margin("oracle") == pytest.approx(1.0)
    assert c.share_of_oracle_margin(c.best_single) == pytest.approx(0.0)


def test_common_random_numbers_pair_the_runs(origin: Origin, catalog: Catalog) -> None:
    policies = default_policies(catalog, None)
    a, b = run(origin, policies["always push"]), run(origin, policies["always push"])
    for field in ("day", "cust", "action", "propensity", "expected", "realised"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.metrics() == b.metrics()
    # another policy meets the same customers at the same times (its contacts change only what follows)
    other = run(origin, policies["always none"], epsilon=0.0, days=1)
    first = a.day == 0
    np.testing.assert_array_equal(other.cust, a.cust[first])
    assert (other.action == catalog.names.index(NO_ACTION)).all()
    # the origin is shared, never changed by a run
    assert World(origin).events.size == origin.events.size


class Spy:
    """Records what a policy is shown; chooses the most expensive allowed action."""

    name = "spy"

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.frames: list[tuple[pd.DataFrame, datetime, np.ndarray]] = []
        self.outcomes: list[pd.DataFrame] = []

    def decide(self, frame: pd.DataFrame, now: datetime, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.frames.append((frame.copy(), now, eligible.copy()))
        cost = np.array([a.cost for a in self.catalog.actions])
        return np.where(eligible, cost, -1.0).argmax(axis=1), np.ones(len(frame))

    def observe(self, outcomes: pd.DataFrame) -> None:
        self.outcomes.append(outcomes)


def test_policies_see_only_what_the_brand_sees_and_only_allowed_actions(origin: Origin, catalog: Catalog) -> None:
    spy = Spy(catalog)
    result = run(origin, lambda _world: spy, epsilon=0.0)
    profile = set(origin.customers.columns) - {"signup_at"}
    expected = {*TOUCH_FEATURES, *CONTACT_STATE, *RECENCY_FEATURES, *profile}
    latent = set(vars(origin.truth.latents)) - {"push_opt_in", "call_consent"}  # consent is on the profile
    for frame, now, eligible in spy.frames:
        assert set(frame.columns) == expected
        assert not latent & set(frame.columns)
        # every row is decided under the service's contact rules at that time
        np.testing.assert_array_equal(eligible, check(catalog, from_frame(frame), len(frame), now).eligible)
        assert (frame["days_since_contact"] >= 0).all()
    assert sum(len(f) for f, _, _ in spy.frames) == len(result.action)
    # decisions fall at local times of day, some of them in quiet hours
    checks = [check(catalog, from_frame(f), len(f), now) for f, now, _ in spy.frames]
    quiet = sum(int((c.rules == Rule.QUIET).any(axis=1).sum()) for c in checks)
    assert 0.05 < quiet / len(result.action) < 0.6
    # a push due in its quiet hours is deferred to their end, and goes out then
    deferred = sum(int(np.isfinite(c.send_at).any(axis=1).sum()) for c in checks)
    assert deferred > 0
    # the spy's choices, the most expensive allowed, are what happened: no exploration at epsilon 0
    assert not result.explored.any() and (result.propensity == 1).all()
    assert (result.action == catalog.names.index("advisor_call")).any()


def test_outcomes_reach_a_learner_once_when_the_brand_would_know_them(origin: Origin, catalog: Catalog) -> None:
    spy = Spy(catalog)
    result = run(origin, lambda _world: spy, epsilon=0.0)
    seen = pd.concat(spy.outcomes, ignore_index=True)
    assert seen["decision_id"].is_unique
    assert (seen["known_at"] > seen["decided_at"]).all()
    assert (seen["known_at"] <= pd.Timestamp(START) + pd.Timedelta(days=DAYS)).all()
    # every decision whose attribution window closed inside the run has been delivered
    closes = pd.to_datetime(START) + pd.to_timedelta(result.day, unit="D") + pd.Timedelta(days=3)
    assert len(seen) >= int((closes <= pd.Timestamp(START) + pd.Timedelta(days=DAYS)).sum())
    # the outcome delivered is the one that happened (decision ids number the run's decisions in order)
    number = seen["decision_id"].str.removeprefix("wi-").astype(int).to_numpy()
    cost = np.array([a.cost for a in catalog.actions])[result.action]
    np.testing.assert_array_equal(seen["outcome"].to_numpy() == 1, (result.realised + cost > 0)[number])
    assert (seen["action"].to_numpy() == np.array(catalog.names)[result.action[number]]).all()


def test_capacity_and_exploration_apply_to_every_policy(origin: Origin, catalog: Catalog) -> None:
    data = catalog.model_dump()
    for action in data["actions"]:
        if action["name"] == "advisor_call":
            action["capacity"] = {"limit": 2, "period": "day", "per": "region"}
    scarce = Catalog.model_validate(data)
    tiny = Origin(**{**vars(origin), "catalog": scarce})
    spy = Spy(scarce)
    result = run(tiny, lambda _world: spy, epsilon=0.3)
    call = scarce.names.index("advisor_call")
    regions = origin.customers["region"].to_numpy()[result.cust]
    per_day = pd.Series(result.action == call).groupby([result.day, regions]).sum()
    assert per_day.max() <= 2 and per_day.max() == 2
    # refused rows chose again among what was left: the spy saw some rows twice, with calls removed
    assert sum(len(f) for f, _, _ in spy.frames) > len(result.action)
    assert 0.2 < result.explored.mean() < 0.4
    assert ((result.propensity > 0) & (result.propensity <= 1)).all()
    # an exploratory draw is certain only where nothing but no contact was allowed
    certain = result.explored & (result.propensity == 1)
    assert (result.action[certain] == scarce.names.index(NO_ACTION)).all()
    assert (result.propensity[result.explored & (result.action != scarce.names.index(NO_ACTION))] < 1).all()


def test_the_champion_decides_as_the_decision_engine(origin: Origin, catalog: Catalog) -> None:
    from nexttouch.engine import DecisionEngine
    from nexttouch.schemas import ACTION, DECIDED_AT, DECISION_ID, OUTCOME, PROPENSITY
    from nexttouch.whatif import ChampionPolicy
    from training.train import fit

    spy = Spy(catalog)
    run(origin, lambda _world: spy, epsilon=0.0, days=4)
    rng = np.random.default_rng(0)
    rows = pd.concat([f.assign(**{DECIDED_AT: pd.Timestamp(now)}) for f, now, _ in spy.frames], ignore_index=True)
    data = rows.assign(
        **{
            DECISION_ID: [f"d{i}" for i in range(len(rows))],
            ACTION: rng.choice(catalog.names, len(rows)),
            PROPENSITY: 0.25,
            OUTCOME: (rng.random(len(rows)) < 0.2 + 0.3 * (rows["tech_in_30d"] > 5)).astype(float),
        }
    )
    model = fit(data, catalog, rounds=20).model
    champion = ChampionPolicy(catalog, model)
    engine = DecisionEngine(catalog, model, "test", epsilon=0.0)
    for frame, now, eligible in spy.frames[:10]:
        chosen, propensity = champion.decide(frame, now, eligible)
        assert (propensity == 1).all()
        draft = engine.draft(list(frame["customer_id"]), from_frame(frame), now)
        np.testing.assert_array_equal(chosen, draft.choice.action)


def test_counts_drawn_at_uniforms_follow_their_distribution() -> None:
    from nexttouch.world import binomial_at, poisson_at

    rng = np.random.default_rng(1)
    lam = np.full(200_000, 0.7)
    k = poisson_at(rng.random(len(lam)), lam)
    assert k.mean() == pytest.approx(0.7, abs=0.01) and k.var() == pytest.approx(0.7, abs=0.02)
    n = rng.integers(0, 4, len(lam))
    b = binomial_at(rng.random(len(lam)), n, np.full(len(lam), 0.3))
    assert (b <= n).all() and b.mean() == pytest.approx(0.3 * n.mean(), abs=0.01)
    # the same uniform gives the same count: customers in the same state behave alike under every policy
    u = rng.random(1000)
    np.testing.assert_array_equal(poisson_at(u, np.full(1000, 2.0)), poisson_at(u.copy(), np.full(1000, 2.0)))


def test_the_closed_loop_world_continues_the_burn_in(origin: Origin) -> None:
    world = World(origin)
    for day in range(DAYS):
        world.begin_day(day)
        world.end_day()
    _, t, k, _, _ = world.events.view()
    session = k == TYPE_CODE["app_session"]
    t0 = int(START.timestamp())
    before = (session & (t >= t0 - 30 * 86_400) & (t < t0)).sum() / 30
    after = (session & (t >= t0)).sum() / DAYS
    assert after == pytest.approx(before, rel=0.15)  # no contacts: activity decays a little, it does not jump


def test_touches_name_their_decision_as_the_brands_events_do(origin: Origin, catalog: Catalog) -> None:
    """The history features count answers to decisions apart from organic activity: the world's touches
    must carry that link, from the burn-in and from the closed loop, or the features read zero there."""
    worlds: list[World] = []

    def make(world: World) -> ConstantPolicy:
        worlds.append(world)
        return ConstantPolicy(catalog, "push")

    run(origin, make, epsilon=0.0)
    world = worlds[0]
    for since, until in ((START - timedelta(days=HISTORY), START), (START, START + timedelta(days=DAYS))):
        history = world.history(np.arange(origin.n), since, until)
        linked = history[DECISION_ID].notna()
        sent, opened = history["touch_type"] == "push_sent", history["touch_type"] == "push_opened"
        assert sent.any() and opened.any()
        assert linked[sent | opened].all()
        assert not linked[history["touch_type"].isin(["app_like", "purchase"])].any()  # organic only
        # an opened push answers a push sent to the same customer
        pushes = set(zip(history.loc[sent, CUSTOMER_ID], history.loc[sent, DECISION_ID], strict=True))
        assert set(zip(history.loc[opened, CUSTOMER_ID], history.loc[opened, DECISION_ID], strict=True)) <= pushes
    frame = touch_featurizer(HISTORY)(
        world.history(np.arange(origin.n), START - timedelta(days=HISTORY), START + timedelta(days=DAYS)),
        world.profile(np.arange(origin.n)),
        START + timedelta(days=DAYS),
        pd.Series(pd.Timestamp(START + timedelta(days=DAYS))).repeat(origin.n).reset_index(drop=True),
    )
    assert (frame["push_sent_linked_decayed"] > 0).mean() > 0.5
    assert frame["push_open_rate_all"].nunique() > 10


def test_the_learning_champion_learns_each_customers_outcomes_once(origin: Origin, catalog: Catalog) -> None:
    from nexttouch.whatif import LearningChampionPolicy
    from training.train import fit

    spy = Spy(catalog)
    run(origin, lambda _world: spy, epsilon=0.0, days=3)
    rng = np.random.default_rng(1)
    rows = pd.concat([f.assign(decided_at=pd.Timestamp(now)) for f, now, _ in spy.frames], ignore_index=True)
    data = rows.assign(
        decision_id=[f"d{i}" for i in range(len(rows))],
        action=rng.choice(catalog.names, len(rows)),
        propensity=0.25,
        outcome=(rng.random(len(rows)) < 0.3).astype(float),
    )
    model = fit(data, catalog, rounds=10).model
    made: list[LearningChampionPolicy] = []

    def make(world: World) -> LearningChampionPolicy:
        made.append(LearningChampionPolicy(world, model, prior_sd=0.5, epsilon=0.05))
        return made[0]

    result = run(origin, make, days=6)
    policy = made[0]
    learnt = int(policy.affinity.outcomes.sum())
    # every decision whose outcome the brand knew by the end was learnt, once, on its own customer and action
    assert 0 < learnt <= len(result.action) and learnt + len(policy.base) == len(result.action)
    moved = policy.affinity.mean != 0
    assert moved.sum() == (policy.affinity.outcomes > 0).sum()
    assert ((result.propensity > 0) & (result.propensity <= 1)).all() and (result.propensity < 1).any()
