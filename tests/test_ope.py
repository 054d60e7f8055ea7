"""Off-policy estimators on synthetic logs whose true policy values are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from training.ope import estimate, estimate_many, greedy, on_policy, one_hot, uniform

K = 3


def logged_bandit(n: int, seed: int) -> dict[str, np.ndarray]:
    """Contexts, a true mean reward per action, an epsilon-greedy logging policy that knows a noisy
    version of it, its propensities and realised rewards (Bernoulli outcome x value - cost)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    p = 1 / (1 + np.exp(-np.column_stack([-1 + 0 * x[:, 0], -1.2 + x[:, 0], -1.5 + 1.5 * x[:, 1]])))
    value, cost = 10.0, np.array([0.0, 0.5, 2.0])
    mu = p * value - cost  # true expected net value of each action
    noisy = mu + rng.normal(0, 1, mu.shape)
    eps = 0.3
    behaviour = eps / K + (1 - eps) * one_hot(noisy.argmax(axis=1), K)
    a = (rng.random(n)[:, None] > np.cumsum(behaviour, axis=1)).sum(axis=1)
    y = rng.random(n) < p[np.arange(n), a]
    return {"mu": mu, "a": a, "prop": behaviour[np.arange(n), a], "r": y * value - cost[a], "behaviour": behaviour}


def true_value(pi: np.ndarray, mu: np.ndarray) -> float:
    return float((pi * mu).sum(axis=1).mean())


def test_hand_computed_ips_snips_dr() -> None:
    pi = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    logged, prop, r = np.array([0, 0, 0]), np.array([0.5, 0.25, 1.0]), np.array([2.0, 4.0, 1.0])
    q = np.array([[1.0, 0.0], [0.0, 3.0], [0.5, 0.0]])
    v = estimate(pi, logged, prop, r, q, n_boot=20)
    w = np.array([2.0, 0.0, 1.0])
    assert v.ips == pytest.approx((w * r).mean())
    assert v.snips == pytest.approx((w * r).sum() / w.sum())
    assert v.dr == pytest.approx(np.mean([1 + 2 * (2 - 1), 3 + 0, 0.5 + 1 * (1 - 0.5)]))
    assert v.dr_low <= v.dr_high


def test_ips_is_unbiased_over_repeated_logs() -> None:
    """Target "always the advisor-like action 2": the mean of IPS over 200 independent logs is its
    true value within 3 standard errors; the naive average of the rewards where the log took action
    2 is not (the logging policy took it where it looked good)."""
    ips, naive, truths = [], [], []
    for seed in range(200):
        d = logged_bandit(1_000, seed)
        pi = one_hot(np.full(len(d["a"]), 2), K)
        ips.append(estimate(pi, d["a"], d["prop"], d["r"], np.zeros_like(d["mu"]), n_boot=2).ips)
        match = pi[np.arange(len(d["a"])), d["a"]] == 1
        naive.append(d["r"][match].mean())
        truths.append(true_value(pi, d["mu"]))
    se = np.std(ips) / np.sqrt(len(ips))
    assert abs(np.mean(ips) - np.mean(truths)) < 3 * se
    assert abs(np.mean(naive) - np.mean(truths)) > 6 * se  # selection bias the weights remove


def test_intervals_cover_the_truth_and_dr_with_a_good_model_is_tight() -> None:
    d = logged_bandit(40_000, 1)
    eligible = np.ones_like(d["mu"], bool)
    pis = {"greedy": greedy(d["mu"], eligible), "random": uniform(eligible), "second": one_hot(np.ones(40_000, int), K)}
    rng = np.random.default_rng(5)
    good_q = d["mu"] + rng.normal(0, 0.3, d["mu"].shape)  # a decent reward model
    good = estimate_many(pis, d["a"], d["prop"], d["r"], good_q, n_boot=200)
    bad = estimate_many(pis, d["a"], d["prop"], d["r"], np.zeros_like(d["mu"]), n_boot=200)
    covered, checks = 0, 0
    for name, pi in pis.items():
        truth = true_value(pi, d["mu"])
        for v in (good[name], bad[name]):  # DR is unbiased whatever the reward model
            for est, low, high in (
                (v.dr, v.dr_low, v.dr_high),
                (v.ips, v.ips_low, v.ips_high),
                (v.snips, v.snips_low, v.snips_high),
            ):
                assert abs(est - truth) < (high - low), (name, v, truth)  # ~4 standard errors
                covered += low <= truth <= high
                checks += 1
        assert abs(good[name].dr - truth) < 0.03 * abs(truth) + 0.02  # within ~3% of the true value
        # a good reward model removes most of the importance-sampling variance
        assert good[name].dr_high - good[name].dr_low < good[name].ips_high - good[name].ips_low
    assert covered >= checks - 3  # 95% intervals: 18 checks, ~1 miss expected


def test_eligibility_is_respected_by_greedy_and_random() -> None:
    values = np.array([[1.0, 5.0, 3.0], [0.0, -1.0, -2.0]])
    eligible = np.array([[True, False, True], [True, True, True]])
    assert greedy(values, eligible).argmax(axis=1).tolist() == [2, 0]
    assert uniform(eligible).tolist() == [[0.5, 0.0, 0.5], [1 / 3, 1 / 3, 1 / 3]]
    tie = greedy(np.zeros((1, 3)), np.ones((1, 3), bool), prefer=2)
    assert tie.argmax(axis=1).tolist() == [2]


def test_on_policy_value_is_the_mean_reward() -> None:
    r = np.random.default_rng(0).normal(3, 1, 5_000)
    v = on_policy(r, n_boot=100)
    assert v.ips == v.snips == v.dr == pytest.approx(r.mean())
    assert v.dr_low < r.mean() < v.dr_high
    assert v.dr_high - v.dr_low == pytest.approx(2 * 1.96 / np.sqrt(5_000), rel=0.25)
