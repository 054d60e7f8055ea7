"""The decision model: encoders + LightGBM booster + calibration, scoring P(success | features, action).

One booster with the action as a categorical input scores every catalog action for a
customer; a per-action calibration map (fitted on the validation period) turns its raw scores
into probabilities that can be multiplied by a value. Training builds it, MLflow stores it,
serving loads the parts directly (the raw booster, not the pyfunc wrapper in training/pyfunc.py,
which is much slower on the hot path).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd

from nexttouch.columns import numbers
from nexttouch.contributions import PathContributions
from nexttouch.logodds import EPS, logit, sigmoid

BOOSTER_FILE = "booster.txt"
META_FILE = "meta.json"
CalibrationMethod = Literal["sigmoid", "isotonic", "none"]
ContributionMethod = Literal["path", "shap"]


@lru_cache(maxsize=64)
def _level_codes(levels: tuple[str, ...]) -> dict[str, float]:
    return {v: float(i) for i, v in enumerate(levels)}


@dataclass
class Calibration:
    """Per-action increasing map raw P -> calibrated P, stored as plain numbers (JSON, no pickle).

    ``sigmoid``: p = sigmoid(a * logit(raw) + b) with a >= 0 (Platt scaling on the log-odds);
    ``isotonic``: piecewise-linear through the fitted thresholds. Both are non-decreasing, so a
    monotone booster stays monotone after calibration. Actions without a map are left raw.
    """

    method: CalibrationMethod = "none"
    maps: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def apply(self, raw: np.ndarray, actions: list[str]) -> np.ndarray:
        """Calibrate a (rows, actions) matrix of raw probabilities; columns follow ``actions``."""
        if self.method == "sigmoid":  # all columns at once (one decision scores 4 values: no loop)
            a, b, mapped = self._sigmoid_terms(tuple(actions))
            calibrated = sigmoid(a * logit(raw) + b)
            return np.where(mapped, calibrated, raw)
        out = np.array(raw, dtype=np.float64, copy=True)
        for j, action in enumerate(actions):
            m = self.maps.get(action)
            if m is not None and self.method == "isotonic":
                out[:, j] = np.interp(raw[:, j], m["x"], m["y"])
        return out

    def _sigmoid_terms(self, actions: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cache = self.__dict__.setdefault("_terms", {})
        if actions not in cache:
            maps = [self.maps.get(a) for a in actions]
            cache[actions] = (
                np.array([m["a"][0] if m else 1.0 for m in maps]),
                np.array([m["b"][0] if m else 0.0 for m in maps]),
                np.array([m is not None for m in maps]),
            )
        return cache[actions]

    @classmethod
    def fit(
        cls, method: CalibrationMethod, raw: np.ndarray, y: np.ndarray, action: np.ndarray, actions: list[str]
    ) -> Calibration:
        """Fit one map per action on (raw P of the logged action, outcome) pairs of the validation period.

        An action with fewer than 20 validation rows or only one outcome class keeps its raw score.
        """
        from sklearn.isotonic import IsotonicRegression
        from sklearn.linear_model import LogisticRegression

        maps: dict[str, dict[str, list[float]]] = {}
        if method == "none":
            return cls("none", maps)
        for name in actions:
            m = action == name
            if m.sum() < 20 or len(np.unique(y[m])) < 2:
                continue
            if method == "sigmoid":
                lr = LogisticRegression(C=1e4).fit(logit(raw[m]).reshape(-1, 1), y[m])
                slope, intercept = float(lr.coef_[0, 0]), float(lr.intercept_[0])
                if slope <= 0:  # the score ranks no better than chance here: the action's success rate
                    slope, intercept = 0.0, float(logit(np.clip(y[m].mean(), EPS, 1 - EPS)))
                maps[name] = {"a": [slope], "b": [intercept]}
            else:
                iso = IsotonicRegression(y_min=EPS, y_max=1 - EPS, out_of_bounds="clip").fit(raw[m], y[m])
                maps[name] = {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
        return cls(method, maps)


@dataclass
class DecisionModel:
    booster: lgb.Booster
    numeric: list[str]
    categorical: dict[str, list[str]]  # column -> known levels (code = position)
    actions: list[str]
    calibration: Calibration = field(default_factory=Calibration)
    # per action: the spread of customers' own affinities the model leaves unexplained (log-odds sd)
    affinity_sd: dict[str, float] = field(default_factory=dict)
    _paths: PathContributions | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def inputs(self) -> list[str]:
        """Feature names the model needs, in the order the booster expects them."""
        return [*self.numeric, *self.categorical]

    @staticmethod
    def encode_columns(
        frame: Mapping[str, Any], numeric: list[str], categorical: dict[str, list[str]], n: int | None = None
    ) -> np.ndarray:
        """Features by name (a frame, or arrays by name) -> float matrix; unknown categories and missing
        values become NaN. Training, evaluation and the decision engine all encode through here."""
        n = len(frame) if n is None else n
        out = np.empty((n, len(numeric) + len(categorical)), dtype=np.float64)
        if n == 1 and isinstance(frame, dict):  # one customer's arrays: one float each, one assignment
            cells = [frame.get(col) for col in numeric]
            if all(c is not None and c.dtype.kind == "f" for c in cells):
                out[0, : len(numeric)] = [c[0] for c in cells]
            else:
                out[0, : len(numeric)] = [numbers(frame, col, 1)[0] for col in numeric]
        else:
            for j, col in enumerate(numeric):
                out[:, j] = numbers(frame, col, n)
        for j, (col, levels) in enumerate(categorical.items(), start=len(numeric)):
            column = frame.get(col)
            if column is None:
                out[:, j] = np.nan
            elif n <= 8:  # a dict lookup per value beats building an index for a few rows
                code = _level_codes(tuple(levels))
                out[:, j] = [code.get(v, np.nan) if isinstance(v, str) else np.nan for v in column]
            else:
                codes = pd.Index(levels).get_indexer(pd.Series(column).astype(object))
                out[:, j] = np.where(codes >= 0, codes, np.nan)
        return out

    def encode(self, features: Mapping[str, Any], n: int) -> np.ndarray:
        """``encode_columns`` with this model's inputs."""
        return self.encode_columns(features, self.numeric, self.categorical, n)

    def design(self, frame: pd.DataFrame, actions: np.ndarray) -> np.ndarray:
        """Model input for (customer features, action) rows."""
        x = self.encode_columns(frame, self.numeric, self.categorical)
        codes = pd.Index(self.actions).get_indexer(actions).astype(np.float64)
        return np.column_stack([x, codes])

    def predict_raw(self, frame: pd.DataFrame) -> np.ndarray:
        """The booster's uncalibrated P(success) of every action for every row: (rows, actions)."""
        x = self.encode_columns(frame, self.numeric, self.categorical)
        n, k = len(frame), len(self.actions)
        stacked = np.column_stack([np.repeat(x, k, axis=0), np.tile(np.arange(k, dtype=np.float64), n)])
        return self.booster.predict(stacked).reshape(n, k)

    def predict_all(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated P(success) of every catalog action for every row: shape (rows, actions)."""
        return self.calibration.apply(self.predict_raw(frame), self.actions)

    def contributions(self, design: np.ndarray, method: ContributionMethod = "path") -> np.ndarray:
        """Each input's contribution to each design row's raw score (log-odds), the action's left out.

        ``path``: along the row's decision path (nexttouch.contributions, ~10x cheaper);
        ``shap``: LightGBM's TreeSHAP (``pred_contrib``).
        """
        if method == "shap":
            return self.booster.predict(design, pred_contrib=True, num_threads=1)[:, : len(self.inputs)]
        return self.paths(design)[:, : len(self.inputs)]

    @property
    def paths(self) -> PathContributions:
        """The booster's path-contribution table, built on first use (tens of ms)."""
        if self._paths is None:
            self._paths = PathContributions(self.booster)
        return self._paths

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(directory / BOOSTER_FILE)
        meta = {
            "numeric": self.numeric,
            "categorical": self.categorical,
            "actions": self.actions,
            "calibration": {"method": self.calibration.method, "maps": self.calibration.maps},
            "affinity_sd": self.affinity_sd,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> DecisionModel:
        meta = json.loads((directory / META_FILE).read_text())
        booster = lgb.Booster(model_file=str(directory / BOOSTER_FILE))
        calibration = Calibration(**meta.get("calibration", {}))  # no calibration stored: raw scores
        affinity_sd = meta.get("affinity_sd", {})
        return cls(booster, meta["numeric"], meta["categorical"], meta["actions"], calibration, affinity_sd)
