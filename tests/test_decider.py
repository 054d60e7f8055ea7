"""The decision class with an injected model and feature reader: no Feast, no HTTP."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

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
NOON = datetime(2026, 11, 2, 12, tzinfo=UTC)  # outside every quiet hour (customers default to UTC)


def _explore_shares(catalog: Catalog) -> np.ndarray:
    """P(action | exploring) when every action is eligible: the catalog's cost-aware explore weights."""
    from nexttouch.policy import explore_probabilities

    shares = explore_probabilities(catalog, np.ones(len(catalog.names), bool))
    assert shares[catalog.names.index("push")] > shares[catalog.names.index("advisor_call")]  # cost-aware
    return shares


def test_active_customer_gets_a_push_with_values_and_reasons(catalog: Catalog, model: DecisionModel) -> None:
    at = NOON
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
    answer = _decider(catalog, model, {**ACTIVE, "push_opt_in": 0}).decide(DecideRequest(customer_id="C1", at=NOON))
    assert "push" not in answer.eligible
    assert answer.action == "none"
    assert "push removed: no push_opt_in on record" in answer.reasons


def test_unknown_customer_gets_a_flagged_rule_based_answer(catalog: Catalog, model: DecisionModel) -> None:
    answer = _decider(catalog, model, None).decide(DecideRequest(customer_id="nobody", at=NOON))
    assert (answer.cold_start, answer.fallback, answer.action, answer.propensity) == (True, True, "none", 1.0)
    assert answer.eligible == ["none", "event_invite"]  # consent unknown: no push, no call
    assert answer.reasons[0] == "fallback: no features for this customer"
    assert answer.values == {} and answer.p_success == {}  # no model score behind a rule


def test_quiet_hours_use_the_request_time(catalog: Catalog, model: DecisionModel) -> None:
    night = datetime(2026, 11, 2, 23, tzinfo=UTC)
    answer = _decider(catalog, model, ACTIVE).decide(DecideRequest(customer_id="C1", at=night))
    assert "push" not in answer.eligible and answer.action != "push"
    assert any(r.startswith("push removed: quiet hours 21:00-08:00") for r in answer.reasons)


def test_exploration_logs_the_probability_of_its_choice(catalog: Catalog, model: DecisionModel) -> None:
    decider = _decider(catalog, model, ACTIVE, epsilon=0.4)
    answers = [decider.decide(DecideRequest(customer_id="C1", at=NOON)) for _ in range(400)]
    explored = [a for a in answers if a.explored]
    assert 0.3 < len(explored) / len(answers) < 0.5
    explore = dict(zip(catalog.names, _explore_shares(catalog), strict=True))
    for a in answers:  # epsilon x P(drawn | exploring) + (1 - epsilon) for the best action (push)
        expected = 0.4 * explore[a.action] + (0.6 if a.action == "push" else 0.0)
        assert a.propensity == pytest.approx(expected, abs=1e-6)  # answers round to 6 decimals


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
    answer = decider.decide(DecideRequest(source={"system": "app", "key": "app-1"}, at=NOON))
    assert (answer.customer_id, answer.cold_start, answer.action) == ("C1", False, "push")
    unknown = decider.decide(DecideRequest(source={"system": "crm", "key": "app-1"}, at=NOON))
    assert (unknown.customer_id, unknown.cold_start, unknown.fallback) == (None, True, True)
    assert unknown.reasons[0] == "fallback: unknown source key"
    assert seen == ["C1"]  # an unresolved key never reaches the feature store


def test_exactly_one_identity_is_required() -> None:
    from pydantic import ValidationError

    for body in ({}, {"customer_id": "C1", "source": {"system": "app", "key": "k"}}):
        with pytest.raises(ValidationError, match="exactly one of customer_id or source"):
            DecideRequest.model_validate(body)


CALLER = {"tech_in_30d": 2, "push_opt_in": 0, "call_consent": 1, "region": "north"}


def _prefers_call(catalog: Catalog, model: DecisionModel) -> Catalog:
    """The test catalog with the call made worth more than anything else for CALLER, 2 calls a day per region."""
    actions = [
        a.model_copy(update={"value_of_success": 10_000.0, "cost": 0.0, "caps": (), "cooldown_days": None})
        if a.name == "advisor_call"
        else a
        for a in catalog.actions
    ]
    call = actions[catalog.names.index("advisor_call")]
    assert call.capacity is not None
    actions[catalog.names.index("advisor_call")] = call.model_copy(
        update={"capacity": call.capacity.model_copy(update={"limit": 2, "per": "region"})}
    )
    return Catalog(actions=tuple(actions))


class Ledger:
    """In-memory capacity ledger with the same contract as serving/capacity.take."""

    def __init__(self) -> None:
        self.used: dict[tuple, int] = {}
        self.calls: list[tuple] = []

    def take(self, action, features, at, want):  # TakeCapacity
        from serving.capacity import bucket_of, period_of

        key = (action.name, period_of(action.capacity, at), bucket_of(action.capacity, features))
        granted = max(0, min(want, action.capacity.limit - self.used.get(key, 0)))
        self.used[key] = self.used.get(key, 0) + granted
        self.calls.append((*key, want, granted))
        return granted


def test_used_up_capacity_gives_the_next_best_action_and_says_so(catalog: Catalog, model: DecisionModel) -> None:
    cat = _prefers_call(catalog, model)
    decider = Decider(cat, model, "7", lambda _c, _a: CALLER, epsilon=0.0, seed=1)
    ledger = Ledger()
    answers = [decider.decide(DecideRequest(customer_id=f"C{i}", at=NOON), ledger.take) for i in range(4)]
    assert [a.action for a in answers[:2]] == ["advisor_call", "advisor_call"]
    for a in answers[2:]:
        assert a.action != "advisor_call" and "advisor_call" not in a.eligible
        assert "advisor_call removed: no capacity left: all 2 per day for this region are taken" in a.reasons
        assert a.propensity == 1.0  # the policy chose again among what was left
    assert ledger.used == {("advisor_call", "2026-11-02", "region=north"): 2}
    # A new day has new capacity; another region has its own.
    tomorrow = decider.decide(DecideRequest(customer_id="C9", at=NOON.replace(day=3)), ledger.take)
    assert tomorrow.action == "advisor_call"
    south = Decider(cat, model, "7", lambda _c, _a: {**CALLER, "region": "south"}, epsilon=0.0)
    assert south.decide(DecideRequest(customer_id="C8", at=NOON), ledger.take).action == "advisor_call"


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["tech_in_30d", "push_opt_in", "call_consent", "region"])


def test_batch_decides_like_one_by_one(catalog: Catalog, model: DecisionModel) -> None:
    rng = np.random.default_rng(3)
    rows = [
        {"tech_in_30d": float(t), "push_opt_in": float(po), "call_consent": float(cc), "region": r}
        for t, po, cc, r in zip(
            rng.integers(0, 30, 60),
            rng.integers(0, 2, 60),
            rng.integers(0, 2, 60),
            rng.choice(["north", "south"], 60),
            strict=True,
        )
    ]
    ids = [f"C{i}" for i in range(60)]
    decider = Decider(catalog, model, "7", lambda c, _a: rows[int(c[1:])], epsilon=0.0)
    batch = decider.decide_batch(ids, _frame(rows), np.ones(60, bool), NOON)
    single = [decider.decide(DecideRequest(customer_id=c, at=NOON)) for c in ids]
    for b, s in zip(batch, single, strict=True):  # every field but the decision's own id
        assert b.model_dump(exclude={"decision_id"}) == s.model_dump(exclude={"decision_id"})
    assert len({b.decision_id for b in batch}) == 60


def test_batch_explores_with_the_logged_propensity(catalog: Catalog, model: DecisionModel) -> None:
    n = 4000
    decider = Decider(catalog, model, "7", lambda _c, _a: None, epsilon=0.4, seed=5)
    answers = decider.decide_batch([f"C{i}" for i in range(n)], _frame([ACTIVE] * n), np.ones(n, bool), NOON)
    explored = sum(a.explored for a in answers)
    assert 0.36 < explored / n < 0.44
    explore = dict(zip(catalog.names, _explore_shares(catalog), strict=True))
    for a in answers:
        assert a.propensity == pytest.approx(0.4 * explore[a.action] + (0.6 if a.action == "push" else 0.0), abs=1e-6)
    drawn = [a.action for a in answers if a.explored]
    for action in catalog.names:  # every eligible action is drawn in proportion to its explore weight
        assert drawn.count(action) / len(drawn) == pytest.approx(explore[action], abs=0.04), action


def test_batch_grants_capacity_to_the_most_valuable_and_falls_back_for_unknowns(
    catalog: Catalog, model: DecisionModel
) -> None:
    cat = _prefers_call(catalog, model)
    decider = Decider(cat, model, "7", lambda _c, _a: None, epsilon=0.0)
    rows = [{**CALLER, "tech_in_30d": float(t)} for t in (1, 2, 3, 4, 5)] + [CALLER]
    known = np.array([True, True, True, True, True, False])
    ledger = Ledger()
    answers = decider.decide_batch(["A", "B", "C", "D", "E", "F"], _frame(rows), known, NOON, ledger.take)
    calls = [a.customer_id for a in answers if a.action == "advisor_call"]
    assert len(calls) == 2
    assert ledger.calls == [("advisor_call", "2026-11-02", "region=north", 5, 2)]  # one ledger call for the group
    best_two = sorted(answers[:5], key=lambda a: -a.values["advisor_call"])[:2]
    assert sorted(calls) == sorted(a.customer_id for a in best_two)
    for a in answers[:5]:
        if a.action != "advisor_call":
            assert "advisor_call removed: no capacity left: all 2 per day for this region are taken" in a.reasons
    assert (answers[5].fallback, answers[5].action) == (True, "none")


def test_the_single_row_path_scores_like_the_model(catalog: Catalog, model: DecisionModel) -> None:
    rows = [
        ACTIVE,
        {"tech_in_30d": None, "push_opt_in": 1, "call_consent": None, "region": None},
        {"tech_in_30d": 7.5, "push_opt_in": 0, "call_consent": 1, "region": "atlantis"},  # unknown level
        {"tech_in_30d": "12", "push_opt_in": True, "call_consent": 0, "region": "south"},  # coerced like pandas
        {"region": "north"},  # missing features
    ]
    decider = _decider(catalog, model, None)
    frame = pd.DataFrame(rows).reindex(columns=model.inputs)
    expected = model.predict_all(frame)[:, [model.actions.index(a) for a in catalog.names]]
    for row, want in zip(rows, expected, strict=True):
        x = decider.encode_row(row)
        np.testing.assert_allclose(
            x, model.encode_columns(frame.iloc[[rows.index(row)]], model.numeric, model.categorical)[0]
        )
        np.testing.assert_allclose(decider.score_row(x), want, rtol=1e-12)


def test_batch_gives_every_contact_rule_the_same_reason_as_one_by_one(catalog: Catalog, model: DecisionModel) -> None:
    """Quiet hours in several time zones, caps, cool-downs and consent: the batch's reason texts are eligibility's."""
    rng = np.random.default_rng(9)
    at = datetime(2026, 11, 2, 20, 30, tzinfo=UTC)  # night in Europe, office hours in America
    zones = ["Europe/Paris", "America/New_York", "Asia/Tokyo", "Mars/Olympus", None]
    rows = [
        {
            **ACTIVE,
            "push_opt_in": float(rng.integers(0, 2)),
            "call_consent": float(rng.integers(0, 2)),
            "time_zone": zones[i % len(zones)],
            "tech_out_7d": float(rng.integers(0, 5)),
            "low_out_30d": float(rng.integers(0, 4)),
            "last_low_at": pd.Timestamp(at) - pd.Timedelta(days=float(rng.uniform(0, 20))),
            "days_since_high": float(rng.uniform(0, 30)),
        }
        for i in range(80)
    ]
    ids = [f"C{i}" for i in range(80)]
    decider = Decider(catalog, model, "7", lambda c, _a: rows[int(c[1:])], epsilon=0.0)
    batch = decider.decide_batch(ids, pd.DataFrame(rows), np.ones(80, bool), at)
    single = [decider.decide(DecideRequest(customer_id=c, at=at)) for c in ids]
    kinds = {r.split(" removed: ")[1].split(" ")[0] for a in batch for r in a.reasons if " removed: " in r}
    assert kinds >= {"no", "quiet", "unknown", "frequency", "cool-down:"}, kinds  # every kind of rule occurs
    for b, s in zip(batch, single, strict=True):
        assert (b.action, b.eligible, b.reasons) == (s.action, s.eligible, s.reasons)


def test_batch_rows_are_the_response_models_json(catalog: Catalog, model: DecisionModel) -> None:
    """The service writes decide_rows' dicts to JSON directly: the same bytes as the validated response model."""
    from pydantic_core import to_json

    from nexttouch.api import DecideBatchResponse

    cat = _prefers_call(catalog, model)
    rows = [{**CALLER, "tech_in_30d": float(t)} for t in range(6)] + [ACTIVE, {**ACTIVE, "push_opt_in": 0.0}]
    known = np.array([True] * 7 + [False])
    at = datetime(2026, 11, 2, 13, 45, 10, 250_000, tzinfo=ZoneInfo("Europe/Paris"))
    decider = Decider(cat, model, "7", lambda _c, _a: None, epsilon=0.3, seed=2)
    answers = decider.decide_rows([f"C{i}" for i in range(8)], _frame(rows), known, at, Ledger().take)
    body = to_json({"decisions": answers})
    model_json = DecideBatchResponse.model_validate({"decisions": answers}).model_dump_json().encode()
    assert body == model_json
    assert [a["fallback"] for a in answers] == [False] * 7 + [True]
    assert any("no capacity left" in r for a in answers for r in a["reasons"])


def test_rounded_is_pythons_round() -> None:
    """Vectorised rounding gives exactly Python's round, half-way cases and scaling errors included."""
    from serving.decider import rounded

    rng = np.random.default_rng(4)
    halves = (np.arange(-20_000, 20_000) + 0.5) / 10_000  # x.xxxx5: scaling by 1e4 lands on both sides
    special = [0.00015, 2.675, 1.00005, -0.00005, 12.34565, 1e20, -1e-20, 0.0, -0.0, np.nan, np.inf, -np.inf]
    values = np.concatenate([rng.random(50_000), rng.normal(0, 500, 50_000), halves, halves / 100, special])
    for digits in (4, 6):
        got = rounded(values.reshape(-1, 2), digits).ravel()
        want = np.array([round(float(v), digits) for v in values])
        np.testing.assert_array_equal(got, want)
        assert (np.signbit(got) == np.signbit(want)).all()  # -0.0 stays -0.0
    assert rounded(np.array([1.99975]), 4)[0] == round(1.99975, 4) == 1.9997 != np.round(1.99975, 4)  # numpy's own
