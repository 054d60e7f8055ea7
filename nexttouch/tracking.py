"""MLflow pointed at the project's tracking store, telemetry off. Shared by training and serving."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexttouch.settings import Settings
from nexttouch.telemetry import switch_off

if TYPE_CHECKING:
    from mlflow import MlflowClient


def configure_mlflow(settings: Settings) -> None:
    """Point this process's global MLflow state at the project (training jobs: one project per process)."""
    switch_off()
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines drown the CLI output
    settings.mlruns_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    mlflow.set_registry_uri(settings.resolved_tracking_uri)


def tracking_client(settings: Settings) -> MlflowClient:
    """A client bound to the project's store, leaving MLflow's global URIs alone.

    The service's champion watcher runs in a background thread: setting the process-wide tracking
    URI from there would redirect any run another part of the same process has open.
    """
    switch_off()
    from mlflow import MlflowClient

    settings.mlruns_dir.mkdir(parents=True, exist_ok=True)
    uri = settings.resolved_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
