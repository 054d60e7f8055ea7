"""Shared fixtures: a small simulated brand in a temporary project, never the developer's files.

The built project (features in Feast, a champion in a temporary MLflow store) is made once per
test session because Feast alone takes ~6 s to import and each stage costs seconds.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from nexttouch.catalog import Catalog, load_catalog
from nexttouch.model import DecisionModel
from nexttouch.settings import Settings, load_settings
from nexttouch.telemetry import switch_off

switch_off()
# OpenMP threads (LightGBM) sleep instead of spinning while they wait: on a busy 2-core machine
# spinning threads made a 100k-row fit 5x slower (24 s instead of 4.6 s). Read when libgomp loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
END = datetime(2026, 11, 1, tzinfo=UTC)
SMALL = {"customers": 400, "days": 120, "seed": 11, "decision_rate": 0.15}


POSTGRES = "postgresql://postgres@127.0.0.1:5432"  # the PostgreSQL on loopback (trust auth)


@pytest.fixture
def database() -> Iterator[str]:
    """A throwaway PostgreSQL database on the loopback server, dropped after the test."""
    import psycopg

    name = f"nexttouch_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    """A port nobody listens on right now, on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def dask_scheduler() -> Iterator[str]:
    """A real 2-worker Dask cluster in this process (threads), for the data steps' cluster engine."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def project(tmp_path: Path) -> Settings:
    from nexttouch.jobs.project import copy_feature_repo

    copy_feature_repo(tmp_path)
    return load_settings(project_dir=tmp_path, **SMALL)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> Settings:
    """Simulated -> features applied and materialized -> trained and registered as champion."""
    from nexttouch.jobs.project import build_project
    from nexttouch.registry_io import alias_version
    from nexttouch.tracking import tracking_client

    base = tmp_path_factory.mktemp("built")
    settings = build_project(load_settings(project_dir=base, **SMALL), catalog, END)
    # On this small brand the gate may serve the best single action instead of the first model (its test
    # decisions are few): the serving tests need the personalised model as a champion never moved before.
    if alias_version(settings) != "1":
        client = tracking_client(settings)
        client.set_registered_model_alias(settings.model_name, settings.champion_alias, "1")
        if alias_version(settings, "previous") is not None:
            client.delete_registered_model_alias(settings.model_name, "previous")
    return settings


@pytest.fixture(scope="session")
def model(catalog: Catalog) -> DecisionModel:
    """A tiny model where push succeeds for app-active customers and nothing else does."""
    rng = np.random.default_rng(0)
    n = 4000
    frame = pd.DataFrame(
        {
            "tech_in_30d": rng.integers(0, 30, n).astype(float),
            "push_opt_in": 1.0,
            "call_consent": 1.0,
            "region": rng.choice(["north", "south"], n),
        }
    )
    actions = rng.choice(catalog.names, n)
    y = (actions == "push") & (frame["tech_in_30d"] > 15)
    template = DecisionModel(
        None, ["tech_in_30d", "push_opt_in", "call_consent"], {"region": ["north", "south"]}, catalog.names
    )  # type: ignore[arg-type]
    x = template.design(frame, actions)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 20},
        lgb.Dataset(x, y.astype(float), categorical_feature=[3, 4]),
        num_boost_round=40,
    )
    return DecisionModel(booster, template.numeric, template.categorical, catalog.names)
