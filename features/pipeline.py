"""Ingested tables -> feature parquet -> Feast registry and online store."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from features.touch_features import build_touch_features
from nexttouch.feature_store import open_store, store_yaml
from nexttouch.parquet import write_parquet
from nexttouch.schemas import CUSTOMER_ID, CUSTOMERS_COLUMNS, EVENT_TIMESTAMP, EVENTS_COLUMNS, check_columns
from nexttouch.settings import Settings

TOUCH_HISTORY = "touch_history"
CUSTOMER_PROFILE = "customer_profile"
EPOCH = datetime(1970, 1, 2, tzinfo=UTC)


@dataclass(frozen=True)
class FeatureBuild:
    customers: int
    events: int
    rows: int
    end: datetime


def build_offline(settings: Settings, end: datetime, days: int) -> FeatureBuild:
    """Write the feature parquet files that the Feast sources read, from the ingested tables.

    Events in data/raw/ are validated and already carry the resolved ``customer_id``.
    """
    events = pd.read_parquet(settings.raw_dir / "events.parquet")
    customers = pd.read_parquet(settings.raw_dir / "customers.parquet")
    check_columns(events, {**EVENTS_COLUMNS, CUSTOMER_ID: "O"}, "touch events")
    check_columns(customers, CUSTOMERS_COLUMNS, "customers")

    touch = build_touch_features(events, customers, end, days, every_days=settings.snapshot_every_days)
    profile = customers.drop(columns=["signup_at"]).assign(**{EVENT_TIMESTAMP: customers["signup_at"]})
    out = settings.offline_dir
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(touch, out / f"{TOUCH_HISTORY}.parquet")
    write_parquet(profile, out / f"{CUSTOMER_PROFILE}.parquet")
    return FeatureBuild(len(customers), len(events), len(touch), end)


def feast_apply(settings: Settings) -> None:
    """The stock `feast apply`, run in the repo (it changes directory, so not in-process)."""
    feast = Path(sys.executable).with_name("feast")
    yaml = store_yaml(settings)
    env = {**os.environ, "FEAST_USAGE": "False"}
    cmd = [str(feast), "-f", str(yaml), "apply"]
    result = subprocess.run(cmd, cwd=settings.feature_repo, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"feast apply failed in {settings.feature_repo}:\n{result.stderr[-4000:]}")


def materialize(settings: Settings, end: datetime) -> None:
    """Load the latest feature row of each customer up to ``end`` into the online store.

    The window starts at the epoch, not at the last load (``materialize_incremental``): profile
    rows are stamped with the signup time and a rebuilt history may be older than the last load.
    """
    open_store(settings).materialize(start_date=EPOCH, end_date=end)
