"""MLflow for training: one experiment per action catalog, the run's lineage, a registry version per run.

Registering never moves the champion by itself: the training jobs (training.job) move it through the
gate (training.gate), which also decides a model name's first champion. Only ``log_and_register``, a
set-up helper for tests and tools, makes a first version champion without a gate.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.models import infer_signature
from mlflow.tracking.fluent import ActiveRun

from nexttouch.catalog import Catalog, load_catalog
from nexttouch.model import DecisionModel
from nexttouch.schemas import DECIDED_AT, OUTCOME
from nexttouch.settings import Settings
from nexttouch.tracking import configure_mlflow
from training import promotion
from training.pyfunc import DecisionPyfunc


@dataclass(frozen=True)
class Registered:
    run_id: str
    version: str


def _requirements() -> list[str]:
    """Pinned from this environment: MLflow's own inference costs ~10 s per run."""
    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "lightgbm", "numpy", "pandas", "scikit-learn")]


def experiment_name(settings: Settings, catalog: Catalog | None = None) -> str:
    """``<model name>/<catalog file stem>-<hash of the action names>``: runs of one catalog together,
    and a catalog whose actions change gets a new experiment even under the same file name."""
    catalog = catalog or load_catalog(settings.catalog_path)
    stem = settings.catalog_path.stem if settings.catalog_path else "catalog"
    digest = hashlib.sha256(",".join(catalog.names).encode()).hexdigest()[:8]
    return f"{settings.model_name}/{stem}-{digest}"


def experiment_id(settings: Settings, name: str) -> str:
    """The experiment, created with its artifacts under mlruns/ on first use."""
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=f"{settings.artifact_root}/{name}")


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking store cannot be reached: fail before doing any work."""


def check_tracking(settings: Settings) -> None:
    """Fail in seconds when the tracking store is unusable (MLflow itself retries a broken SQLite
    database for ~100 s, and a tracking server for minutes, before giving up)."""
    uri = settings.resolved_tracking_uri
    try:
        path = Path(uri.removeprefix("sqlite:///"))
        if uri.startswith("sqlite:///") and path.exists():
            with closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=10)) as db:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        elif uri.startswith(("http://", "https://")):
            httpx.get(f"{uri.rstrip('/')}/health", timeout=10).raise_for_status()
        configure_mlflow(settings)
        MlflowClient().search_experiments(max_results=1)
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:300]
        raise TrackingUnavailable(f"MLflow tracking store {uri} unreachable: {type(exc).__name__}: {first}") from exc


def start_run(
    settings: Settings, catalog: Catalog | None, tags: dict[str, str], run_name: str | None = None
) -> ActiveRun:
    """A run in the catalog's experiment (use as a context manager), named for what it is
    (``nightly 2026-12-04``, ``train 2026-12-04 21:00``)."""
    configure_mlflow(settings)
    exp = experiment_id(settings, experiment_name(settings, catalog))
    return mlflow.start_run(experiment_id=exp, tags=tags, run_name=run_name)


def log_learning_curve(curve: list[float], key: str = "learning_valid_logloss") -> None:
    """The booster's validation loss per boosting round, one metric with a step per round (a chart in the UI)."""
    from mlflow.entities import Metric

    run = mlflow.active_run()
    if run is None or not curve:
        return
    now = int(time.time() * 1000)
    points = [Metric(key, float(v), now, step) for step, v in enumerate(curve, start=1)]
    client = MlflowClient()
    for lo in range(0, len(points), 1000):  # the tracking store's batch limit
        client.log_batch(run.info.run_id, metrics=points[lo : lo + 1000])


def data_tags(settings: Settings, data: pd.DataFrame, catalog: Catalog) -> dict[str, str]:
    """What the model was trained on: the data window, the feature service, the catalog."""
    return {
        "data_window": f"{data[DECIDED_AT].min().isoformat()} .. {data[DECIDED_AT].max().isoformat()}",
        "feature_service": settings.feature_service,
        "catalog": ",".join(catalog.names),
    }


def log_training_set(settings: Settings, data: pd.DataFrame) -> None:
    """Dataset lineage: the training set as an MLflow dataset (schema, digest, profile, source)."""
    # A plain path string matches two registered source types (MLflow warns): name the type.
    uri = json.dumps({"uri": str(settings.raw_dir / "decisions.parquet")})
    source = get_dataset_source_from_json(uri, source_type="local")
    dataset = mlflow.data.from_pandas(data, source=source, targets=OUTCOME, name="training_set")
    mlflow.log_input(dataset, context="training", tags={"feature_service": settings.feature_service})


def log_model_version(
    settings: Settings, model: DecisionModel, example: pd.DataFrame, name: str = "decision_model"
) -> str:
    """Log the whole decision model to the active run (signature + input example) as ``name`` and register it."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "decision_model")
        # Numeric features are optional doubles in the signature: Feast returns NaN for gaps.
        example = example[model.inputs].head(5).astype(dict.fromkeys(model.numeric, "float64"))
        output = DecisionPyfunc().predict_with(model, example)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=DecisionPyfunc(),
            artifacts={"decision_model": str(Path(tmp) / "decision_model")},
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=_requirements(),
            registered_model_name=settings.model_name,
        )
    return str(info.registered_model_version)


def log_and_register(
    settings: Settings,
    model: DecisionModel,
    params: dict[str, object],
    metrics: dict[str, float],
    example: pd.DataFrame,
    tags: dict[str, str],
    promote: bool = True,
) -> Registered:
    """One run: params, metrics, training set, the decision model, a registry version.

    With ``promote``, the version becomes champion only if the model has none yet, without any gate
    (a registry set up for tests or tools); an existing champion is replaced only through the gate.
    """
    with start_run(settings, None, tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        log_training_set(settings, example)
        registered = log_model_version(settings, model, example)
    if promote and promotion.alias_version(settings, settings.champion_alias) is None:
        promotion.promote(settings, registered, promotion.actor("log_and_register"), "first version of the model")
    return Registered(run.info.run_id, registered)
