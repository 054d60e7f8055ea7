"""Evaluation on a synthetic decision log with a known response model (no Feast: seconds, not minutes).

The log has the columns of a real training set (features by name, action, propensity, outcome,
decided_at) and a ground truth like data/simulation/decision_truth.parquet, so every estimate can
be checked against the true value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nexttouch.catalog import Catalog
from nexttouch.engine.choice import net_values
from nexttouch.model import Calibration, DecisionModel
from training.evaluate import Evaluation, evaluate, expected_calibration_error, rule_actions
from training.train import MONOTONE_INCREASING, TrainResult, fit

EPS = 0.3


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def synthetic_log(catalog: Catalog, n: int = 30_000, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training-set-like decision log, ground truth with p_<action> and eligible_<action>)."""
    rng = np.random.default_rng(seed)
    engagement = rng.normal(size=n)
    online = rng.poisson(np.exp(1.5 + 0.5 * engagement))
    low90 = rng.poisson(np.exp(-0.5 + 0.6 * engagement))
    low30 = rng.binomial(low90, 0.4)
    premium = rng.random(n) < 0.25
    frame = pd.DataFrame(
        {
            "tech_in_30d": online.astype(float),
            "low_in_90d": low90.astype(float),
            "low_in_30d": low30.astype(float),
            "low_in_7d": rng.binomial(low30, 0.3).astype(float),
            "event_attend_rate_90d": rng.beta(2, 3, n),
            "high_in_90d": rng.poisson(np.where(premium, 1.5, 0.1)).astype(float),
            "noise": rng.normal(size=n),
            "segment": np.where(premium, "premium", "standard"),
            "push_opt_in": (rng.random(n) < 0.7).astype(np.int64),
            "call_consent": (rng.random(n) < 0.5).astype(np.int64),
        }
    )
    base = -2.0 + 0.3 * engagement + 0.2 * np.log1p(online) + 0.3 * np.log1p(low90)
    effect = {
        "none": 0.0,
        "push": 0.1 + 0.25 * np.log1p(online) - 0.5,
        "event_invite": -0.6 + 1.8 * frame["event_attend_rate_90d"].to_numpy() + 0.3 * np.log1p(low30),
        "advisor_call": -0.4 + 1.3 * premium,
    }
    p = np.column_stack([_sigmoid(base + effect[a]) for a in catalog.names])
    eligible = np.ones((n, len(catalog.names)), bool)
    for j, action in enumerate(catalog.actions):
        if action.requires:
            eligible[:, j] = frame[action.requires].to_numpy() == 1
    rule = rule_actions(catalog, frame, eligible)  # the logging policy: tiering + 30% exploration
    pick = (rng.random(n) * eligible.sum(axis=1)).astype(int)
    random_choice = np.argmax(eligible & (np.cumsum(eligible, axis=1) - 1 == pick[:, None]), axis=1)
    explore = rng.random(n) < EPS
    chosen = np.where(explore, random_choice, rule)
    propensity = EPS / eligible.sum(axis=1) + (1 - EPS) * (chosen == rule)
    ids = [f"d{i:07d}" for i in range(n)]
    log = frame.assign(
        decision_id=ids,
        customer_id=[f"C{i % 5000:07d}" for i in range(n)],
        action=np.array(catalog.names, dtype=object)[chosen],
        propensity=propensity,
        outcome=(rng.random(n) < p[np.arange(n), chosen]).astype(float),
        decided_at=pd.Timestamp("2026-05-01", tz="UTC") + pd.to_timedelta(np.arange(n) * 7, unit="min"),
    )
    truth = pd.DataFrame(
        {
            "decision_id": ids,
            **{f"p_{a}": p[:, j] for j, a in enumerate(catalog.names)},
            **{f"eligible_{a}": eligible[:, j] for j, a in enumerate(catalog.names)},
        }
    )
    return log, truth


@pytest.fixture(scope="module")
def trained(catalog: Catalog) -> tuple[TrainResult, pd.DataFrame]:
    log, truth = synthetic_log(catalog)
    return fit(log, catalog), truth


@pytest.fixture(scope="module")
def evaluation(trained: tuple[TrainResult, pd.DataFrame], catalog: Catalog, tmp_path_factory) -> Evaluation:
    result, truth = trained
    fit_data = pd.concat([result.train, result.valid])
    return evaluate(
        result.model, result.test, catalog, truth=truth, out_dir=tmp_path_factory.mktemp("ev"), fit_data=fit_data
    )


def test_quality_per_action_and_files(evaluation: Evaluation, catalog: Catalog) -> None:
    pa = evaluation.per_action.set_index("action")
    assert list(pa.index) == catalog.names
    assert (pa["auc"] > 0.55).all(), pa
    assert (pa["ece"] < 0.06).all(), pa  # ~400 advisor calls: sampling noise alone is ~0.04
    assert pa.loc["event_invite", "qini"] > 0  # ranking by predicted uplift beats random targeting
    assert pa.loc["advisor_call", "qini"] > 0
    m = evaluation.metrics
    for key in ("test_auc", "test_logloss", "test_ece", "test_auc_push", "test_ece_advisor_call", "test_qini_push"):
        assert np.isfinite(m[key]), key
    names = sorted(p.name for p in evaluation.artifacts)
    assert names == sorted(
        [
            "feature_importance.png",
            "calibration.png",
            "uplift.png",
            "policy_value.png",
            "report.md",
            "policy_values.csv",
        ]
    )
    assert all(p.stat().st_size > 1000 for p in evaluation.artifacts if p.suffix == ".png")
    report = next(p for p in evaluation.artifacts if p.name == "report.md").read_text()
    assert "| new |" in report and "| best_single |" in report and "| new vs best_single |" in report
    assert "Share of the oracle's margin over the best single action" in report


def test_policy_values_against_the_truth(evaluation: Evaluation) -> None:
    pv = evaluation.policies
    assert set(pv) == {"new", "logging", "best_single", "rules", "random", "oracle", "ceiling"}  # no champion given
    for name in ("new", "logging", "best_single", "rules", "random", "oracle", "ceiling"):
        v = pv[name]
        assert v.dr_low <= v.dr <= v.dr_high
        assert abs(v.dr - v.true) < v.dr_high - v.dr_low, (name, v)  # estimate vs truth: ~4 standard errors
    assert pv["oracle"].true >= pv["ceiling"].true > pv["new"].true > pv["best_single"].true
    assert pv["best_single"].true > pv["rules"].true > pv["random"].true
    m = evaluation.metrics
    assert 0 < m["share_of_oracle_margin_new"] < m["share_of_oracle_margin_ceiling"] <= 1
    margin = pv["oracle"].true - pv["best_single"].true
    assert m["share_of_oracle_margin_new"] == pytest.approx((pv["new"].true - pv["best_single"].true) / margin)


def test_the_best_single_action_and_the_paired_comparison(evaluation: Evaluation, catalog: Catalog) -> None:
    """The best single action takes the action of highest constant value wherever it is allowed; the
    paired difference with it covers the true difference."""
    values = evaluation.single_values
    assert set(values) == set(catalog.names) and evaluation.best_single == max(values, key=values.get)
    chosen = evaluation.choices["best_single"].argmax(axis=1)
    order = sorted(values, key=values.get, reverse=True)
    first = catalog.names.index(order[0])
    assert (chosen == first).mean() > 0.5
    ranks = np.array([order.index(catalog.names[j]) for j in chosen])
    assert ranks.max() <= order.index("none")  # below none's constant value, never taken
    pair, pv = evaluation.paired["new_vs_best_single"], evaluation.policies
    true_diff = pv["new"].true - pv["best_single"].true
    assert pair.low <= true_diff <= pair.high, (pair, true_diff)
    assert 0 < pair.differ < 1 and pair.customers == 4_500  # the test period's customers
    assert evaluation.metrics["paired_new_vs_best_single_diff"] == pair.diff


def test_rules_are_catalog_generic_and_survive_missing_columns() -> None:
    from nexttouch.catalog import Action, Catalog

    mail = Catalog(
        actions=(
            Action(name="none", tier="none", cost=0, value_of_success=1),
            Action(name="letter", tier="tech", cost=0.5, value_of_success=1),
            Action(name="mail_a", tier="tech", cost=0.01, value_of_success=1),
            Action(name="visit", tier="high", cost=3, value_of_success=1),
        )
    )
    frame = pd.DataFrame({"low_in_90d": [1.0, 1.0, 0.0], "high_in_90d": [2.0, 2.0, 5.0]})
    mask = np.ones((3, 4), bool)
    mask[1, 3] = False  # the visit is not allowed for the second customer
    assert [mail.names[j] for j in rule_actions(mail, frame, mask)] == ["visit", "mail_a", "mail_a"]
    bare = pd.DataFrame(index=range(3))  # a brand without touch features: the cheapest tech touch for all
    assert [mail.names[j] for j in rule_actions(mail, bare, mask)] == ["mail_a"] * 3


def test_policies_respect_consent(trained: tuple[TrainResult, pd.DataFrame], catalog: Catalog) -> None:
    result, truth = trained
    test = result.test.assign(push_opt_in=0, call_consent=0)
    ev = evaluate(result.model, test, catalog, truth=truth, n_boot=20)
    for name in ("new", "best_single", "rules", "random", "oracle"):
        taken = ev.choices[name]
        assert set(np.flatnonzero(taken.sum(axis=0))) <= {catalog.names.index(a) for a in ("none", "event_invite")}


def test_champion_is_evaluated_like_the_new_model(trained, catalog: Catalog) -> None:
    result, _ = trained
    ev = evaluate(result.model, result.test, catalog, champion=result.model, n_boot=20)
    assert ev.policies["champion"] == ev.policies["new"]
    assert "oracle" not in ev.policies and ev.policies["new"].true is None
    same = ev.paired["new_vs_champion"]
    assert (same.diff, same.low, same.high, same.differ) == (0.0, 0.0, 0.0, 0.0)
    assert ev.paired["champion_vs_best_single"] == ev.paired["new_vs_best_single"]


def test_more_event_attendance_never_lowers_the_invite_score(trained, catalog: Catalog) -> None:
    model = trained[0].model
    rows = trained[0].test.head(2_000)
    j = model.actions.index("event_invite")
    before = model.predict_all(rows)[:, j]
    for col in MONOTONE_INCREASING:
        if col in rows:
            more = rows.assign(**{col: rows[col] + (0.3 if col.endswith("rate_90d") else 3)})
            after = model.predict_all(more)[:, j]
            assert (after >= before - 1e-12).all(), col
    assert model.predict_all(rows.assign(low_in_30d=rows["low_in_30d"] + 5))[:, j].mean() > before.mean()


def test_irrelevant_columns_do_not_change_decisions(trained, catalog: Catalog) -> None:
    result, _ = trained
    rows = result.test.head(3_000).reset_index(drop=True)
    rng = np.random.default_rng(0)
    shuffled = rows.assign(
        customer_id=rng.permutation(rows["customer_id"].to_numpy()),
        decided_at=rng.permutation(rows["decided_at"].to_numpy()),
        unknown=rng.normal(size=len(rows)),
    )[rng.permutation([*rows.columns.tolist(), "unknown"])]
    assert np.array_equal(result.model.predict_all(rows), result.model.predict_all(shuffled))
    # A pure-noise feature the model may have split on: scores barely move, and the decisions that
    # flip were near-ties (push vs none differ by cents), so almost no value is lost.
    noisy = rows.assign(noise=rng.permutation(rows["noise"].to_numpy()))
    p0, p1 = result.model.predict_all(rows), result.model.predict_all(noisy)
    assert np.abs(p1 - p0).mean() < 0.25 * p0.std(axis=0).min()
    v0, v1 = net_values(catalog, p0), net_values(catalog, p1)
    best, taken = v0.max(axis=1), v0[np.arange(len(rows)), v1.argmax(axis=1)]
    assert (best - taken).mean() < 0.005 * best.mean()


def test_calibration_repairs_a_distorted_score() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0.02, 0.6, 20_000)
    y = (rng.random(len(p)) < p).astype(float)
    raw = p**1.8  # a booster that is systematically under-confident in the middle
    action = np.where(rng.random(len(p)) < 0.5, "a", "b")
    for method in ("sigmoid", "isotonic"):
        cal = Calibration.fit(method, raw, y, action, ["a", "b"])
        fixed = cal.apply(np.column_stack([raw, raw]), ["a", "b"])[:, 0]
        assert expected_calibration_error(fixed, y) < 0.3 * expected_calibration_error(raw, y), method
        assert (np.diff(fixed[np.argsort(raw)]) >= -1e-12).all()  # increasing: ranking kept


def test_a_score_that_ranks_backwards_calibrates_to_the_actions_success_rate() -> None:
    """A few validation rows where the score happens to rank outcomes backwards: the map falls back to
    the action's own success rate, not to a slope of 0 with the intercept fitted beside the slope."""
    rng = np.random.default_rng(2)
    raw = rng.uniform(0.05, 0.5, 60)
    y = (raw < np.quantile(raw, 0.12)).astype(float)  # only the lowest scores succeed
    cal = Calibration.fit("sigmoid", raw, y, np.full(60, "a"), ["a"])
    assert cal.apply(raw.reshape(-1, 1), ["a"])[:, 0] == pytest.approx(np.full(60, y.mean()))


def test_calibration_survives_save_and_load(trained, tmp_path: Path) -> None:
    model = trained[0].model
    assert model.calibration.method == "sigmoid" and set(model.calibration.maps) == set(model.actions)
    model.save(tmp_path / "decision_model")
    loaded = DecisionModel.load(tmp_path / "decision_model")
    rows = trained[0].test.head(500)
    assert np.array_equal(loaded.predict_all(rows), model.predict_all(rows))
    assert not np.allclose(model.predict_all(rows), model.predict_raw(rows))
