"""A project built from nothing: a simulated brand, its features in Feast and a champion in MLflow.

The same pipeline as `make demo`, for the tests and the benchmarks.
"""

from __future__ import annotations

import secrets
import shutil
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from nexttouch.settings import Settings

if TYPE_CHECKING:
    from nexttouch.catalog import Catalog

FEATURE_REPO = Path(__file__).resolve().parents[2] / "features"


def copy_feature_repo(project_dir: Path) -> Path:
    """The Feast repo definitions copied into a project (copied again, they are refreshed)."""
    repo = project_dir / "features"
    repo.mkdir(parents=True, exist_ok=True)
    for item in FEATURE_REPO.iterdir():
        if item.suffix in {".py", ".yaml"} or item.name == ".feastignore":
            shutil.copy(item, repo / item.name)
    return repo


def new_api_key(settings: Settings) -> str:
    """A key for the project, kept in its key file (readable by its owner only) for `nexttouch serve` and curl."""
    key = secrets.token_urlsafe(24)
    path = settings.api_key_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key


def init_project(settings: Settings) -> list[str]:
    """A project directory for a brand's own data: the Feast repo, the data and model directories and an API
    key file (an existing key is kept). Returns what was made, for the user."""
    root = settings.project_dir.resolve()
    made = [f"{copy_feature_repo(root)}/  the Feast feature repo (refreshed when it exists)"]
    for path in (settings.landing_dir, settings.mlruns_dir, settings.models_dir):
        path.mkdir(parents=True, exist_ok=True)
    made += [
        f"{settings.landing_dir}/  put identity, customers, events and decisions (.csv or .parquet) here",
        f"{settings.mlruns_dir}/  MLflow runs and registry",
        f"{settings.models_dir}/  the models the service loads",
    ]
    if settings.service_key() is None:
        new_api_key(settings)
        made.append(f"{settings.api_key_file}  the service's API key (readable by you only)")
    return made


def build_project(settings: Settings, catalog: Catalog, end: datetime, train: bool = True) -> Settings:
    """Simulate -> ingest -> features applied and materialized -> (trained and registered as champion)."""
    # Here, not at the top: `nexttouch init` imports this module and must not wait for Feast and MLflow.
    from features.pipeline import build_offline, feast_apply
    from nexttouch.ingest import ingest
    from nexttouch.jobs.online import load_online
    from nexttouch.simulate import write_brand
    from training.job import run_training

    copy_feature_repo(settings.project_dir)
    write_brand(settings, catalog, end, settings.landing_dir)
    ingest(settings, catalog, settings.landing_dir, now=end)
    build_offline(settings, end, settings.days)
    feast_apply(settings)
    load_online(settings, end)
    if train:
        run_training(settings, catalog)
    return settings
