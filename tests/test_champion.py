"""Loading the champion reads the project's registry without touching MLflow's process-wide state."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexttouch.settings import Settings
from serving.champion import champion_version, load_champion

pytestmark = pytest.mark.slow


def test_loading_the_champion_leaves_the_global_tracking_uri_alone(built: Settings, tmp_path: Path) -> None:
    import mlflow

    # The service's watcher thread loads champions while a training run may be open in the same
    # process: a global set_tracking_uri from there once sent that run's writes to another store.
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    mlflow.set_tracking_uri(elsewhere)
    fresh = built.model_copy(update={"project_dir": tmp_path, "tracking_uri": built.resolved_tracking_uri})
    try:
        version = champion_version(fresh)
        champion = load_champion(fresh)
        assert mlflow.get_tracking_uri() == elsewhere
    finally:
        mlflow.set_tracking_uri(built.resolved_tracking_uri)
    assert champion.version == version
    assert (tmp_path / "models" / built.model_name / f"v{version}" / "MLmodel").exists()
    assert set(champion.model.actions) >= {"none", "push"}
