"""The training step: decision log -> labels -> training set -> model -> evaluation -> registry -> gate.

``run_training`` is `nexttouch train` on the data already ingested; the nightly job
(nexttouch.jobs.nightly) runs the same steps after ingest and features, inside its own MLflow run.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import mlflow
import pandas as pd
import pyarrow.parquet as pq
from mlflow.entities import RunInfo

from nexttouch.catalog import Catalog
from nexttouch.registry_io import load_registered
from nexttouch.schemas import SIGNUP_AT
from nexttouch.settings import Settings
from training.dataset import TrainingSet, label_decisions, latest_decisions, training_set, write_training_set
from training.evaluate import Evaluation, evaluate, log_evaluation
from training.gate import Verdict, decide
from training.promotion import Move, actor, alias_version, promote
from training.registry import (
    NOTE,
    Registered,
    TrainingData,
    check_tracking,
    data_tags,
    decided_at_range,
    grouped,
    log_learning_curve,
    log_model_version,
    log_training_set,
    start_run,
)
from training.train import TrainResult, constant_model, fit

log = logging.getLogger(__name__)
MIN_ROWS = 200  # fewer labelled decisions than this cannot train and test a model


class InvalidTrainingData(ValueError):
    """The labelled decisions cannot make a model (too few, or one outcome only)."""


@dataclass(frozen=True)
class TrainReport:
    registered: Registered
    metrics: dict[str, float]
    rows: int
    unlabelled: int
    verdict: Verdict
    move: Move | None  # the champion move: the candidate promoted, or the best single action served

    @property
    def promoted(self) -> bool:
        return self.verdict.promote and self.move is not None


def labelled_decisions(settings: Settings, catalog: Catalog, as_of: datetime | None = None) -> tuple[pd.DataFrame, int]:
    """Decisions with a known outcome (feedback or attribution) and how many still wait for one, among the
    latest ``settings.training_decisions``."""
    decisions = latest_decisions(settings.raw_dir / "decisions.parquet", settings.training_decisions)
    labelled, open_window = label_decisions(settings, decisions, catalog, as_of)
    if len(labelled) < MIN_ROWS or labelled["outcome"].nunique() < 2:
        raise InvalidTrainingData(
            f"{len(labelled)} labelled decisions with outcomes {sorted(labelled['outcome'].unique())}: "
            f"need at least {MIN_ROWS} and both 0 and 1"
        )
    return labelled, open_window


def build_training_set(settings: Settings, labelled: pd.DataFrame) -> pd.DataFrame:
    """Features as they were at each decision (Feast); every row already has its label."""
    return training_set(settings, labelled)


@contextmanager
def training_set_on_disk(settings: Settings, labelled: pd.DataFrame) -> Iterator[TrainingSet]:
    """The training set of ``labelled`` written under the project's data directory (on storage the
    Dask workers share when there is a cluster) for the length of the ``with`` block."""
    work = settings.data_dir / "tmp" / f"training-set-{uuid.uuid4().hex[:12]}"
    try:
        yield write_training_set(settings, labelled, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def train_model(settings: Settings, data: TrainingData, catalog: Catalog) -> TrainResult:
    """LightGBM locally, or on the Dask cluster when ``settings.dask_scheduler`` names one."""
    return fit(data, catalog, dask_scheduler=settings.dask_scheduler)


def evaluate_register_gate(
    settings: Settings,
    catalog: Catalog,
    data: TrainingData,
    result: TrainResult,
    by: str,
    validated: bool = True,
    step: StepTimer | None = None,
) -> tuple[Registered, Evaluation, Verdict, Move | None]:
    """Inside the active MLflow run: evaluate against the champion and the best single action, log
    everything, register, gate, and move the champion alias to what the gate says to serve."""
    step = step or StepTimer()
    run = mlflow.active_run()
    assert run is not None, "call inside an MLflow run"
    mlflow.set_tags(data_tags(settings, data, catalog))
    mlflow.log_params(result.params)
    features = feature_message(settings, result)
    log.info("model features: %s", features)
    mlflow.set_tag("features", features)
    mlflow.log_params({"feature_count": len(result.model.inputs), "constant_features_left_out": len(result.constant)})
    mlflow.log_metrics(grouped(result.metrics))
    log_learning_curve(result.curves)
    log_training_set(settings, data)
    champion_version = alias_version(settings, settings.champion_alias)
    with step("evaluate"), tempfile.TemporaryDirectory() as tmp:
        champion = load_registered(settings) if champion_version else None
        if isinstance(result.train, TrainingSet):  # the training and validation periods, in time order
            fit_data: pd.DataFrame | TrainingSet = result.train.rows(0, len(result.train) + len(result.valid))
        else:
            fit_data = pd.concat([result.train, result.valid], ignore_index=True)
        out = Path(tmp) / "evaluation"
        ev = evaluate(result.model, result.test, catalog, settings, champion=champion, out_dir=out, fit_data=fit_data)
        log_evaluation(ev)
        report = next((p.read_text() for p in ev.artifacts if p.name == "report.md"), "")
    with step("register"):
        version = log_model_version(settings, result.model, data)
    with step("gate"):
        verdict = decide(
            validated,
            settings.gate_tolerance,
            ev.paired.get("new_vs_best_single"),
            ev.paired.get("new_vs_champion"),
            ev.paired.get("champion_vs_best_single"),
            has_champion=champion_version is not None,
        )
        now = alias_version(settings, settings.champion_alias)
        if verdict.serve != "champion" and now != champion_version:  # e.g. a rollback while this run trained
            stale = f"champion changed during the run (v{champion_version} -> v{now}): not compared"
            verdict = Verdict(False, stale, "champion", verdict.numbers)
        record_verdict(settings, version, verdict, champion_version, version_facts(result, ev, data, run.info))
        # The run's description (the overview page): the verdict first, then the evaluation's page.
        overview = _with_artifact_images(report, run.info.run_id)
        mlflow.set_tag(NOTE, f"**Gate {verdict_line(verdict, version)}**\n\n{overview}")
    move = None
    if verdict.serve == "candidate":
        with step("promote"):
            move = promote(settings, version, by, verdict.reason, _evidence(verdict, ev))
        log.info("%s v%s is @%s: %s", settings.model_name, version, settings.champion_alias, verdict.reason)
    elif verdict.serve == "best_single":
        with step("promote"):
            safe = register_best_single(settings, catalog, result, ev, data, version, verdict)
            move = promote(settings, safe, by, verdict.reason, _evidence(verdict, ev))
        log.warning("%s v%s not served: %s (v%s)", settings.model_name, version, verdict.reason, safe)
    else:
        log.info(
            "%s v%s registered, champion kept (v%s): %s", settings.model_name, version, champion_version, verdict.reason
        )
    return Registered(run.info.run_id, version), ev, verdict, move


def feature_message(settings: Settings, result: TrainResult) -> str:
    """Which features the model reads, for people: the brand's profile columns by name, the touch-history
    ones counted, and what is missing (no touch events, no sign-up dates) or left out as constant."""
    customers = settings.raw_dir / "customers.parquet"
    columns = set(pq.read_schema(customers).names) if customers.exists() else set()
    events = settings.raw_dir / "events.parquet"
    has_events = events.exists() and pq.read_metadata(events).num_rows > 0
    profile = [c for c in result.model.inputs if c in columns]
    history = [c for c in result.model.inputs if c not in columns]
    names = ", ".join(profile) or "none"
    parts = [
        f"profile features only: {names}" if not history else f"{len(history)} touch-history features; profile: {names}"
    ]
    if not has_events:
        parts.append("no touch events ingested")
    if customers.exists() and SIGNUP_AT not in columns:
        parts.append(f"no {SIGNUP_AT} (no tenure)")
    if result.constant:
        parts.append(f"{len(result.constant)} features constant in the training period left out")
    return "; ".join(parts)


def register_best_single(
    settings: Settings,
    catalog: Catalog,
    result: TrainResult,
    ev: Evaluation,
    data: TrainingData,
    refused: str,
    verdict: Verdict,
) -> str:
    """Register the best single action as a model of its own (same run) and return its version.

    Serving loads it like any model: it takes the action of highest constant value wherever it is
    allowed, its values are the actions' constant values, and no feature moves it.
    """
    single = constant_model(result.model, ev.single_values, catalog, result.test)
    version = log_model_version(settings, single, data, name="best_single_action")
    client = mlflow.MlflowClient()
    client.set_model_version_tag(settings.model_name, version, "policy", "best_single_action")
    client.set_model_version_tag(settings.model_name, version, "best_single_action", ev.best_single)
    why = f"Best single action ({ev.best_single} where allowed), served instead of v{refused}: {verdict.reason}."
    values = ", ".join(f"{a} {v:.3f}" for a, v in sorted(ev.single_values.items(), key=lambda kv: -kv[1]))
    client.update_model_version(settings.model_name, version, f"{why}\n\nValue per decision of each action: {values}.")
    mlflow.set_tag("served_version", version)
    return version


def record_verdict(
    settings: Settings, version: str, verdict: Verdict, champion_version: str | None, facts: str = ""
) -> None:
    """The verdict on the run and on the registered version: tags, and the version's description (the
    verdict, then ``facts``: the numbers it rests on)."""
    tags = {
        "gate": "passed" if verdict.promote else "refused",
        "gate_reason": verdict.reason,
        "gate_serves": verdict.serve,
        "champion_at_gate": champion_version or "none",
    }
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, version, key, value)
    mlflow.set_tags(tags)
    # The gate's other numbers are the paired comparisons, logged with the evaluation (paired/...).
    mlflow.log_param("gate_tolerance", verdict.numbers.get("tolerance", settings.gate_tolerance))
    served = {"candidate": "promoted to champion", "champion": f"champion kept (v{champion_version})"}
    outcome = served.get(verdict.serve, "the best single action is served instead")
    text = f"Gate {tags['gate']}, {outcome}: {verdict.reason}."
    client.update_model_version(settings.model_name, version, f"{text}\n\n{facts}".strip())


def version_facts(result: TrainResult, ev: Evaluation, data: TrainingData, run: RunInfo) -> str:
    """The numbers behind a version, for its description: quality on the test period, the paired
    comparisons the gate read, the data it learnt from and the run that made it."""
    m = ev.metrics
    rows = [
        ("test period", f"{int(m['test_rows']):,} decisions, AUC {m['test_auc']:.3f}, logloss {m['test_logloss']:.4f}"),
        ("trained on", f"{int(result.metrics['train_rows']):,} decisions ({len(data):,} with validation and test)"),
        ("data window", "{:%Y-%m-%d} .. {:%Y-%m-%d}".format(*decided_at_range(data))),
    ]
    names = {"new_vs_best_single": "vs best single action", "new_vs_champion": "vs champion"}
    names["champion_vs_best_single"] = "champion vs best single action"
    for key, pair in ev.paired.items():
        rows.append((names.get(key, key), f"{pair.text()} per decision, differs on {pair.differ:.0%}"))
    rows.append(("best single action", ev.best_single))
    rows.append(("run", f"{run.run_name} ({run.run_id})"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"| | |\n|---|---|\n{table}"


def verdict_line(verdict: Verdict, version: str) -> str:
    serves = {
        "candidate": f"v{version} promoted",
        "champion": "champion kept",
        "best_single": "best single action served",
    }
    return f"{'passed' if verdict.promote else 'refused'} ({serves[verdict.serve]}): {verdict.reason}"


def _with_artifact_images(markdown: str, run_id: str) -> str:
    """The report for the run's description, under the run's name instead of its own title: its figures
    point at the run's artifacts through the tracking server's ``get-artifact`` route, relative to the
    UI's address, so the overview shows them."""

    def image(line: str) -> str:
        found = re.fullmatch(r"!\[(.*)\]\(([^/)]+\.png)\)", line)
        if found is None:
            return line
        path = quote(f"evaluation/{found[2]}", safe="")
        return f"![{found[1]}](get-artifact?path={path}&run_uuid={run_id})"

    lines = [image(line) for line in markdown.splitlines() if not line.startswith("# ")]
    return "\n".join(lines).strip() + "\n"


def _evidence(verdict: Verdict, ev: Evaluation) -> dict[str, float]:
    """The numbers a champion move records: the paired comparisons and the test-period quality."""
    return {**verdict.numbers, **{k: ev.metrics[k] for k in ("test_auc", "test_logloss") if k in ev.metrics}}


def train_and_gate(
    settings: Settings, catalog: Catalog, as_of: datetime | None, by: str, step: StepTimer
) -> TrainReport:
    """Label -> training set -> train -> evaluate, register, gate, promote, each a timed step, inside the
    caller's MLflow run: the steps `nexttouch train` and the nightly job share."""
    with step("label"):
        labelled, open_window = labelled_decisions(settings, catalog, as_of)
    with ExitStack() as stack:  # the training set on disk lives until the gate has read it
        with step("training_set"):
            data = stack.enter_context(training_set_on_disk(settings, labelled))
        with step("train"):
            result = train_model(settings, data, catalog)
        # evaluate, register, gate and promote are steps of their own inside
        registered, ev, verdict, move = evaluate_register_gate(settings, catalog, data, result, by, step=step)
        rows = len(data)
    return TrainReport(registered, {**result.metrics, **ev.metrics}, rows, open_window, verdict, move)


def run_training(
    settings: Settings,
    catalog: Catalog,
    as_of: datetime | None = None,
    by: str | None = None,
    run_name: str | None = None,
) -> TrainReport:
    """`nexttouch train`: train on the ingested data, register the version; the gate decides on the champion.

    The run is named ``run_name`` (the demo passes ``demo``), by default ``train <UTC time>``.
    """
    step = StepTimer()
    check_tracking(settings)
    name = run_name or f"train {datetime.now(UTC):%Y-%m-%d %H:%M}"
    with start_run(settings, catalog, {"code_version": git_commit(), "job": "train"}, run_name=name):
        report = train_and_gate(settings, catalog, as_of, by or actor("nexttouch train"), step)
        mlflow.log_metrics(step.metrics())
    return report


class StepTimer:
    """Times named steps (``with timer("train"): ...``), logs each, keeps them for the MLflow run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current: str | None = None  # the step running (or that failed)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        log.info("step %s ...", name)
        self.current = name
        start, outcome = time.monotonic(), "failed"
        try:
            yield
            outcome = "done"
        finally:
            self.seconds[name] = time.monotonic() - start
            log.info("step %s %s in %.2fs", name, outcome, self.seconds[name])

    def metrics(self) -> dict[str, float]:
        """Seconds per step, as MLflow metrics of one section."""
        return {f"step_seconds/{k}": round(v, 3) for k, v in self.seconds.items()}


def git_commit() -> str:
    """The code version of this run (short commit, ``+dirty`` with uncommitted changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
