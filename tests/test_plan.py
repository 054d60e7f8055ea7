"""The nightly plan: global capacity assignment, exact propensities, any catalog, the CLI end to end."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from benchmarks.baselines import first_come_first_served
from nexttouch.catalog import Capacity, Catalog, load_catalog
from nexttouch.columns import from_frame
from nexttouch.engine.choice import explore_probabilities, net_values
from nexttouch.engine.rules import check
from nexttouch.plan import ASSIGNED, CAPACITY_FULL, plan_actions, plan_frame
from nexttouch.settings import Settings
from tests.conftest import END

NOON = datetime(2026, 11, 2, 12, tzinfo=UTC)
EMAIL_CATALOG = Path(__file__).parent / "data" / "email_catalog.yaml"


def eligible_mask(catalog: Catalog, frame: pd.DataFrame, now: datetime) -> np.ndarray:
    return check(catalog, from_frame(frame), len(frame), now).eligible


def _limits(catalog: Catalog, **limits: int) -> Catalog:
    """The catalog with other capacity limits (per region unless the action had none)."""
    actions = []
    for a in catalog.actions:
        if a.name in limits:
            cap = a.capacity or Capacity(limit=0, period="day", per="region")
            a = a.model_copy(update={"capacity": cap.model_copy(update={"limit": limits[a.name]})})
        actions.append(a)
    return catalog.model_copy(update={"actions": tuple(actions)})


def _customers(n: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:07d}" for i in range(n)],
            "region": rng.choice(["north", "south", "east", "west"], n),
            "push_opt_in": rng.integers(0, 2, n),
            "call_consent": (rng.random(n) < 0.7).astype(int),
            "time_zone": "Europe/Berlin",
            "tech_out_7d": rng.integers(0, 5, n),
        }
    )


def test_scarce_slot_goes_where_it_adds_most_not_to_who_comes_first(catalog: Catalog) -> None:
    one_call = _limits(catalog, advisor_call=1, event_invite=0)
    frame = _customers(2, np.random.default_rng(0)).assign(region="north", push_opt_in=1, call_consent=1, tech_out_7d=0)
    # first customer: the call adds 20 - 17.95 over a push; second customer: 14 - 6 over none
    p = np.array([[0.1, 0.30, 0.0, 0.50], [0.1, 0.05, 0.0, 0.40]])
    plan = plan_actions(one_call, frame, p, NOON)
    names = np.array(one_call.names)
    assert names[plan.action].tolist() == ["push", "advisor_call"]
    assert plan.why.tolist() == [CAPACITY_FULL, ASSIGNED]
    fcfs = first_come_first_served(one_call, frame, p, NOON)
    assert names[fcfs].tolist() == ["advisor_call", "none"]
    values = net_values(one_call, p)
    assert plan.total_value() == pytest.approx(values[0, 1] + values[1, 3])
    assert plan.total_value() - values[[0, 1], fcfs].sum() == pytest.approx(8.0 - 2.05)
    reasons = plan_frame(one_call, frame, plan)["reasons"].tolist()
    assert reasons[0].startswith("push: advisor_call would add more, but its capacity went to")
    assert reasons[1].startswith("advisor_call: scarce action assigned where it adds most")


def test_plan_gives_each_action_s_uplift_over_no_contact(catalog: Catalog) -> None:
    """Values count each action's own success touch; the plan's comparable numbers are value - value(none)."""
    frame = _customers(3, np.random.default_rng(0)).assign(region="north", push_opt_in=1, call_consent=1, tech_out_7d=0)
    frame.loc[2, ["push_opt_in", "call_consent"]] = 0
    p = np.array([[0.1, 0.30, 0.0, 0.5], [0.5, 0.05, 0.0, 0.1], [0.5, 0.3, 0.0, 0.5]])
    table = plan_frame(catalog, frame, plan_actions(catalog, frame, p, NOON))
    values = net_values(catalog, p)
    for j, name in enumerate(catalog.names):
        np.testing.assert_allclose(table[f"uplift_{name}"], values[:, j] - values[:, 0], atol=1e-12)
    assert table["action"].tolist() == ["advisor_call", "none", "none"]
    np.testing.assert_allclose(table["uplift"], [values[0, 3] - values[0, 0], 0.0, 0.0], atol=1e-12)
    assert table["uplift_none"].tolist() == [0.0, 0.0, 0.0]
    assert table["reasons"].tolist()[1] == "none: no eligible action is expected to add value over no contact"
    assert table["reasons"].tolist()[2].startswith("none: no eligible action is expected")  # the invite is eligible


def test_plan_is_optimal_on_small_instances(catalog: Catalog) -> None:
    """Brute force over every assignment: the pruned LP finds the best total value within the limits."""
    scarce = _limits(catalog, advisor_call=1, event_invite=1)  # 2 of ~4 per region enter the LP
    rng = np.random.default_rng(5)
    for _ in range(20):
        n = 8
        frame = _customers(n, rng).assign(region=rng.choice(["north", "south"], n))
        p = rng.random((n, 4)) * np.array([0.3, 0.3, 0.6, 0.9])
        plan = plan_actions(scarce, frame, p, NOON)
        values = np.where(eligible_mask(scarce, frame, NOON), net_values(scarce, p), -np.inf)
        combos = np.array(list(itertools.product(range(4), repeat=n)))
        total = values[np.arange(n), combos].sum(axis=1)  # -inf where an action is ineligible
        north = (frame["region"] == "north").to_numpy()
        for j, limit in ((2, 1), (3, 1)):
            for region in (north, ~north):
                total[((combos == j) & region).sum(axis=1) > limit] = -np.inf
        best = total.max()
        assert plan.total_value() == pytest.approx(best)


def test_capacity_is_never_exceeded_and_plan_beats_first_come_first_served(catalog: Catalog) -> None:
    rng = np.random.default_rng(1)
    n = 20_000
    frame = _customers(n, rng)
    frame.loc[:99, "region"] = None  # no region: no share of a per-region capacity
    p = rng.beta(2, 8, (n, 4)) * np.array([1.0, 1.0, 1.5, 2.5])
    plan = plan_actions(catalog, frame, p, NOON, epsilon=0.1, seed=3)
    table = plan_frame(catalog, frame, plan)
    counts = table.groupby(["action", "region"], observed=True, dropna=False).size()
    for name in ("event_invite", "advisor_call"):
        limit = catalog[name].capacity.limit
        for region in ("north", "south", "east", "west"):
            assert 0 < counts[(name, region)] <= limit
        assert (name, np.nan) not in counts.index
    assert counts[("advisor_call", "north")] < catalog["advisor_call"].capacity.limit  # explorers left theirs
    eligible = eligible_mask(catalog, frame, NOON)
    assert eligible[np.arange(n), plan.action].all()
    no_explore = plan_actions(catalog, frame, p, NOON)
    assert (no_explore.action == no_explore.planned).all()
    fcfs = first_come_first_served(catalog, frame, p, NOON)
    fcfs_value = net_values(catalog, p)[np.arange(n), fcfs].sum()
    assert no_explore.total_value() > 1.01 * fcfs_value
    assert set(table.columns) >= {"customer_id", "action", "propensity", "value_advisor_call", "reasons"}


def test_plan_propensity_is_the_probability_of_its_action(catalog: Catalog) -> None:
    """Many copies of a few customers in one plan: each action's share is its logged propensity."""
    weights = {"none": 1.0, "push": 1.0, "event_invite": 0.3, "advisor_call": 0.1}
    weighted = catalog.model_copy(
        update={"actions": tuple(a.model_copy(update={"explore_weight": weights[a.name]}) for a in catalog.actions)}
    )
    rng = np.random.default_rng(2)
    templates = _customers(6, rng).assign(push_opt_in=[1, 1, 0, 1, 1, 0], tech_out_7d=0, region="north")
    copies = 4_000
    frame = templates.loc[np.repeat(np.arange(6), copies)].reset_index(drop=True)
    p = np.repeat(rng.random((6, 4)), copies, axis=0)
    plan = plan_actions(weighted, frame, p, NOON, epsilon=0.3, seed=9)
    table = pd.DataFrame(
        {"template": np.repeat(np.arange(6), copies), "planned": plan.planned, "action": plan.action}
    ).assign(propensity=plan.propensity)
    checked = 0
    for (_, _), group in table.groupby(["template", "planned"]):
        if len(group) < 1_000:  # a few copies got a scarce slot: too few to measure a share
            continue
        for _action, rows in group.groupby("action"):
            assert rows["propensity"].nunique() == 1  # one propensity per (customer, plan, action)
            assert len(rows) / len(group) == pytest.approx(rows["propensity"].iloc[0], abs=0.02)
            checked += 1
    assert checked >= 10  # every (customer, plan) with 1000+ copies, every action drawn
    assert plan.explored.mean() == pytest.approx(0.3, abs=0.01)


def test_another_catalog_plans_with_no_code_change() -> None:
    email = load_catalog(EMAIL_CATALOG)
    rng = np.random.default_rng(4)
    frame = _customers(500, rng).drop(columns=["region"])
    p = rng.random((500, 3)) * 0.3
    plan = plan_actions(email, frame, p, NOON, epsilon=0.05)
    table = plan_frame(email, frame, plan)
    assert set(table["action"]) <= {"none", "email_a", "email_b"}
    assert (table.loc[frame["push_opt_in"] == 0, "action"] != "email_b").all()
    # and with a capacity on a column of its own choosing
    capped = email.model_copy(
        update={
            "actions": tuple(
                a.model_copy(update={"capacity": Capacity(limit=7, period="day", per="segment")})
                if a.name == "email_b"
                else a
                for a in email.actions
            )
        }
    )
    frame["segment"] = rng.choice(["a", "b"], 500)
    table = plan_frame(capped, frame, plan_actions(capped, frame, p * [1, 1, 4], NOON))
    assert table.loc[table["action"] == "email_b"].groupby("segment").size().tolist() == [7, 7]


@pytest.mark.slow
def test_plan_command_on_the_built_project(built: Settings, tmp_path: Path) -> None:
    from nexttouch.cli import app

    out = tmp_path / "plan.csv"
    at = END.replace(hour=17).strftime("%Y-%m-%dT%H:%M:%S")  # 12:00-9:00 across the US zones: no quiet hours
    project = ["--project-dir", str(built.project_dir)]
    result = CliRunner().invoke(app, ["plan", *project, "--at", at, "--out", str(out), "--take-capacity"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    customers = pd.read_parquet(built.raw_dir / "customers.parquet")
    assert sorted(table["customer_id"]) == sorted(customers["customer_id"])
    assert f"planned {len(customers):,} customers" in result.output
    explored = int(table["explored"].sum())
    assert explored > 0 and (
        f"{explored:,} customers explored at random (epsilon 0.05); to evaluate or compare plans, plan with --epsilon 0"
    ) in " ".join(result.output.split())
    assert table["decision_id"].is_unique and table["decision_id"].str.startswith("plan-20261101T170000-").all()
    assert (pd.to_datetime(table["decided_at"]) == pd.Timestamp(END.replace(hour=17))).all()
    assert table["model_version"].nunique() == 1
    assert (table["propensity"] > 0).all() and (table["propensity"] <= 1).all()
    counts = table.groupby(["action", "region"]).size()
    catalog = load_catalog()
    for name in ("event_invite", "advisor_call"):
        assert counts.filter(like=name).le(catalog[name].capacity.limit).all()
    assert {"push", "none"} <= set(table["action"])
    chosen = table.apply(lambda r: r[f"value_{r['action']}"], axis=1)
    assert (chosen[~table["explored"]] >= table.loc[~table["explored"], "value_none"] - 1e-9).all()

    # the slots were taken in the service's ledger: a second plan for the same day has none left to give
    from nexttouch.jobs.plan import ledger_used

    held = table[~table["explored"] & table["action"].isin(["event_invite", "advisor_call"])]
    taken = {(a, f"region={r}"): n for (a, r), n in held.groupby(["action", "region"]).size().items()}
    assert ledger_used(built, catalog, END.replace(hour=17)) == taken
    again = CliRunner().invoke(app, ["plan", *project, "--at", at, "--out", str(out)])
    assert again.exit_code == 0, again.output
    second = pd.read_csv(out)
    for (action, bucket), n in taken.items():
        left = catalog[action].capacity.limit - n
        region = bucket.split("=")[1]
        assert ((second["action"] == action) & (second["region"] == region)).sum() <= left


@pytest.mark.slow
def test_plan_reads_what_the_online_store_serves(built: Settings) -> None:
    """The latest offline rows + recency are the online features, so eligibility agrees with the service's."""
    from nexttouch.columns import from_row
    from nexttouch.jobs.plan import latest_features
    from serving.online_features import OnlineFeatures

    catalog = load_catalog()
    now = END.replace(hour=23, minute=30)
    frame = latest_features(built, now)
    mask = eligible_mask(catalog, frame, now)
    online = OnlineFeatures(built)
    stamps = 0
    for i in range(0, len(frame), 8):
        row = online.read(frame.at[i, "customer_id"], now)
        for name, value in row.items():
            offline = frame.at[i, name]
            if value is None:
                assert pd.isna(offline), name
            elif isinstance(value, float):
                assert value == pytest.approx(offline, rel=1e-6, abs=1e-6), name  # float32 online
            else:
                assert value == offline, name
            stamps += isinstance(value, datetime)
        assert check(catalog, from_row(row), 1, now).eligible[0].tolist() == mask[i].tolist()
    assert stamps > 0  # last-touch times were compared too


def test_plan_spends_only_what_the_ledger_has_left_and_takes_its_slots(catalog: Catalog, tmp_path: Path) -> None:
    """Capacity the service used is not planned again; taken slots make the service give out only the rest."""
    from nexttouch.jobs.plan import ledger_used, reserve
    from nexttouch.settings import load_settings
    from serving.capacity import take
    from serving.decision_log import DecisionLog

    settings = load_settings(project_dir=tmp_path)
    small = _limits(catalog, advisor_call=5, event_invite=0)
    call = small["advisor_call"]
    period = call.capacity.period_of(NOON)
    log = DecisionLog.open(settings)
    assert log.run(lambda tx: take(tx, call, period, "region=north", 2)) == 2  # the service called 2 today
    log.close()

    rng = np.random.default_rng(8)
    frame = _customers(400, rng).assign(call_consent=1)
    p = rng.random((400, 4)) * np.array([0.2, 0.2, 0.2, 0.9])
    used = ledger_used(settings, small, NOON)
    assert used == {("advisor_call", "region=north"): 2}
    plan = plan_actions(small, frame, p, NOON, used=used)
    calls = pd.Series(frame["region"].to_numpy()[plan.action == 3]).value_counts()
    assert calls.to_dict() == {"north": 3, "south": 5, "east": 5, "west": 5}

    # the service takes one more north call between the plan's read and its reservation
    log = DecisionLog.open(settings)
    log.run(lambda tx: take(tx, call, period, "region=north", 1))
    log.close()
    holders = np.flatnonzero((plan.action == 3) & (frame["region"] == "north").to_numpy())
    weakest = holders[np.argmin(plan.values[holders, 3] - plan.values[holders, plan.fallback[holders]])]
    assert reserve(settings, small, frame, plan, NOON) == 1
    assert plan.action[weakest] == plan.fallback[weakest] and plan.blocked[weakest] == 3
    assert plan.propensity[weakest] == pytest.approx(  # no exploration here: 1
        plan.epsilon[weakest] * plan.explore_p[weakest, plan.fallback[weakest]] + 1 - plan.epsilon[weakest]
    )
    assert ledger_used(settings, small, NOON) == {("advisor_call", f"region={r}"): 5 for r in calls.index}
    log = DecisionLog.open(settings)
    assert log.run(lambda tx: take(tx, call, period, "region=west", 1)) == 0  # nothing left for the service
    log.close()


def test_a_customer_who_loses_a_slot_gets_the_fallback_with_its_exact_propensity(catalog: Catalog) -> None:
    from nexttouch.plan import demote

    rng = np.random.default_rng(6)
    frame = _customers(3_000, rng).assign(call_consent=1)
    p = rng.random((3_000, 4)) * np.array([0.2, 0.2, 0.3, 0.9])
    plan = plan_actions(_limits(catalog, advisor_call=10), frame, p, NOON, epsilon=0.3, seed=4)
    holders = np.flatnonzero(plan.action == 3)[:4]
    explorer = np.flatnonzero(plan.explored)[:1]
    before = plan.action[explorer].copy(), plan.propensity[explorer].copy()
    demote(plan, np.concatenate([holders, explorer]))
    non_scarce = eligible_mask(catalog, frame, NOON) & np.array([True, True, False, False])
    q = explore_probabilities(catalog, non_scarce)
    np.testing.assert_array_equal(plan.action[holders], plan.fallback[holders])
    np.testing.assert_allclose(plan.propensity[holders], 0.3 * q[holders, plan.fallback[holders]] + 0.7)
    assert (plan.action[explorer], plan.propensity[explorer]) == before  # explorers held no slot
