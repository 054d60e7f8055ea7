"""Each customer's own affinity for each action: a posterior that their responses update at once.

The population model gives P(success | features, action) on the log-odds scale; a customer's own
affinity is a random effect added to it, ``b ~ Normal(mean, 1 / precision)``, starting at the prior
``Normal(0, prior_sd**2)`` and updated by every outcome of a decision made for them (one Laplace
step of Bayesian logistic regression: the exact posterior of a Gaussian prior and one Bernoulli
observation, approximated at its mode). Decisions sample it (Thompson sampling): the policy explores
where a customer is uncertain and an action's information is worth its cost, and the probability of
the action it chose is the share of posterior draws in which that action wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nexttouch.logodds import EPS, sigmoid

DRAWS = 256  # posterior draws per decision: the propensity's standard error is below 0.032


@dataclass
class Affinity:
    """Posteriors of ``rows`` customers for every catalog action: (rows, actions) arrays."""

    mean: np.ndarray
    precision: np.ndarray
    outcomes: np.ndarray  # how many outcomes each posterior has seen

    @classmethod
    def prior(cls, rows: int, prior_sd: np.ndarray) -> Affinity:
        k = len(prior_sd)
        precision = np.broadcast_to(1.0 / np.maximum(prior_sd, EPS) ** 2, (rows, k)).copy()
        return cls(np.zeros((rows, k)), precision, np.zeros((rows, k), np.int64))

    def draws(self, rng: np.random.Generator, n: int = DRAWS) -> np.ndarray:
        """(n, rows, actions) samples of every posterior; draw 0 is the one a decision acts on."""
        sd = 1.0 / np.sqrt(self.precision)
        return self.mean + sd * rng.standard_normal((n, *self.mean.shape))


def prior_sds(setting: float | str, catalog_names: list[str], fitted: dict[str, float]) -> np.ndarray | None:
    """Each catalog action's prior sd for per-customer learning (None: off): the setting's number for every
    action, or with ``"fitted"`` the spread the model's training found (0 for an action it has none for)."""
    if setting == "fitted":
        sd = np.array([fitted.get(a, 0.0) for a in catalog_names])
    else:
        sd = np.full(len(catalog_names), float(setting))
    return sd if (sd > 0).any() else None


def update(mean: float, precision: float, base_logit: float, outcome: float) -> tuple[float, float]:
    """The posterior after one outcome (1 success, 0 none) of a decision scored ``base_logit``."""
    p = float(sigmoid(np.float64(base_logit + mean)))
    precision = precision + p * (1 - p)
    return mean + (outcome - p) / precision, precision


def update_many(
    mean: np.ndarray, precision: np.ndarray, base_logit: np.ndarray, outcome: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``update`` for many independent posteriors at once (each seeing one outcome)."""
    p = sigmoid(base_logit + mean)
    precision = precision + p * (1 - p)
    return mean + (outcome - p) / precision, precision


def fit_prior_sd(customer: np.ndarray, p: np.ndarray, outcome: np.ndarray) -> float:
    """The spread of customers' own affinities that the model leaves unexplained: the prior sd (log-odds).

    Method of moments on decisions the model did not learn from (e.g. its validation period): with
    ``b ~ Normal(0, sd**2)`` per customer, a customer's summed residual ``S = sum(y - p)`` has
    ``E[S**2] = W + sd**2 * W**2`` to first order, where ``W = sum(p * (1 - p))``; so
    ``sd**2 = sum(S**2 - W) / sum(W**2)``, 0 when the residuals are no more spread than chance.
    """
    codes, _ = pd.factorize(np.asarray(customer))
    if len(codes) == 0:
        return 0.0
    s = np.bincount(codes, weights=np.asarray(outcome, float) - p)
    w = np.bincount(codes, weights=p * (1 - p))
    return float(np.sqrt(max(0.0, (s**2 - w).sum() / max((w**2).sum(), EPS))))
