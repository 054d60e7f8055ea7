"""Open the Feast feature store of the configured profile (SQLite by default, Redis in production)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from nexttouch.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

YAML = {"sqlite": "feature_store.yaml", "redis": "feature_store.redis.yaml"}


def store_yaml(settings: Settings) -> Path:
    """The profile's feature_store yaml, with the variables Feast expands in the Redis one set."""
    os.environ["NEXTTOUCH_REDIS_URL"] = settings.redis_url
    os.environ.update(registry_variables(settings))
    return settings.feature_repo / YAML[settings.online_store]


def registry_variables(settings: Settings) -> dict[str, str]:
    """Where the Redis profile's Feast registry lives: Feast's SQL registry in the database of
    ``feast_registry_url``, else a file in the project's data directory."""
    url = settings.feast_registry_url
    if not url:
        return {
            "NEXTTOUCH_FEAST_REGISTRY_TYPE": "file",
            "NEXTTOUCH_FEAST_REGISTRY_PATH": str(settings.data_dir / "feast" / "registry.redis.db"),
        }
    # SQLAlchemy takes a bare postgresql:// for psycopg2; nexttouch ships psycopg 3.
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return {"NEXTTOUCH_FEAST_REGISTRY_TYPE": "sql", "NEXTTOUCH_FEAST_REGISTRY_PATH": url}


def open_store(settings: Settings) -> FeatureStore:
    from feast import FeatureStore  # ~6 s to import: only where it is used

    return FeatureStore(repo_path=str(settings.feature_repo), fs_yaml_file=store_yaml(settings))
