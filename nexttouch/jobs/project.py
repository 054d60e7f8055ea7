"""A project built from nothing: a simulated brand, its features in Feast and a champion in MLflow.

The same pipeline as `make demo`, for the tests and the benchmarks.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

from features.pipeline import build_offline, feast_apply, materialize
from nexttouch.catalog import Catalog
from nexttouch.ingest import ingest
from nexttouch.settings import Settings
from nexttouch.simulate import write_brand
from training.job import run_training

FEATURE_REPO = Path(__file__).resolve().parents[2] / "features"


def copy_feature_repo(project_dir: Path) -> Path:
    """The Feast repo definitions copied into a project (copied again, they are refreshed)."""
    repo = project_dir / "features"
    repo.mkdir(parents=True, exist_ok=True)
    for item in FEATURE_REPO.iterdir():
        if item.suffix in {".py", ".yaml"} or item.name == ".feastignore":
            shutil.copy(item, repo / item.name)
    return repo


def build_project(settings: Settings, catalog: Catalog, end: datetime, train: bool = True) -> Settings:
    """Simulate -> ingest -> features applied and materialized -> (trained and registered as champion)."""
    copy_feature_repo(settings.project_dir)
    write_brand(settings, catalog, end, settings.landing_dir)
    ingest(settings, catalog, settings.landing_dir, now=end)
    build_offline(settings, end, settings.days)
    feast_apply(settings)
    materialize(settings, end)
    if train:
        run_training(settings, catalog)
    return settings
