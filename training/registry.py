"""MLflow for training: one experiment per action catalog, the run's lineage, a registry version per run.

Registering never moves the champion by itself: the training jobs (training.job) move it through the
gate (training.gate), which also decides a model name's first champion. Only ``log_and_register``, a
set-up helper for tests and tools, makes a first version champion without a gate.
"""

from __future__ import annotations

import json
import re
import sqlite3
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.digest_utils import MAX_ROWS, get_normalized_md5_digest
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.models import infer_signature
from mlflow.tracking.fluent import ActiveRun

from nexttouch.catalog import Catalog, load_catalog
from nexttouch.model import DecisionModel
from nexttouch.schemas import DECIDED_AT, OUTCOME
from nexttouch.settings import Settings, default_model_name
from nexttouch.tracking import configure_mlflow
from training import promotion
from training.dataset import TrainingSet
from training.pyfunc import DecisionPyfunc


@dataclass(frozen=True)
class Registered:
    run_id: str
    version: str


def _requirements() -> list[str]:
    """Pinned from this environment: MLflow's own inference costs ~10 s per run."""
    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "lightgbm", "numpy", "pandas", "scikit-learn")]


# MLflow 3 opens an experiment without this tag in its GenAI view (traces, judges); ours hold model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
NOTE = "mlflow.note.content"  # what the UI shows as the description of an experiment, run or version


def experiment_name(settings: Settings, catalog: Catalog | None = None) -> str:
    """``Next best action: catalog.yaml (none, push, ...)``: one experiment per catalog and registered model.

    The catalog file names the experiment when the model has its per-catalog default name; a model named
    by NEXTTOUCH_MODEL_NAME names it instead.
    """
    catalog = catalog or load_catalog(settings.catalog_path)
    if settings.model_name == default_model_name(settings.catalog_path):
        label = settings.catalog_path.name if settings.catalog_path else "catalog.yaml"
    else:
        label = settings.model_name
    return f"Next best action: {label} ({', '.join(catalog.names)})"


def experiment_description(settings: Settings, catalog: Catalog, experiment: str) -> str:
    """What the experiment holds and where to look, as the UI shows it above the runs."""
    source = f"`{settings.catalog_path}`" if settings.catalog_path else "shipped with nexttouch"
    return (
        f"Decision models of **nexttouch** for the action catalog {source}: {', '.join(catalog.names)}.\n\n"
        "Each run trains one LightGBM model on the labelled decisions, evaluates it on the latest decisions "
        "against the champion and the best single action, and registers it as "
        f"`{settings.model_name}`; the gate decides whether it becomes `@{settings.champion_alias}`, which "
        "the service follows. Runs are named for what made them: `nightly <day>` (the nightly job), "
        "`train <time>` (`nexttouch train`), `demo`.\n\n"
        "A run's **Overview** holds the gate's verdict and the evaluation report with its figures, "
        "**Model metrics** the learning curve and every number by section, **Artifacts** the model and the "
        "report's files. "
        f"[Runs in the model-training view](#/experiments/{experiment}?workflowType=machine_learning) · "
        f"[registered model](#/models/{settings.model_name})"
    )


def experiment_id(settings: Settings, name: str, catalog: Catalog | None = None) -> str:
    """The experiment, created on first use with its artifacts under mlruns/ (or with a tracking server's),
    tagged for model training and, given the catalog, described."""
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
    # A tracking server keeps the artifacts itself (proxied, readable from every host); else mlruns/.
    served = settings.resolved_tracking_uri.startswith(("http://", "https://"))
    location = None if served else f"{settings.artifact_root}/{slug}"
    created = client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    if catalog is not None:
        client.set_experiment_tag(created, NOTE, experiment_description(settings, catalog, created))
    return created


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
    catalog = catalog or load_catalog(settings.catalog_path)
    exp = experiment_id(settings, experiment_name(settings, catalog), catalog)
    return mlflow.start_run(experiment_id=exp, tags=tags, run_name=run_name)


LEARNING_CURVE = "learning_curve"
# Off-policy estimates kept as metrics; the IPS and SNIPS intervals are in evaluation/policy_values.csv.
POLICY_STATS = ("dr_low", "dr_high", "dr", "ips", "snips", "true")
_GROUPS = (  # (pattern of a flat metric name, its name in MLflow: the part before "/" is the UI's section)
    (r"(train|valid|test)_rows", r"data/\1_rows"),
    (r"best_iteration", r"valid/best_iteration"),
    (r"valid_(.+)", r"valid/\1"),
    (r"test_(auc|logloss|ece)", r"test/\1"),
    (r"test_(auc|logloss|ece|qini|auuc)_(.+)", r"test_by_action/\2/\1"),
    (rf"policy_(.+)_({'|'.join(POLICY_STATS)})", r"policy_value/\1/\2"),
    (r"paired_(.+)_(diff|low|high|differ)", r"paired/\1/\2"),
    (r"share_of_oracle_margin_(.+)", r"oracle_share/margin_\1"),
    (r"new_share_of_oracle_gain", r"oracle_share/gain_new"),
    (r"single_value_(.+)", r"single_action_value/\1"),
)


def log_learning_curve(curves: dict[str, list[float]]) -> None:
    """LightGBM's log loss per boosting round on each period, one metric per period with a step per round
    (``learning_curve/valid_logloss``): the UI draws them as curves over the rounds."""
    from mlflow.entities import Metric

    run = mlflow.active_run()
    if run is None:
        return
    now = int(time.time() * 1000)
    points = [
        Metric(f"{LEARNING_CURVE}/{period}_logloss", float(v), now, step)
        for period, curve in curves.items()
        for step, v in enumerate(curve, start=1)
    ]
    client = MlflowClient()
    for lo in range(0, len(points), 1000):  # the tracking store's batch limit
        client.log_batch(run.info.run_id, metrics=points[lo : lo + 1000])


def grouped(metrics: dict[str, float]) -> dict[str, float]:
    """The run's metrics under MLflow names grouped by section (``test/auc``, ``policy_value/new/dr``),
    finite values only. A flat name of no group is left out: the rest derive from these (``ope_dr_error``
    is DR minus the true value) or repeat them (the gate's numbers are the paired comparisons)."""
    out = {}
    for key, value in metrics.items():
        for pattern, name in _GROUPS:
            if re.fullmatch(pattern, key) and np.isfinite(value):
                out[re.sub(f"^{pattern}$", name, key)] = float(value)
                break
    return out


TrainingData = pd.DataFrame | TrainingSet  # a training set in memory, or on disk (read a range at a time)


def decided_at_range(data: TrainingData) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The first and the last decision time of a training set (one on disk is in time order)."""
    if isinstance(data, TrainingSet):
        return data.read(0, 1)[DECIDED_AT].iloc[0], data.read(len(data) - 1)[DECIDED_AT].iloc[0]
    return data[DECIDED_AT].min(), data[DECIDED_AT].max()


def example_rows(data: TrainingData, n: int = 5) -> pd.DataFrame:
    """The first ``n`` rows of a training set."""
    return data.read(0, n) if isinstance(data, TrainingSet) else data.head(n)


def data_tags(settings: Settings, data: TrainingData, catalog: Catalog) -> dict[str, str]:
    """What the model was trained on: the data window, the feature service, the catalog."""
    first, last = decided_at_range(data)
    return {
        "data_window": f"{first.isoformat()} .. {last.isoformat()}",
        "feature_service": settings.feature_service,
        "catalog": ",".join(catalog.names),
    }


def log_training_set(settings: Settings, data: TrainingData) -> None:
    """Dataset lineage: the training set as an MLflow dataset (schema, digest, profile, source)."""
    # A plain path string matches two registered source types (MLflow warns): name the type.
    uri = json.dumps({"uri": str(settings.raw_dir / "decisions.parquet")})
    source = get_dataset_source_from_json(uri, source_type="local")
    if isinstance(data, TrainingSet):
        dataset: PandasDataset = _DatasetOnDisk(data, source)
    else:
        dataset = mlflow.data.from_pandas(data, source=source, targets=OUTCOME, name="training_set")
    mlflow.log_input(dataset, context="training", tags={"feature_service": settings.feature_service})


class _DatasetOnDisk(PandasDataset):
    """A training set on disk as MLflow's pandas dataset: the digest MLflow computes for a frame (it
    reads the first ``MAX_ROWS`` rows and the row count), the profile of all rows, without reading them."""

    def __init__(self, data: TrainingSet, source: DatasetSource) -> None:
        head = data.read(0, MAX_ROWS)
        self._rows = len(data)
        text = head.columns[head.map(lambda v: type(v) is str).all(0)]
        kept = head[text.union(head.select_dtypes(include=[np.number]).columns)]
        parts = [pd.util.hash_pandas_object(kept).values, np.int64(len(data))]
        digest = get_normalized_md5_digest(parts + [str(c).encode() for c in head.columns])
        super().__init__(head, source=source, targets=OUTCOME, name="training_set", digest=digest)

    @property
    def profile(self) -> dict[str, int]:
        return {"num_rows": self._rows, "num_elements": self._rows * self._df.shape[1]}


def log_model_version(
    settings: Settings, model: DecisionModel, example: TrainingData, name: str = "decision_model"
) -> str:
    """Log the whole decision model to the active run (signature + input example) as ``name`` and register it."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "decision_model")
        # Numeric features are optional doubles in the signature: Feast returns NaN for gaps.
        example = example_rows(example)[model.inputs].astype(dict.fromkeys(model.numeric, "float64"))
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
    client = MlflowClient()
    history = (client.get_registered_model(settings.model_name).description or "").partition(promotion.HISTORY_HEADING)
    about = model_description(settings) + (f"\n\n{history[1]}{history[2]}" if history[1] else "")
    client.update_registered_model(settings.model_name, about)  # the champion history section kept
    return str(info.registered_model_version)


def model_description(settings: Settings) -> str:
    """The registered model's description: what it is, its aliases and where its history is."""
    catalog = load_catalog(settings.catalog_path)
    source = f"`{settings.catalog_path}`" if settings.catalog_path else "shipped with nexttouch"
    return (
        f"The nexttouch decision model for the action catalog {source} ({', '.join(catalog.names)}): "
        "encoders, one LightGBM booster over every action and the calibration, as one MLflow model that "
        "gives P(success) of each action.\n\n"
        f"Every training run registers a version. The gate moves `@{settings.champion_alias}`, which the "
        "service loads and follows, and `@previous` (what `nexttouch rollback` restores); each version's "
        "description holds the gate's verdict and the numbers behind it. `nexttouch champion-history` "
        f"lists every move of `@{settings.champion_alias}`: when, which version, who and why."
    )


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
