"""The decision model as one MLflow model (pyfunc): what the registry stores for any MLflow client."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from nexttouch.model import DecisionModel


class DecisionPyfunc(mlflow.pyfunc.PythonModel):
    """The whole decision model as one MLflow model: feature rows in, P(success) per action out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model = DecisionModel.load(Path(context.artifacts["decision_model"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.predict_with(self.model, model_input)

    @staticmethod
    def predict_with(model: DecisionModel, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(model.predict_all(frame), columns=[f"p_{a}" for a in model.actions])
