"""The whole production profile on shared services: Redis online store (127.0.0.1:6379, db 13), Feast's SQL
registry, the decision and event log and an `mlflow server` all on PostgreSQL (127.0.0.1:5432, throwaway
databases). A small brand goes from nothing to decisions: simulated, features applied and loaded, a model
trained and gated on the MLflow server, served by `bentoml serve` from a directory holding only the feature repo
and the identity map."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from pydantic import ValidationError

from nexttouch.catalog import Catalog
from nexttouch.locks import redis_client
from nexttouch.settings import ProfileError, Settings, load_settings
from serving import server
from tests.conftest import free_port
from tests.production import deployment, replica_host

REDIS_DB = 13


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> Iterator[Settings]:
    with deployment(tmp_path_factory.mktemp("production"), catalog, REDIS_DB) as settings:
        yield settings


@pytest.mark.slow
@pytest.mark.service
def test_the_demo_decides_end_to_end_with_every_store_shared(trainer: Settings, tmp_path: Path) -> None:
    from nexttouch.registry_io import alias_version

    # Feast: the registry is in PostgreSQL, not a file; the features are in Redis.
    assert not (trainer.data_dir / "feast" / "registry.redis.db").exists()
    project = trainer.feature_repo.joinpath("feature_store.redis.yaml").read_text().split("project: ")[1].split()[0]
    with psycopg.connect(trainer.feast_registry_url) as db:
        views = {
            r[0] for r in db.execute("SELECT feature_view_name FROM feature_views WHERE project_id = %s", [project])
        }
    assert {"touch_history", "customer_profile"} <= views, views
    assert sum(1 for _ in redis_client(trainer.redis_url).scan_iter(match=f"*{project}".encode())) >= 400

    # MLflow: the champion is registered on the server, its artifacts kept by the server, none in mlruns/.
    champion = alias_version(trainer)
    assert champion is not None
    server_dir = trainer.project_dir.parent / "mlflow-server"
    assert list((server_dir / "artifacts").rglob("MLmodel"))
    assert not list(trainer.mlruns_dir.rglob("MLmodel"))

    # Serving from another directory: the model comes from the server, decisions go to PostgreSQL.
    host = replica_host(trainer, tmp_path / "host", port=free_port())
    key = secrets.token_urlsafe(16)
    proc = server.start(host, tmp_path / "serve.log", api_key=key)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{host.port}", headers={"X-API-Key": key}, timeout=10) as c:
            answers = [c.post("/decide", json={"customer_id": f"C{i:07d}"}) for i in range(1, 21)]
            event = {"event_id": "prod-1", "customer_id": "C0000003", "touch_type": "app_session"}
            events = c.post("/events", json={"events": [{**event, "occurred_at": "2026-12-01T10:00:00Z"}]})
            model = c.get("/model").json()
    finally:
        server.stop(proc)
    assert [r.status_code for r in answers] == [200] * 20, [r.text[:200] for r in answers if r.status_code != 200]
    decided = [r.json() for r in answers]
    assert not [a for a in decided if a["fallback"]]  # features read from Redis for every known customer
    assert {a["model_version"] for a in decided} == {champion} and model["model_version"] == champion
    assert events.status_code == 200 and events.json()["accepted"] == 1, events.text
    assert (host.models_dir / host.model_name / f"v{champion}" / "MLmodel").exists()  # downloaded from the server
    with psycopg.connect(trainer.decision_log_url) as db:
        ids = [a["decision_id"] for a in decided]
        logged = db.execute("SELECT count(*) FROM decisions WHERE decision_id = ANY(%s)", [ids]).fetchone()[0]
        kept = db.execute("SELECT count(*) FROM touch_events WHERE event_id = 'prod-1'").fetchone()[0]
    assert (logged, kept) == (20, 1)


def test_the_registry_setting_is_a_url_masked_like_the_others(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NEXTTOUCH_")},
        "NEXTTOUCH_ONLINE_STORE": "redis",
        "NEXTTOUCH_FEAST_REGISTRY_URL": "postgresql://feast:pw-that-must-not-show@db:5432/feast",
    }
    code = f"from nexttouch.cli import app\napp(['config', '--project-dir', {str(tmp_path)!r}])\n"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("feast_registry_url"))
    assert 'feast_registry_url = "postgresql://feast:***@db:5432/feast"' in line and line.endswith("# env")
    assert "must-not-show" not in out

    (tmp_path / "nexttouch.toml").write_text('feast_registry_url = "postgresql://feast:hunter2@db/feast"\n')
    with pytest.raises(ProfileError, match="feast_registry_url holds a password"):
        load_settings(project_dir=tmp_path, online_store="redis")


def test_a_shared_registry_needs_the_shared_online_store(tmp_path: Path) -> None:
    from nexttouch.feature_store import registry_variables

    with pytest.raises(ValidationError, match="feast_registry_url needs the redis online store"):
        load_settings(project_dir=tmp_path, feast_registry_url="postgresql://db/feast")
    shared = load_settings(project_dir=tmp_path, online_store="redis", feast_registry_url="postgresql://db/feast")
    assert registry_variables(shared) == {
        "NEXTTOUCH_FEAST_REGISTRY_TYPE": "sql",
        "NEXTTOUCH_FEAST_REGISTRY_PATH": "postgresql+psycopg://db/feast",  # psycopg 3, the driver installed
    }
    local = load_settings(project_dir=tmp_path, online_store="redis")
    assert registry_variables(local)["NEXTTOUCH_FEAST_REGISTRY_TYPE"] == "file"
    assert registry_variables(local)["NEXTTOUCH_FEAST_REGISTRY_PATH"] == str(
        tmp_path.resolve() / "data" / "feast" / "registry.redis.db"
    )
