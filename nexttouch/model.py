"""The decision model: encoders + LightGBM booster scoring P(success | features, action).

One booster with the action as a categorical input scores every catalog action for a
customer. Training builds it, MLflow stores it, serving loads the parts directly (the raw
booster, not the pyfunc wrapper, which is ~19x slower on the hot path).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import mlflow.pyfunc
import numpy as np
import pandas as pd

BOOSTER_FILE = "booster.txt"
META_FILE = "meta.json"


@dataclass
class DecisionModel:
    booster: lgb.Booster
    numeric: list[str]
    categorical: dict[str, list[str]]  # column -> known levels (code = position)
    actions: list[str]

    @property
    def inputs(self) -> list[str]:
        """Feature names the model needs, in the order the booster expects them."""
        return [*self.numeric, *self.categorical]

    @staticmethod
    def encode_columns(frame: pd.DataFrame, numeric: list[str], categorical: dict[str, list[str]]) -> np.ndarray:
        """Features by name -> float matrix; unknown categories and missing values become NaN."""
        out = np.empty((len(frame), len(numeric) + len(categorical)), dtype=np.float64)
        for j, col in enumerate(numeric):
            out[:, j] = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        for j, (col, levels) in enumerate(categorical.items(), start=len(numeric)):
            codes = pd.Index(levels).get_indexer(frame[col].astype(object))
            out[:, j] = np.where(codes >= 0, codes, np.nan)
        return out

    def design(self, frame: pd.DataFrame, actions: np.ndarray) -> np.ndarray:
        """Model input for (customer features, action) rows."""
        x = self.encode_columns(frame, self.numeric, self.categorical)
        codes = pd.Index(self.actions).get_indexer(actions).astype(np.float64)
        return np.column_stack([x, codes])

    def predict_all(self, frame: pd.DataFrame) -> np.ndarray:
        """P(success) of every catalog action for every row: shape (rows, actions)."""
        x = self.encode_columns(frame, self.numeric, self.categorical)
        n, k = len(frame), len(self.actions)
        stacked = np.column_stack([np.repeat(x, k, axis=0), np.tile(np.arange(k, dtype=np.float64), n)])
        return self.booster.predict(stacked).reshape(n, k)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(directory / BOOSTER_FILE)
        meta = {"numeric": self.numeric, "categorical": self.categorical, "actions": self.actions}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> DecisionModel:
        meta = json.loads((directory / META_FILE).read_text())
        booster = lgb.Booster(model_file=str(directory / BOOSTER_FILE))
        return cls(booster, meta["numeric"], meta["categorical"], meta["actions"])


class DecisionPyfunc(mlflow.pyfunc.PythonModel):
    """The whole decision model as one MLflow model: feature rows in, P(success) per action out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model = DecisionModel.load(Path(context.artifacts["decision_model"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.predict_with(self.model, model_input)

    @staticmethod
    def predict_with(model: DecisionModel, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(model.predict_all(frame), columns=[f"p_{a}" for a in model.actions])
