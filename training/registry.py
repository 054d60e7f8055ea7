"""Log a trained decision model to MLflow, register it and point the champion alias at it."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature

from nexttouch.model import DecisionModel, DecisionPyfunc
from nexttouch.settings import Settings
from nexttouch.tracking import configure_mlflow


@dataclass(frozen=True)
class Registered:
    run_id: str
    version: str


def _requirements() -> list[str]:
    """Pinned from this environment: MLflow's own inference costs ~10 s per run."""
    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "lightgbm", "numpy", "pandas", "scikit-learn")]


def experiment_id(settings: Settings, name: str) -> str:
    """The experiment, created with its artifacts under mlruns/ on first use."""
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=f"{settings.artifact_root}/{name}")


def log_and_register(
    settings: Settings,
    model: DecisionModel,
    params: dict[str, object],
    metrics: dict[str, float],
    example: pd.DataFrame,
    tags: dict[str, str],
    promote: bool = True,
) -> Registered:
    """One run: params, metrics, the whole decision model (signature + example), a registry version."""
    configure_mlflow(settings)
    exp = experiment_id(settings, f"{settings.model_name}")
    with mlflow.start_run(experiment_id=exp, tags=tags) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        model.save(Path(tmp) / "decision_model")
        # Numeric features are optional doubles in the signature: Feast returns NaN for gaps.
        example = example[model.inputs].head(5).astype(dict.fromkeys(model.numeric, "float64"))
        output = DecisionPyfunc().predict_with(model, example)
        info = mlflow.pyfunc.log_model(
            name="decision_model",
            python_model=DecisionPyfunc(),
            artifacts={"decision_model": str(Path(tmp) / "decision_model")},
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=_requirements(),
            registered_model_name=settings.model_name,
        )
    version = str(info.registered_model_version)
    if promote:
        MlflowClient().set_registered_model_alias(settings.model_name, settings.champion_alias, version)
    return Registered(run.info.run_id, version)
