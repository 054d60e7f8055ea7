"""Feast's local materialization engine, folding the service's event log in after it loads contact state.

The feature repo names it as its ``batch_engine``, so Feast's own loads (`feast materialize`,
`feast materialize-incremental`, ``FeatureStore.materialize``) keep the touches posted to the service
as `nexttouch features` does (``nexttouch.jobs.online``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from feast.infra.common.materialization_job import MaterializationTask
from feast.infra.compute_engines.local.compute import LocalComputeEngine, LocalComputeEngineConfig

from nexttouch.settings import load_settings
from serving.contact_state import STATE_VIEW, lock_path, state_lock

ENGINE = "nexttouch.jobs.feast_engine.FoldingComputeEngine"


class FoldingComputeEngineConfig(LocalComputeEngineConfig):
    type: Literal["nexttouch.jobs.feast_engine.FoldingComputeEngine"] = ENGINE  # type: ignore[assignment]


class FoldingComputeEngine(LocalComputeEngine):
    def materialize(self, registry: Any, tasks: Any, **kwargs: Any) -> list:
        from feast import FeatureStore

        from nexttouch.jobs.online import REBUILD_LOCK_WAIT_S, fold_in_event_log

        tasks = [tasks] if isinstance(tasks, MaterializationTask) else list(tasks)
        if not any(t.feature_view.name == STATE_VIEW for t in tasks) or self.repo_config.repo_path is None:
            return super().materialize(registry, tasks, **kwargs)
        # The repo is the project's features/ directory; the store is the one this load writes (SQLite or Redis).
        settings = load_settings(project_dir=Path(self.repo_config.repo_path).resolve().parent)
        store = FeatureStore(config=self.repo_config)
        with state_lock(store, lock_path(settings.data_dir), wait_s=REBUILD_LOCK_WAIT_S, renew=True):
            jobs = super().materialize(registry, tasks, **kwargs)
            fold_in_event_log(settings, max(t.end_time for t in tasks), store)
        return jobs
