"""The promotion gate: standard uplift metrics, the paired DR difference, the clustered bootstrap, the
verdict, the best single action as a servable model, and the gate's power on the simulator."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from nexttouch.catalog import Catalog
from nexttouch.settings import Settings
from training.evaluate import auuc, gain_curve, qini_coefficient, qini_curve
from training.gate import Paired, clustered_interval, decide, paired_terms
from training.ope import one_hot


def test_qini_and_auuc_by_hand() -> None:
    """Ranked 4 > 3 > 2 > 1: treated, control, treated, control; only the first converts.

    Q(k) = Y_T - Y_C N_T / N_C = 0, 1, 1, 1, 1 -> mean 0.8, random line mean Q(n)/2 = 0.5: Qini 0.3.
    G(k) = k (Y_T/N_T - Y_C/N_C) = 0, 0 (no control yet), 2, 1.5, 2 -> mean 1.1 / |G(n)| = 0.55.
    """
    score, treated, y = np.array([1.0, 4.0, 2.0, 3.0]), np.array([0, 1, 1, 0]), np.array([0.0, 1.0, 0.0, 0.0])
    assert qini_curve(score, treated, y).tolist() == [0, 1, 1, 1, 1]
    assert gain_curve(score, treated, y).tolist() == [0, 0, 2, 1.5, 2]
    assert qini_coefficient(qini_curve(score, treated, y)) == pytest.approx(0.3)
    assert auuc(gain_curve(score, treated, y)) == pytest.approx(0.55)
    # Weights count as copies: the treated row twice is the log with that row duplicated.
    w = np.array([1.0, 2.0, 1.0, 1.0])
    twice = qini_curve(np.array([1.0, 4.0, 4.0, 2.0, 3.0]), np.array([0, 1, 1, 1, 0]), np.array([0.0, 1, 1, 0, 0]))
    assert qini_curve(score, treated, y, w)[-1] == twice[-1] == 2


def test_a_perfect_ranking_beats_a_random_one() -> None:
    rng = np.random.default_rng(0)
    uplift = rng.uniform(-0.1, 0.3, 20_000)
    treated = rng.random(len(uplift)) < 0.5
    y = (rng.random(len(uplift)) < 0.2 + treated * uplift).astype(float)
    good = qini_coefficient(qini_curve(uplift, treated, y))
    noise = qini_coefficient(qini_curve(rng.normal(size=len(uplift)), treated, y))
    assert good > 0.2 and abs(noise) < 0.05
    assert auuc(gain_curve(uplift, treated, y)) > auuc(gain_curve(-uplift, treated, y))


def test_paired_terms_by_hand() -> None:
    pi, rho = one_hot(np.array([1, 0, 1]), 2), one_hot(np.array([0, 0, 0]), 2)
    logged, prop, r = np.array([1, 0, 0]), np.array([0.5, 0.8, 0.25]), np.array([3.0, 1.0, 2.0])
    q = np.array([[1.0, 2.0], [0.5, 0.5], [1.0, 0.0]])
    # row 0: (2 - 1) + (1 - 0)/0.5 (3 - 2) = 3; row 1: same action, 0; row 2: (0 - 1) + (0 - 1)/0.25 (2 - 1) = -5
    assert paired_terms(pi, rho, logged, prop, r, q).tolist() == [3.0, 0.0, -5.0]
    same = paired_terms(pi, pi, logged, prop, r, q)
    assert same.tolist() == [0.0, 0.0, 0.0]


def test_the_bootstrap_draws_customers_not_decisions() -> None:
    """Ten decisions per customer sharing the customer's effect: drawn by decision, the interval is
    ~sqrt(10) too narrow; drawn by customer, it has the width of 2,000 independent draws."""
    rng = np.random.default_rng(1)
    effect = rng.normal(0, 1, 2_000)
    terms = np.repeat(effect, 10) + rng.normal(0, 0.1, 20_000)
    customers = np.repeat(np.arange(2_000), 10)
    mean, low, high = clustered_interval(terms, customers, n_boot=400)
    _, low_rows, high_rows = clustered_interval(terms, np.arange(20_000), n_boot=400)
    assert mean == pytest.approx(terms.mean())
    assert (high - low) == pytest.approx(2 * 1.96 * effect.std() / np.sqrt(2_000), rel=0.15)
    assert (high - low) > 2.5 * (high_rows - low_rows)


def _paired(diff: float, low: float, high: float) -> Paired:
    return Paired(diff, low, high, decisions=1_000, customers=500, differ=0.2)


def test_the_verdict() -> None:
    better, worse, unsure = _paired(0.3, 0.1, 0.5), _paired(-0.3, -0.5, -0.1), _paired(0.1, -0.4, 0.6)
    close = _paired(0.05, -0.15, 0.25)  # better in expectation, not worse than the tolerance 0.2
    assert [p.outcome(0.2) for p in (better, worse, unsure, close)] == ["better", "worse", "inconclusive", "better"]
    assert close.outcome(0.1) == "inconclusive" and _paired(0.0, 0.0, 0.0).outcome(0.2) == "inconclusive"

    first = decide(True, 0.2, vs_best_single=better)
    assert (first.promote, first.serve) == (True, "candidate") and first.reason.startswith("first champion")
    assert first.numbers["vs_best_single_diff"] == 0.3 and first.numbers["tolerance"] == 0.2
    # the first model of a catalog is not promoted unless it beats the best single action
    plain = decide(True, 0.2, vs_best_single=unsure)
    assert (plain.promote, plain.serve) == (False, "best_single")
    assert plain.reason == (
        "candidate vs best single action +0.1000 [-0.4000, +0.6000] per decision: not shown better; "
        "the best single action is served"
    )
    assert decide(True, 0.2, worse).reason.startswith("candidate vs best single action -0.3000")
    # with a champion: it must beat the champion too; a champion that beats the best single action stays
    ok = decide(True, 0.2, better, vs_champion=better, champion_vs_best_single=better, has_champion=True)
    assert (ok.promote, ok.serve) == (True, "candidate")
    kept = decide(True, 0.2, better, vs_champion=unsure, champion_vs_best_single=better, has_champion=True)
    assert (kept.promote, kept.serve) == (False, "champion") and "not shown better" in kept.reason
    stays = decide(True, 0.2, worse, vs_champion=worse, champion_vs_best_single=better, has_champion=True)
    assert (stays.promote, stays.serve) == (False, "champion")
    neither = decide(True, 0.2, unsure, vs_champion=better, champion_vs_best_single=worse, has_champion=True)
    assert (neither.promote, neither.serve) == (False, "best_single")
    already = replace(_paired(0.0, 0.0, 0.0), differ=0.0)  # the champion is the best single action
    again = decide(True, 0.2, unsure, vs_champion=better, champion_vs_best_single=already, has_champion=True)
    assert (again.serve, again.reason.endswith("the champion already serves the best single action")) == (
        "champion",
        True,
    )
    assert decide(False, 0.2, better).serve == "champion"  # invalid input changes nothing
    assert decide(True, 0.2, better, has_champion=True).reason == "the champion was not evaluated on the new data"


def test_the_best_single_action_is_a_servable_model(catalog: Catalog) -> None:
    """Built from a trained model, it takes the action of highest constant value wherever allowed, gives
    every customer the same P(success), and no feature contributes to its reasons."""
    from tests.test_evaluate import synthetic_log
    from training.train import constant_model, fit

    log, _ = synthetic_log(catalog, n=6_000)
    model = fit(log, catalog).model
    values = {"none": 9.0, "push": 10.0, "event_invite": 8.0, "advisor_call": 11.0}
    single = constant_model(model, values, catalog, log)
    assert single.inputs == model.inputs
    p = single.predict_all(log.head(50))
    assert np.allclose(p, p[0]) and p[0] * 60 - [a.cost for a in catalog.actions] == pytest.approx(
        [values[a] for a in catalog.names]
    )
    design = single.design(log.head(5), np.array(["push"] * 5))
    assert not single.contributions(design).any()


@pytest.mark.slow
def test_the_gate_promotes_better_and_refuses_worse_candidates(catalog: Catalog) -> None:
    """The benchmark's check, small: 3 simulated logs of 30k decisions, candidates truly better or worse
    by 0.15 per decision than the champion, an identical one, and an equally good one with other decisions."""
    from benchmarks.bench_gate import run_seed, table

    rows = [row for seed in range(3) for row in run_seed(catalog, 30_000, seed, gap=0.15, n_boot=300)]
    for row in rows:
        gap = 0.15 if row["kind"].startswith("better") else -0.15 if row["kind"].startswith("worse") else 0.0
        assert row["true_gap"] == pytest.approx(gap, abs=0.005)
    result = table(rows, tolerance=Settings().gate_tolerance).set_index("candidate")
    assert result.loc["better", "promoted"] >= 2 / 3
    assert result.loc["worse", "refused"] == 1.0
    assert result.loc["identical", "refused as worse"] == 0 and result.loc["identical", "promoted"] == 0
    assert result.loc["equal", "refused as worse"] == 0
    assert result.loc["worse, own errors", "promoted"] == 0
