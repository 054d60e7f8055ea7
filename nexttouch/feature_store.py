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
    os.environ["NEXTTOUCH_REDIS_URL"] = settings.redis_url  # expanded by Feast in the Redis yaml
    return settings.feature_repo / YAML[settings.online_store]


def open_store(settings: Settings) -> FeatureStore:
    from feast import FeatureStore  # ~6 s to import: only where it is used

    return FeatureStore(repo_path=str(settings.feature_repo), fs_yaml_file=store_yaml(settings))
