"""Find the registered champion and load its decision model from the registry's artifacts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nexttouch.model import DecisionModel
from nexttouch.settings import Settings
from nexttouch.tracking import configure_mlflow


@dataclass(frozen=True)
class Champion:
    model: DecisionModel
    version: str


def load_champion(settings: Settings) -> Champion:
    """Copy ``models:/<name>@champion`` to models/ (once per version) and load its raw parts.

    Serving scores with the LightGBM booster directly: the ``mlflow.pyfunc`` wrapper costs
    ~19x more per prediction.
    """
    import mlflow
    from mlflow import MlflowClient

    configure_mlflow(settings)
    version = MlflowClient().get_model_version_by_alias(settings.model_name, settings.champion_alias).version
    local = settings.models_dir / settings.model_name / f"v{version}"
    if not (local / "MLmodel").exists():
        local.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{settings.model_name}/{version}", dst_path=str(local)
        )
    return Champion(DecisionModel.load(_decision_model_dir(local)), str(version))


def _decision_model_dir(local: Path) -> Path:
    found = sorted(local.glob("**/decision_model/meta.json"))
    if not found:
        raise FileNotFoundError(f"no decision_model artifact under {local}")
    return found[0].parent
