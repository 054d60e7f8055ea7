"""The promotion gate: is a candidate policy better than a reference on the same decisions?

Two policies evaluated apart each carry the whole noise of the log; on the same decisions most of
it cancels. Per logged decision i (action ``a_i`` taken with propensity ``mu_i``, reward ``r_i``)
and a reward model ``q``, the paired doubly robust difference of policies ``pi`` and ``rho`` is

    d_i = sum_a (pi(a|x_i) - rho(a|x_i)) q(x_i, a) + (pi(a_i|x_i) - rho(a_i|x_i)) / mu_i * (r_i - q(x_i, a_i))

which is exactly 0 wherever both policies take the same action. Its mean is unbiased for the
difference of their values when the propensities are right, whatever ``q``. A customer's decisions
are not independent (same traits, one contact changes the next), so the interval comes from a
bootstrap that draws customers, not decisions (Poisson weights per customer).

The verdict: promote when the candidate is better in expectation (mean difference > 0) and not
worse beyond the tolerance (lower bound >= -tolerance); it is *worse* only when the whole interval
is below zero; anything else is *inconclusive* and refused: the log cannot tell them apart yet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

Outcome = Literal["better", "worse", "inconclusive"]
Serve = Literal["candidate", "champion", "best_single"]
LEVEL = 0.95  # two-sided confidence of the paired interval
N_BOOT = 500


@dataclass(frozen=True)
class Paired:
    """Mean paired DR difference (candidate - reference) per decision, with its clustered bootstrap interval."""

    diff: float
    low: float
    high: float
    decisions: int
    customers: int
    differ: float  # share of decisions on which the two policies act differently

    def outcome(self, tolerance: float) -> Outcome:
        if self.diff > 0 and self.low >= -tolerance:
            return "better"
        if self.high < 0:
            return "worse"
        return "inconclusive"

    def text(self) -> str:
        return f"{self.diff:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def paired_terms(
    pi: np.ndarray,
    rho: np.ndarray,
    logged: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    q: np.ndarray,
) -> np.ndarray:
    """The per-decision paired DR difference ``d_i`` of policies ``pi`` and ``rho`` (rows, actions)."""
    rows = np.arange(len(logged))
    delta = pi - rho
    return (delta * q).sum(axis=1) + delta[rows, logged] / propensity * (reward - q[rows, logged])


def clustered_interval(
    terms: np.ndarray,
    clusters: np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
    chunk: int = 8_192,
) -> tuple[float, float, float]:
    """(mean, low, high) of ``terms`` with a Poisson bootstrap over clusters (every row of a drawn
    cluster counts as often as the cluster is drawn); percentile interval at ``level``."""
    codes, groups = _codes(clusters)
    sums = np.bincount(codes, weights=terms, minlength=groups)
    sizes = np.bincount(codes, minlength=groups).astype(float)
    rng = np.random.default_rng(seed)
    num, den = np.zeros(n_boot), np.zeros(n_boot)
    for lo in range(0, groups, chunk):  # (resamples x customers) weights, a chunk of customers at a time
        w = rng.poisson(1.0, (n_boot, min(chunk, groups - lo)))
        num += w @ sums[lo : lo + chunk]
        den += w @ sizes[lo : lo + chunk]
    boot = num[den > 0] / den[den > 0]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return float(terms.mean()), float(low), float(high)


def _codes(clusters: np.ndarray) -> tuple[np.ndarray, int]:
    uniques, codes = np.unique(np.asarray(clusters), return_inverse=True)
    return codes.ravel(), len(uniques)


def compare(
    pi: np.ndarray,
    rho: np.ndarray,
    logged: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    q: np.ndarray,
    customers: np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Paired:
    """Candidate ``pi`` against reference ``rho`` on the same logged decisions, clustered by customer."""
    terms = paired_terms(pi, rho, logged, propensity, reward, q)
    diff, low, high = clustered_interval(terms, customers, n_boot, seed)
    differ = float((np.abs(pi - rho).sum(axis=1) > 1e-12).mean()) if len(pi) else 0.0
    return Paired(diff, low, high, len(terms), _codes(customers)[1], differ)


@dataclass(frozen=True)
class Verdict:
    """What the gate decided, why, and which policy is served after it."""

    promote: bool  # the candidate becomes champion
    reason: str
    serve: Serve = "champion"
    numbers: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _numbers(name: str, p: Paired | None) -> dict[str, float]:
    if p is None:
        return {}
    return {f"{name}_diff": p.diff, f"{name}_low": p.low, f"{name}_high": p.high, f"{name}_differ": p.differ}


def decide(
    validated: bool,
    tolerance: float,
    vs_best_single: Paired | None,
    vs_champion: Paired | None = None,
    champion_vs_best_single: Paired | None = None,
    has_champion: bool = False,
) -> Verdict:
    """The gate, from the paired comparisons on the evaluation decisions.

    The candidate is promoted when it is better than the best single action and (if there is a
    champion) better than the champion. Personalisation must earn its place: when the candidate is
    not better than the best single action, the champion stays if it is itself better than the
    best single action on these decisions; otherwise the best single action is served.
    """
    numbers = {
        "tolerance": tolerance,
        **_numbers("vs_best_single", vs_best_single),
        **_numbers("vs_champion", vs_champion),
        **_numbers("champion_vs_best_single", champion_vs_best_single),
    }

    def verdict(promote: bool, reason: str, serve: Serve) -> Verdict:
        return Verdict(promote, reason, serve, numbers)

    if not validated:
        return verdict(False, "input data failed validation", "champion")
    if vs_best_single is None:
        return verdict(False, "the candidate was not compared with the best single action", "champion")
    if has_champion and vs_champion is None:
        return verdict(False, "the champion was not evaluated on the new data", "champion")
    single = vs_best_single.outcome(tolerance)
    if single != "better":
        why = f"candidate vs best single action {vs_best_single.text()} per decision: {_word(single)}"
        champion_ok = champion_vs_best_single is not None and champion_vs_best_single.outcome(tolerance) == "better"
        if has_champion and champion_ok:
            return verdict(False, f"{why}; the champion stays (it beats the best single action)", "champion")
        if has_champion and champion_vs_best_single is not None and champion_vs_best_single.differ == 0:
            return verdict(False, f"{why}; the champion already serves the best single action", "champion")
        return verdict(False, f"{why}; the best single action is served", "best_single")
    if not has_champion:
        return verdict(
            True, f"first champion: better than the best single action by {vs_best_single.text()}", "candidate"
        )
    assert vs_champion is not None
    versus = vs_champion.outcome(tolerance)
    if versus == "better":
        return verdict(True, f"better than the champion by {vs_champion.text()} per decision", "candidate")
    return verdict(False, f"candidate vs champion {vs_champion.text()} per decision: {_word(versus)}", "champion")


def _word(outcome: Outcome) -> str:
    return {"better": "better", "worse": "worse", "inconclusive": "not shown better"}[outcome]
