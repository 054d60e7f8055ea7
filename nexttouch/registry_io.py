"""The registered decision model: which version an alias names, and that version's model loaded.

The one loader of a registered model, for serving (the champion), the plan and evaluation alike.
A version is copied from the registry's artifacts to ``models/<name>/v<version>`` once and loaded
from there; serving scores with the LightGBM booster directly (the ``mlflow.pyfunc`` wrapper costs
~19x more per prediction).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from nexttouch.model import DecisionModel
from nexttouch.settings import Settings
from nexttouch.tracking import tracking_client


def alias_version(settings: Settings, alias: str | None = None) -> str | None:
    """The registry version ``alias`` (default: the champion alias) points at now; None when it is not set."""
    from mlflow.exceptions import MlflowException

    client = tracking_client(settings)
    try:
        found = client.get_model_version_by_alias(settings.model_name, alias or settings.champion_alias)
    except MlflowException:
        return None
    return str(found.version)


def load_version(settings: Settings, version: str) -> DecisionModel:
    """The decision model of one registered version, copied to models/ the first time it is asked for."""
    import mlflow

    local = settings.models_dir / settings.model_name / f"v{version}"
    if not (local / "MLmodel").exists():
        # Download beside the final place and rename: a worker never sees a half-copied model.
        partial = local.with_name(f"{local.name}.{os.getpid()}.{threading.get_ident()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        client = tracking_client(settings)
        downloaded = mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(settings.model_name, version),
            dst_path=str(partial),
            tracking_uri=settings.resolved_tracking_uri,
        )
        try:
            Path(downloaded).rename(local)
            shutil.rmtree(partial, ignore_errors=True)
        except OSError:  # another worker got there first (or a stale empty dir): keep theirs
            shutil.rmtree(partial, ignore_errors=True)
            if not (local / "MLmodel").exists():
                shutil.rmtree(local, ignore_errors=True)
                return load_version(settings, version)
    return DecisionModel.load(_decision_model_dir(local))


def load_registered(settings: Settings, alias: str | None = None) -> DecisionModel | None:
    """The decision model behind ``models:/<name>@<alias>`` (champion by default); None if the alias is not set."""
    version = alias_version(settings, alias)
    return None if version is None else load_version(settings, version)


def _decision_model_dir(local: Path) -> Path:
    found = sorted(local.glob("**/decision_model/meta.json"))
    if not found:
        raise FileNotFoundError(f"no decision_model artifact under {local}")
    return found[0].parent
