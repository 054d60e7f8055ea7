"""Off-policy estimation of a policy's value from a logged, exploring decision history.

Every logged decision i has the action the logging policy took, ``a_i``, the probability it had of
taking it, ``mu_i`` (the logged propensity), and its reward ``r_i`` (net value: outcome x value of
success - cost). A target policy is given as ``pi`` (rows, actions): the probability it takes each
action on row i (one-hot for a deterministic policy). With ``w_i = pi(a_i | x_i) / mu_i``:

- IPS   = mean(w r)                                   unbiased, high variance;
- SNIPS = sum(w r) / sum(w)                           self-normalised: slightly biased, much steadier;
- DR    = mean(sum_a pi(a|x) q(x,a) + w (r - q(x,a_i)))   doubly robust with a reward model q:
  unbiased when the propensities are right, low variance when q is good.

Confidence intervals come from a bootstrap over decisions (percentiles).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PolicyValue:
    """Estimated mean net value per decision of one policy, with 95% bootstrap intervals.

    ``true`` is the value under the ground-truth response model when the data are simulated.
    """

    ips: float
    snips: float
    dr: float
    dr_low: float
    dr_high: float
    ips_low: float
    ips_high: float
    snips_low: float
    snips_high: float
    true: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


LOGGED = None  # in ``estimate_many``'s ``pis``: the logging policy itself (its value is the mean reward)
# Poisson(1) CDF up to 12 (the rest has probability < 1e-9): counts from float32 uniforms by lookup,
# ~10x faster than Generator.poisson for the 200 x rows draws of a bootstrap.
_POISSON1_CDF = np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, k + 1)) for k in range(13)]).astype(np.float32)


def _poisson1(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return np.searchsorted(_POISSON1_CDF, rng.random(shape, dtype=np.float32)).astype(np.float32)


def estimate_many(
    pis: dict[str, np.ndarray | None],
    logged: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    q: np.ndarray,
    n_boot: int = 200,
    seed: int = 0,
    chunk: int = 65_536,
) -> dict[str, PolicyValue]:
    """IPS, SNIPS and DR of several policies on the same decisions, with 95% bootstrap intervals.

    ``pis`` maps a name to its (rows, actions) target probabilities, or to ``LOGGED`` for the logging
    policy itself (IPS = SNIPS = DR = the mean logged reward); ``logged`` is the action index
    per row; ``propensity`` the logging probability of that action; ``reward`` the logged net value;
    ``q`` (rows, actions) the reward model's expected net value of every action. The bootstrap is
    the Poisson bootstrap (each row drawn Poisson(1) times), done in row chunks with one draw shared
    by all policies, so 1M decisions x 200 resamples needs no (resamples x rows) matrix.
    """
    n = len(logged)
    rows = np.arange(n)
    names = list(pis)
    # Per row and policy: w*r, w, and the DR term.
    terms = np.empty((n, 3 * len(names)), dtype=np.float32)
    for p, name in enumerate(names):
        pi = pis[name]
        if pi is None:  # on-policy: weights 1, and the DR term is the reward itself
            terms[:, 3 * p], terms[:, 3 * p + 1], terms[:, 3 * p + 2] = reward, 1.0, reward
            continue
        w = pi[rows, logged] / propensity
        terms[:, 3 * p] = w * reward
        terms[:, 3 * p + 1] = w
        terms[:, 3 * p + 2] = (pi * q).sum(axis=1) + w * (reward - q[rows, logged])
    point = terms.astype(np.float64).sum(axis=0)
    sums, counts = np.zeros((n_boot, terms.shape[1])), np.zeros(n_boot)
    rng = np.random.default_rng(seed)
    for lo in range(0, n, chunk):
        c = _poisson1(rng, (n_boot, min(chunk, n - lo)))
        sums += c @ terms[lo : lo + chunk]  # float32 per chunk, summed across chunks in float64
        counts += c.sum(axis=1, dtype=np.float64)
    out = {}
    for p, name in enumerate(names):
        s_wr, s_w, s_dr = sums[:, 3 * p], sums[:, 3 * p + 1], sums[:, 3 * p + 2]
        drawn = counts > 0  # a resample of a tiny log can be empty: it has no value
        snips = np.divide(s_wr, s_w, out=np.full(n_boot, np.nan), where=drawn & (s_w > 0))
        boot = np.column_stack([s_wr / np.where(drawn, counts, np.nan), snips, s_dr / np.where(drawn, counts, np.nan)])
        low, high = np.nanpercentile(boot, [2.5, 97.5], axis=0)
        wr, w, dr = point[3 * p : 3 * p + 3]
        out[name] = PolicyValue(
            ips=float(wr / n),
            snips=float(wr / w) if w > 0 else 0.0,
            dr=float(dr / n),
            dr_low=float(low[2]),
            dr_high=float(high[2]),
            ips_low=float(low[0]),
            ips_high=float(high[0]),
            snips_low=float(low[1]),
            snips_high=float(high[1]),
        )
    return out


def estimate(
    pi: np.ndarray,
    logged: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    q: np.ndarray,
    n_boot: int = 200,
    seed: int = 0,
) -> PolicyValue:
    """IPS, SNIPS and DR value of one policy ``pi`` (see :func:`estimate_many`)."""
    return estimate_many({"pi": pi}, logged, propensity, reward, q, n_boot, seed)["pi"]


def on_policy(reward: np.ndarray, n_boot: int = 200, seed: int = 0) -> PolicyValue:
    """The logging policy's own value: the mean logged reward (every estimator reduces to it)."""
    n = len(reward)
    return estimate_many({"pi": LOGGED}, np.zeros(n, int), np.ones(n), reward, np.zeros((n, 1)), n_boot, seed)["pi"]


def greedy(values: np.ndarray, eligible: np.ndarray, prefer: int | None = None) -> np.ndarray:
    """One-hot policy taking the eligible action of highest value (ties -> ``prefer``, e.g. ``none``)."""
    v = np.where(eligible, values, -np.inf)
    if prefer is not None:
        v = v + np.where(np.arange(v.shape[1]) == prefer, 1e-9, 0.0)
    best = v.argmax(axis=1)
    return one_hot(best, values.shape[1])


def one_hot(index: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(index), k))
    out[np.arange(len(index)), index] = 1.0
    return out


def uniform(eligible: np.ndarray) -> np.ndarray:
    """Random policy: uniform over each row's eligible actions."""
    e = eligible.astype(float)
    return e / e.sum(axis=1, keepdims=True)
