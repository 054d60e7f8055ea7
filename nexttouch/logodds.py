"""Probabilities on the log-odds scale and back: the model's calibration, the customers' own
affinities and the simulated world all use these two functions."""

from __future__ import annotations

import numpy as np

EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before their log-odds are taken


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
