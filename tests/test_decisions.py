"""The decide use case (serving.decisions): identity -> features -> engine -> capacity and log -> answers.

The model is a tiny LightGBM fitted here, the feature store a dict, the log a real SQLite decision log:
``Decisions.decide`` is the door /decide (a batch of one) and /decide/batch both go through.
"""

import asyncio
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nexttouch.api import CustomerRef
from nexttouch.catalog import Catalog
from nexttouch.engine import DecisionEngine
from nexttouch.engine.choice import explore_probabilities
from nexttouch.model import DecisionModel
from serving import capacity, deadline
from serving.decision_log import DecisionLog
from serving.decisions import Decisions, LogUnavailable


class Store:
    """An online store in memory: the FeatureSource contract of serving.online_features.OnlineFeatures."""

    def __init__(self, rows: dict[str, dict]) -> None:
        self.rows = rows
        self.reads: list[str] = []

    def read(self, customer_id: str, at: datetime | None = None) -> dict | None:
        self.reads.append(customer_id)
        return self.rows.get(customer_id)

    def read_many(self, customer_ids: list[str], at: datetime | None = None) -> tuple[pd.DataFrame, np.ndarray]:
        self.reads.extend(customer_ids)
        known = np.array([c in self.rows for c in customer_ids])
        frame = pd.DataFrame([self.rows.get(c, {}) for c in customer_ids])
        return frame, known


@pytest.fixture
def log(tmp_path: Path):
    log = DecisionLog(tmp_path / "decisions.db")
    yield log
    log.close()


def _decisions(
    catalog: Catalog, model: DecisionModel, rows: dict[str, dict], log: DecisionLog, epsilon: float = 0.0, seed: int = 1
) -> Decisions:
    engine = DecisionEngine(catalog, model, "7", epsilon=epsilon, seed=seed)
    keys = {("app", "app-1"): "C1"}
    return Decisions(engine, Store(rows), lambda s, k: keys.get((s, k)), log, ThreadPoolExecutor(2), 1.0, 5.0)


def decide(decisions: Decisions, *refs: str | dict, at: datetime) -> list[dict]:
    customers = [CustomerRef(customer_id=r) if isinstance(r, str) else CustomerRef(**r) for r in refs]
    return asyncio.run(decisions.decide(customers, at, {"channel": "test"}))


ACTIVE = {"tech_in_30d": 25, "push_opt_in": 1, "call_consent": 1, "region": "north"}
NOON = datetime(2026, 11, 2, 12, tzinfo=UTC)  # outside every quiet hour (customers default to UTC)


def _explore_shares(catalog: Catalog) -> dict[str, float]:
    """P(action | exploring) when every action is eligible: the catalog's cost-aware explore weights."""
    shares = explore_probabilities(catalog, np.ones(len(catalog.names), bool))
    assert shares[catalog.names.index("push")] > shares[catalog.names.index("advisor_call")]  # cost-aware
    return dict(zip(catalog.names, shares, strict=True))


def _logged(log: DecisionLog) -> list[tuple]:
    return log.run(
        lambda tx: tx.execute("SELECT decision_id, customer_id, action, propensity, fallback FROM decisions").fetchall()
    )


def test_active_customer_gets_a_push_with_values_and_reasons(catalog: Catalog, model: DecisionModel, log) -> None:
    (answer,) = decide(_decisions(catalog, model, {"C1": ACTIVE}, log), "C1", at=NOON)
    assert answer["action"] == "push"
    assert (answer["propensity"], answer["explored"], answer["cold_start"]) == (1.0, False, False)
    assert answer["model_version"] == "7" and answer["decided_at"] == NOON
    assert set(answer["values"]) == set(catalog.names)
    for action in catalog.names:
        a = catalog[action]
        assert answer["values"][action] == pytest.approx(
            answer["p_success"][action] * a.value_of_success - a.cost, abs=4e-3
        )  # p is rounded to 4 places
    assert answer["values"]["push"] == max(answer["values"].values())
    uplift = answer["values"]["push"] - answer["values"]["none"]
    assert answer["uplift"]["push"] == round(uplift, 4) and answer["uplift"]["none"] == 0.0
    assert answer["reasons"][0] == f"push adds the most over no contact: {uplift:+.2f} expected"
    assert (
        "25 app visits, likes or push opens in the last 30 days: raises the chance of opening the push"
        in (answer["reasons"])
    )
    # the same reasons for machines, in the same order
    assert [e["text"] for e in answer["explanation"]] == answer["reasons"]
    best, *drivers = answer["explanation"]
    assert best == {
        "code": "best_uplift",
        "action": "push",
        "feature": None,
        "value": answer["uplift"]["push"],
        "effect": None,
        "text": answer["reasons"][0],
    }
    top = next(e for e in drivers if e["feature"] == "tech_in_30d")
    assert (top["code"], top["action"], top["value"]) == ("driver", "push", 25.0) and top["effect"] > 0
    assert len(answer["decision_id"]) == 32
    assert _logged(log) == [(answer["decision_id"], "C1", "push", 1.0, 0)]  # logged before it was returned


def test_no_consent_removes_push_and_none_wins(catalog: Catalog, model: DecisionModel, log) -> None:
    (answer,) = decide(_decisions(catalog, model, {"C1": {**ACTIVE, "push_opt_in": 0}}, log), "C1", at=NOON)
    assert "push" not in answer["eligible"]
    assert answer["action"] == "none"
    assert "push removed: no push opt-in on record" in answer["reasons"]
    # none wins because nothing eligible adds value, not because of a "highest" value of its own
    best = max((a for a in answer["eligible"] if a != "none"), key=answer["uplift"].get)
    gain = answer["uplift"][best]
    assert gain <= 0
    text = f"no contact: no eligible action is expected to add value (best: {best}, {gain:+.2f} over no contact)"
    assert text in answer["reasons"]


def test_unknown_customer_gets_a_flagged_rule_based_answer(catalog: Catalog, model: DecisionModel, log) -> None:
    (answer,) = decide(_decisions(catalog, model, {}, log), "nobody", at=NOON)
    assert (answer["cold_start"], answer["fallback"], answer["action"], answer["propensity"]) == (
        True,
        True,
        "none",
        1.0,
    )
    assert answer["eligible"] == ["none", "event_invite"]  # consent unknown: no push, no call
    assert answer["reasons"][0] == "fallback: no features for this customer"
    assert answer["values"] == {} and answer["p_success"] == {}  # no model score behind a rule
    assert _logged(log) == [(answer["decision_id"], "nobody", "none", 1.0, 1)]


def test_quiet_hours_use_the_request_time_and_defer_a_push(catalog: Catalog, model: DecisionModel, log) -> None:
    night = datetime(2026, 11, 2, 23, tzinfo=UTC)
    (answer,) = decide(_decisions(catalog, model, {"C1": ACTIVE}, log), "C1", at=night)
    assert answer["action"] == "push" and answer["send_at"] == datetime(2026, 11, 3, 8, tzinfo=UTC)
    assert "push deferred by quiet hours 21:00-08:00: send at 08:00 in UTC" in answer["reasons"]
    assert "advisor_call removed: quiet hours 19:00-09:00 (23:00 in UTC)" in answer["reasons"]
    (day,) = decide(_decisions(catalog, model, {"C1": ACTIVE}, log), "C1", at=NOON)
    assert day["send_at"] is None
    strict = Catalog(actions=tuple(a.model_copy(update={"defer_quiet_hours": False}) for a in catalog.actions))
    (dropped,) = decide(_decisions(strict, model, {"C1": ACTIVE}, log), "C1", at=night)
    assert "push" not in dropped["eligible"] and dropped["action"] != "push"
    assert "push removed: quiet hours 21:00-08:00 (23:00 in UTC)" in dropped["reasons"]


def test_exploration_logs_the_probability_of_its_choice(catalog: Catalog, model: DecisionModel, log) -> None:
    unlimited = Catalog(actions=tuple(a.model_copy(update={"capacity": None}) for a in catalog.actions))
    decisions = _decisions(unlimited, model, {"C1": ACTIVE}, log, epsilon=0.4, seed=5)
    one_by_one = [decide(decisions, "C1", at=NOON)[0] for _ in range(300)]
    batch = decide(decisions, *["C1"] * 3000, at=NOON)
    explore = _explore_shares(catalog)
    for answers in (one_by_one, batch):
        explored = [a for a in answers if a["explored"]]
        assert 0.33 < len(explored) / len(answers) < 0.47
        for a in answers:  # epsilon x P(drawn | exploring) + (1 - epsilon) for the best action (push)
            expected = 0.4 * explore[a["action"]] + (0.6 if a["action"] == "push" else 0.0)
            assert a["propensity"] == pytest.approx(expected, abs=1e-6)  # answers round to 6 decimals
    drawn = [a["action"] for a in batch if a["explored"]]
    for action in catalog.names:  # every eligible action is drawn in proportion to its explore weight
        assert drawn.count(action) / len(drawn) == pytest.approx(explore[action], abs=0.04), action


def test_model_must_score_every_catalog_action(catalog: Catalog, model: DecisionModel) -> None:
    partial = DecisionModel(model.booster, model.numeric, model.categorical, ["none", "push"])
    with pytest.raises(ValueError, match="event_invite"):
        DecisionEngine(catalog, partial, "7", epsilon=0.0)


def test_a_source_key_resolves_to_the_customer(catalog: Catalog, model: DecisionModel, log) -> None:
    decisions = _decisions(catalog, model, {"C1": ACTIVE}, log)
    (answer,) = decide(decisions, {"source": {"system": "app", "key": "app-1"}}, at=NOON)
    assert (answer["customer_id"], answer["cold_start"], answer["action"]) == ("C1", False, "push")
    (unknown,) = decide(decisions, {"source": {"system": "crm", "key": "app-1"}}, at=NOON)
    assert (unknown["customer_id"], unknown["cold_start"], unknown["fallback"]) == (None, True, True)
    assert unknown["reasons"][0] == "fallback: unknown source key"
    assert decisions.features.reads == ["C1"]  # an unresolved key never reaches the feature store


def test_a_store_that_fails_gives_rule_based_answers_not_cold_starts(
    catalog: Catalog, model: DecisionModel, log
) -> None:
    decisions = _decisions(catalog, model, {"C1": ACTIVE}, log)

    def broken(*_args: object) -> None:
        raise ConnectionError("store down")

    decisions.features.read = broken  # type: ignore[method-assign]
    decisions.features.read_many = broken  # type: ignore[method-assign]
    for refs in (["C1"], ["C1", "C2"]):
        for a in decide(decisions, *refs, at=NOON):
            assert (a["fallback"], a["cold_start"], a["action"]) == (True, False, "none")
            assert a["reasons"][0] == "fallback: online store error"


def test_exactly_one_identity_is_required() -> None:
    from pydantic import ValidationError

    for body in ({}, {"customer_id": "C1", "source": {"system": "app", "key": "k"}}):
        with pytest.raises(ValidationError, match="exactly one of customer_id or source"):
            CustomerRef.model_validate(body)


CALLER = {"tech_in_30d": 2, "push_opt_in": 0, "call_consent": 1, "region": "north"}


def _prefers_call(catalog: Catalog) -> Catalog:
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


def _used(log: DecisionLog, day: str) -> dict[str, int]:
    return log.run(lambda tx: capacity.used(tx, "advisor_call", day))


def test_used_up_capacity_gives_the_next_best_action_and_says_so(catalog: Catalog, model: DecisionModel, log) -> None:
    rows = {f"C{i}": CALLER for i in range(10)} | {"S1": {**CALLER, "region": "south"}}
    decisions = _decisions(_prefers_call(catalog), model, rows, log)
    answers = [decide(decisions, f"C{i}", at=NOON)[0] for i in range(4)]
    assert [a["action"] for a in answers[:2]] == ["advisor_call", "advisor_call"]
    for a in answers[2:]:
        assert a["action"] != "advisor_call" and "advisor_call" not in a["eligible"]
        assert "advisor_call removed: no capacity left: all 2 per day for this region are taken" in a["reasons"]
        assert a["propensity"] == 1.0  # the policy chose again among what was left
    assert _used(log, "2026-11-02") == {"region=north": 2}
    # A new day has new capacity; another region has its own.
    assert decide(decisions, "C9", at=NOON.replace(day=3))[0]["action"] == "advisor_call"
    assert decide(decisions, "S1", at=NOON)[0]["action"] == "advisor_call"


def test_batch_grants_capacity_to_the_most_valuable_and_falls_back_for_unknowns(
    catalog: Catalog, model: DecisionModel, log
) -> None:
    rows = {c: {**CALLER, "tech_in_30d": float(t)} for c, t in zip("ABCDE", (1, 2, 3, 4, 5), strict=True)}
    decisions = _decisions(_prefers_call(catalog), model, rows, log)
    answers = decide(decisions, "A", "B", "C", "D", "E", "F", at=NOON)
    calls = [a["customer_id"] for a in answers if a["action"] == "advisor_call"]
    assert len(calls) == 2
    assert _used(log, "2026-11-02") == {"region=north": 2}
    best_two = sorted(answers[:5], key=lambda a: -a["values"]["advisor_call"])[:2]
    assert sorted(calls) == sorted(a["customer_id"] for a in best_two)
    for a in answers[:5]:
        if a["action"] != "advisor_call":
            assert "advisor_call removed: no capacity left: all 2 per day for this region are taken" in a["reasons"]
    assert (answers[5]["fallback"], answers[5]["action"], answers[5]["cold_start"]) == (True, "none", True)
    assert len(_logged(log)) == 6


MIXED_AT = datetime(2026, 11, 2, 20, 30, tzinfo=UTC)  # night in Europe, office hours in America


def _mixed_rows(at: datetime = MIXED_AT) -> dict[str, dict]:
    """80 customers that between them break every contact rule, in several time zones (one unknown)."""
    rng = np.random.default_rng(9)
    zones = ["Europe/Paris", "America/New_York", "Asia/Tokyo", "Mars/Olympus", None]
    return {
        f"C{i}": {
            "tech_in_30d": float(rng.integers(0, 30)),
            "push_opt_in": float(rng.integers(0, 2)),
            "call_consent": float(rng.integers(0, 2)),
            "region": rng.choice(["north", "south", None]),
            "time_zone": zones[i % len(zones)],
            "tech_out_7d": float(rng.integers(0, 5)),
            "low_out_30d": float(rng.integers(0, 4)),
            "last_low_at": pd.Timestamp(at) - pd.Timedelta(days=float(rng.uniform(0, 20))),
            "days_since_high": float(rng.uniform(0, 30)),
        }
        for i in range(80)
    }


def test_batch_decides_like_one_by_one(catalog: Catalog, model: DecisionModel, tmp_path: Path) -> None:
    """Every contact rule and time zone: a batch answers each customer as /decide answers them alone."""
    at, rows = MIXED_AT, _mixed_rows()
    ids = list(rows)
    batch = decide(_decisions(catalog, model, rows, DecisionLog(tmp_path / "a.db")), *ids, at=at)
    alone_decisions = _decisions(catalog, model, rows, DecisionLog(tmp_path / "b.db"))
    single = [decide(alone_decisions, c, at=at)[0] for c in ids]
    kinds = {e["code"] for a in batch for e in a["explanation"]}
    rules = {"no_consent", "quiet_hours", "unknown_time_zone", "frequency_cap", "cool_down"}
    assert kinds >= rules | {"driver"}, kinds  # every kind of rule occurs, and features are quoted
    for b, s in zip(batch, single, strict=True):  # every field but the decision's own id
        assert {**b, "decision_id": ""} == {**s, "decision_id": ""}
    assert len({b["decision_id"] for b in batch}) == 80


def test_concurrent_requests_are_decided_together_as_each_alone(
    catalog: Catalog, model: DecisionModel, tmp_path: Path
) -> None:
    """Single requests that arrive while others are read and scored share one draft and one log
    operation; each still gets the answer it gets alone, and the log keeps each request's context."""
    at, rows = MIXED_AT, _mixed_rows()
    refs = [*rows, "nobody", {"source": {"system": "app", "key": "no-such-key"}}]
    together = _decisions(catalog, model, rows, DecisionLog(tmp_path / "a.db"))
    groups: list[int] = []
    draft = together.engine.draft
    together.engine.draft = lambda cids, *a, **k: groups.append(len(cids)) or draft(cids, *a, **k)  # type: ignore[method-assign]

    async def concurrently() -> list[dict]:
        customers = [CustomerRef(customer_id=r) if isinstance(r, str) else CustomerRef(**r) for r in refs]
        calls = [together.decide([c], at, {"request": str(i)}) for i, c in enumerate(customers)]
        return [a for (a,) in await asyncio.gather(*calls)]

    answers = asyncio.run(concurrently())
    assert sum(groups) == len(refs) and len(groups) < len(refs) and max(groups) > 1, groups
    alone_decisions = _decisions(catalog, model, rows, DecisionLog(tmp_path / "b.db"))
    alone = [decide(alone_decisions, r, at=at)[0] for r in refs]
    for a, b in zip(answers, alone, strict=True):  # every field but the decision's own id
        assert {**a, "decision_id": ""} == {**b, "decision_id": ""}
    assert answers[-2]["fallback"] and answers[-1]["fallback"]
    contexts = dict(together.log.run(lambda tx: tx.execute("SELECT decision_id, context FROM decisions").fetchall()))
    assert [json.loads(contexts[a["decision_id"]]) for a in answers] == [{"request": str(i)} for i in range(len(refs))]


def test_a_group_whose_log_cannot_commit_answers_every_request_unavailable(
    catalog: Catalog, model: DecisionModel, tmp_path: Path
) -> None:
    """Another process holds the log's write lock past the requests' deadlines: every request of the group
    is refused (a 503), none of their decisions is committed later."""
    path = tmp_path / "d.db"
    log = DecisionLog(path, margin_s=0.5)
    decisions = _decisions(catalog, model, {"C1": ACTIVE, "C2": ACTIVE}, log)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")

    async def one(customer: str) -> list[dict]:
        deadline.start(1.5)  # as the request timeout sets it, in each request's own context
        return await decisions.decide([CustomerRef(customer_id=customer)], NOON)

    async def concurrently() -> list[object]:
        return await asyncio.gather(*(one(c) for c in ("C1", "C2", "C1")), return_exceptions=True)

    try:
        assert all(isinstance(r, LogUnavailable) for r in asyncio.run(concurrently()))
    finally:
        other.execute("COMMIT")
        other.close()
    assert _logged(log) == []
    log.close()


def test_feedback_changes_the_customers_next_decision_at_once(catalog: Catalog, model: DecisionModel, log) -> None:
    """Per-customer learning: the outcome is learnt in its own transaction, the next decision reads it."""
    from serving import affinity

    dear = Catalog(
        actions=tuple(a.model_copy(update={"cost": 20.0}) if a.name == "push" else a for a in catalog.actions)
    )
    decisions = _decisions(dear, model, {"C1": ACTIVE, "C2": ACTIVE}, log)
    decisions.engine = DecisionEngine(dear, model, "7", epsilon=0.0, seed=3, prior_sd=2.0)
    for _ in range(6):
        (answer,) = decide(decisions, "C1", at=NOON)
        if answer["action"] != "push":
            break
        assert log.run(lambda tx, a=answer: affinity.learn(tx, dear, a["decision_id"], 0.0, decisions.engine.prior_sd))
    assert answer["action"] != "push"
    assert any("own responses" in r for r in answer["reasons"])
    assert decide(decisions, "C2", at=NOON)[0]["action"] == "push"  # another customer is not affected
    # the posterior counts the outcomes it has learnt
    seen = log.run(lambda tx: tx.execute("SELECT outcomes FROM affinity WHERE customer_id = 'C1'").fetchone()[0])
    assert seen >= 2


def test_a_deferred_decision_is_logged_with_its_send_time(catalog: Catalog, model: DecisionModel, log) -> None:
    night = datetime(2026, 11, 2, 23, tzinfo=UTC)
    (answer,) = decide(_decisions(catalog, model, {"C1": ACTIVE}, log), "C1", at=night)
    logged = log.run(lambda tx: tx.execute("SELECT send_at FROM decisions").fetchall())
    assert answer["send_at"] is not None and logged == [(answer["send_at"].isoformat(),)]


def test_a_key_of_an_unknown_system_is_refused_not_a_cold_start(catalog: Catalog, model: DecisionModel, log) -> None:
    from serving.decisions import UnknownSystem

    decisions = _decisions(catalog, model, {"C1": ACTIVE}, log)
    decisions.systems = frozenset({"api", "app", "crm"})
    with pytest.raises(UnknownSystem, match=r"unknown source system 'pos'; known systems: api, app, crm"):
        decide(decisions, {"source": {"system": "pos", "key": "x1"}}, at=NOON)
    (cold,) = decide(decisions, {"source": {"system": "crm", "key": "x1"}}, at=NOON)  # known system, unknown key
    assert (cold["cold_start"], cold["fallback"]) == (True, True)
    assert _logged(log) == [(cold["decision_id"], None, "none", 1.0, 1)]  # the refused request left no trace
