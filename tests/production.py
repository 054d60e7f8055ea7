"""The production profile on this machine's shared services, for the tests and benchmarks that need every store
shared: Redis on 127.0.0.1:6379 (a db number and a Feast project of the caller's own), throwaway PostgreSQL
databases on 127.0.0.1:5432 (decision log, Feast SQL registry, MLflow) and an `mlflow server` on PostgreSQL.

    with deployment(base, catalog, redis_db=13) as trainer:   # features in Redis, a champion on the MLflow server
        host = replica_host(trainer, base / "host-a")         # what a serving host holds: repo, identity map
        ...
    # databases dropped, MLflow server stopped, the project's Redis keys deleted
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from nexttouch.catalog import Catalog
from nexttouch.locks import redis_client
from nexttouch.settings import Settings, load_settings
from nexttouch.telemetry import TELEMETRY_OFF
from tests.conftest import END, POSTGRES, SMALL, free_port

REDIS = "127.0.0.1:6379"


@contextlib.contextmanager
def databases(*purposes: str) -> Iterator[dict[str, str]]:
    """One throwaway database per purpose on the loopback PostgreSQL (URL by purpose), dropped afterwards."""
    import psycopg

    tag = uuid.uuid4().hex[:8]
    names = {p: f"nexttouch_test_{p}_{tag}" for p in purposes}
    try:
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
            for name in names.values():
                admin.execute(f'CREATE DATABASE "{name}"')
        yield {p: f"{POSTGRES}/{name}" for p, name in names.items()}
    finally:
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
            for name in names.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlalchemy_url(url: str) -> str:
    """A postgresql:// URL for SQLAlchemy with psycopg 3 (a bare postgresql:// means psycopg2, not installed)."""
    return "postgresql+psycopg://" + url.split("://", 1)[1]


@dataclass
class MlflowServer:
    """`mlflow server` on a PostgreSQL backend store, serving the artifacts from a directory of its own."""

    backend: str
    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        """Start it without waiting (a new database takes ~20 s of migrations): see :meth:`wait`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        mlflow = str(Path(sys.executable).with_name("mlflow"))
        cmd = [mlflow, "server", "--backend-store-uri", sqlalchemy_url(self.backend)]
        cmd += ["--serve-artifacts", "--artifacts-destination", str(self.directory / "artifacts")]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, **TELEMETRY_OFF}
        with (self.directory / "server.log").open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=self.directory, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def wait(self, timeout_s: float = 180.0) -> MlflowServer:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}; see {self.directory}/server.log")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.5)
        raise TimeoutError(f"mlflow server not up after {timeout_s:.0f}s; see {self.directory}/server.log")

    def stop(self) -> None:
        """SIGTERM to the CLI and its uvicorn worker at once (the CLI alone waits for the worker), SIGKILL to
        whatever is left 10 s later."""
        if self.proc is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.proc.pid)
            tree = [root, *root.children(recursive=True)]
            for p in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.terminate()
            _gone, alive = psutil.wait_procs(tree, timeout=10)
            for p in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
        self.proc.wait(timeout=10)


def forget_redis(redis_url: str, feast_project: str) -> int:
    """Delete a Feast project's keys (they end with its name) and its locks; how many were deleted."""
    client = redis_client(redis_url)
    patterns = (f"*{feast_project}", f"nexttouch:{feast_project}:*")
    keys = [key for pattern in patterns for key in client.scan_iter(match=pattern.encode())]
    return client.delete(*keys) if keys else 0


def _own_feast_project(project_dir: Path, name: str) -> None:
    from nexttouch.jobs.project import copy_feature_repo

    repo = copy_feature_repo(project_dir)
    yaml = repo / "feature_store.redis.yaml"
    yaml.write_text(yaml.read_text().replace("project: nexttouch", f"project: {name}"))


@dataclass(frozen=True)
class Shared:
    """The stores every host of one deployment shares."""

    redis_url: str
    feast_registry_url: str
    decision_log_url: str
    tracking_uri: str
    feast_project: str
    model_name: str

    def settings(self, project_dir: Path, **overrides: object) -> Settings:
        return load_settings(
            project_dir=project_dir,
            online_store="redis",
            redis_url=self.redis_url,
            feast_registry_url=self.feast_registry_url,
            decision_log_url=self.decision_log_url,
            tracking_uri=self.tracking_uri,
            model_name=self.model_name,
            **{**SMALL, **overrides},
        )


@contextlib.contextmanager
def deployment(
    base: Path, catalog: Catalog, redis_db: int, source: Settings | None = None, **overrides: object
) -> Iterator[Settings]:
    """A trainer's project on the shared stores: features applied to the SQL registry and loaded into Redis, a
    champion on the MLflow server. From nothing, the brand is simulated and a model trained and gated on the
    server; from ``source`` (a built project), its ingested data is copied and its champion registered on the
    server as the first version (minutes of training saved). What it made in the shared services is removed
    afterwards. ``overrides`` are settings of the trainer (e.g. ``customers``) over the tests' small brand."""
    from features.pipeline import build_offline, feast_apply
    from nexttouch.ingest import ingest
    from nexttouch.jobs.online import load_online
    from nexttouch.simulate import write_brand
    from training.job import run_training

    tag = uuid.uuid4().hex[:10]
    with databases("log", "feast", "mlflow") as db:
        mlflow = MlflowServer(db["mlflow"], base / "mlflow-server").start()
        shared = Shared(
            f"{REDIS},db={redis_db}", db["feast"], db["log"], mlflow.url, f"nt_prod_{tag}", f"nexttouch-prod-{tag}"
        )
        try:
            project = base / "trainer"
            _own_feast_project(project, shared.feast_project)
            settings = shared.settings(project, **overrides)
            if source is None:
                write_brand(settings, catalog, END, settings.landing_dir)
                ingest(settings, catalog, settings.landing_dir, now=END)
                build_offline(settings, END, settings.days)
            else:
                for part in ("raw", "offline"):
                    shutil.copytree(source.data_dir / part, settings.data_dir / part)
            feast_apply(settings)
            load_online(settings, END)
            mlflow.wait()
            if source is None:
                run_training(settings, catalog, run_name="production profile")
            else:
                _register_champion_of(source, settings)
            yield settings
        finally:
            mlflow.stop()
            forget_redis(shared.redis_url, shared.feast_project)


def _register_champion_of(source: Settings, settings: Settings) -> str:
    """``source``'s champion logged and registered on ``settings``' tracking server (its first version becomes
    champion): the registry path of training, without the training."""
    from mlflow.models import Model

    from nexttouch.registry_io import alias_version, load_version
    from nexttouch.schemas import OUTCOME
    from training.registry import log_and_register

    version = alias_version(source)
    assert version is not None, "the source project has no champion"
    model = load_version(source, version)
    local = source.models_dir / source.model_name / f"v{version}"
    example = Model.load(str(local)).load_input_example(str(local))
    labelled = example.assign(**{OUTCOME: 0})  # the run's dataset lineage names its label column
    return log_and_register(settings, model, {}, {}, labelled, {"job": "copied champion"}).version


def replica_host(trainer: Settings, directory: Path, **overrides: object) -> Settings:
    """What a serving host holds of its own: the feature repo and the identity map (data/raw); nothing else of
    the trainer's directory (no offline data, tracking store, model cache or lock files)."""
    repo = trainer.feature_repo
    shutil.copytree(repo, directory / "features", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(trainer.raw_dir, directory / "data" / "raw")
    return trainer.model_copy(update={"project_dir": directory, **overrides})
