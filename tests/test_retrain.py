"""`nexttouch retrain` on a private copy of the built project: one full nightly run, then the same day
again (nothing to do), corrupted input (fails, champion and data unchanged) and a held lock (refused)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from nexttouch.catalog import Catalog
from nexttouch.cli import app
from nexttouch.jobs.nightly import RetrainFailed, exclusive, lock_path, marker_path, retrain
from nexttouch.registry_io import alias_version
from nexttouch.settings import Settings
from tests.conftest import END, SMALL
from tests.reliability import clone_project
from training.promotion import champion_history

pytestmark = pytest.mark.slow
DAY = END.date()
STEPS = ["tracking", "ingest", "validate", "features", "materialize", "label", "training_set", "train", "evaluate"]


@pytest.fixture(scope="module")
def nightly(built: Settings, tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> tuple[Settings, str]:
    """The copy after one full nightly run for END's day; returns it with the champion before the run."""
    project = clone_project(built, tmp_path_factory.mktemp("retrain") / "project")
    # The copied Feast registry records the original's online tables as its infra: `feast apply` in the
    # copy would drop them from the original's online store. The nightly run applies a fresh one.
    (project.data_dir / "feast" / "registry.db").unlink()
    champion = alias_version(project, "champion")
    assert champion is not None
    first = retrain(project, catalog, DAY)
    assert not first.skipped and first.train is not None
    return project, champion


def _cli(project: Settings, monkeypatch: pytest.MonkeyPatch, *args: str, day: date = DAY) -> Result:
    for key, value in {"PROJECT_DIR": project.project_dir, **SMALL}.items():
        monkeypatch.setenv(f"NEXTTOUCH_{key.upper()}", str(value))
    return CliRunner().invoke(app, ["retrain", "--date", day.isoformat(), *args])


def test_a_nightly_run_logs_every_step_and_a_second_run_does_nothing(
    nightly: tuple[Settings, str], catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, champion = nightly
    marker = json.loads(marker_path(project, DAY).read_text())
    assert marker["status"] == "done" and marker["version"] is not None
    run = mlflow.get_run(marker["run_id"])
    assert run.info.status == "FINISHED"
    assert {f"step_seconds/{s}" for s in [*STEPS, "register", "gate"]} <= set(run.data.metrics)
    assert run.data.tags["day"] == DAY.isoformat() and run.data.tags["input_fingerprint"] == marker["fingerprint"]
    assert run.data.tags["code_version"] and run.data.tags["feature_service"] == project.feature_service
    assert run.data.tags["gate"] in ("passed", "refused")
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["training_set"]
    assert run.info.experiment_id == mlflow.get_experiment_by_name(_experiment(project, catalog)).experiment_id
    promotions = sum(m.kind == "promote" for m in champion_history(project))

    again = retrain(project, catalog, DAY)
    assert again.skipped and again.run_id == marker["run_id"] and again.fingerprint == marker["fingerprint"]
    out = _cli(project, monkeypatch)
    assert out.exit_code == 0 and "already done with the same inputs" in out.output
    assert sum(m.kind == "promote" for m in champion_history(project)) == promotions  # one promotion at most
    # the new version went through the gate: champion if it passed, else the champion kept or the best single action
    assert marker["promoted"] == (marker["served_version"] == marker["version"])
    assert alias_version(project, "champion") == (marker["served_version"] or champion)


def _experiment(project: Settings, catalog: Catalog) -> str:
    from training.registry import experiment_name

    return experiment_name(project, catalog)


def test_corrupted_input_fails_cleanly_and_keeps_champion_and_data(
    nightly: tuple[Settings, str], catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = nightly[0]
    champion = alias_version(project, "champion")
    raw_before = {p.name: p.read_bytes() for p in project.raw_dir.iterdir()}
    bad = tmp_path / "bad"
    bad.mkdir()
    good = pd.read_parquet(project.raw_dir / "decisions.parquet").head(50)
    corrupted = good.assign(decision_id=good["decision_id"] + "-new", propensity="n/a", action="fax")
    corrupted.to_csv(bad / "decisions.csv", index=False)  # every row wrong

    with pytest.raises(RetrainFailed) as failed:
        retrain(project, catalog, DAY, sources=[bad])
    assert failed.value.step == "validate" and "decisions: 50 of 50 rows rejected" in str(failed.value)
    assert alias_version(project, "champion") == champion
    assert {p.name: p.read_bytes() for p in project.raw_dir.iterdir()} == raw_before
    marker = json.loads(marker_path(project, DAY).read_text())
    assert (marker["status"], marker["failed_step"]) == ("failed", "validate")
    run = mlflow.get_run(marker["run_id"])
    assert run.info.status == "FAILED" and run.data.tags["failed_step"] == "validate"

    (bad / "decisions.csv").unlink()
    (bad / "events.parquet").write_bytes(b"PAR1 this is not parquet")
    out = _cli(project, monkeypatch, "--source", str(bad))
    assert out.exit_code == 1 and "retrain failed at step validate: input rejected" in out.output
    assert "events: file events.parquet not loaded (cannot read events.parquet" in out.output
    assert "champion unchanged" in out.output
    assert alias_version(project, "champion") == champion
    assert {p.name: p.read_bytes() for p in project.raw_dir.iterdir()} == raw_before


def test_a_second_run_is_refused_while_the_lock_is_held(
    nightly: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = nightly[0]
    champion = alias_version(project, "champion")
    with exclusive(lock_path(project)):  # a run in progress (flock: a second open file conflicts)
        out = _cli(project, monkeypatch, day=DAY + timedelta(days=1))
    assert out.exit_code == 3 and "retrain refused: another retrain is running (pid" in out.output
    assert not marker_path(project, DAY + timedelta(days=1)).exists()
    assert alias_version(project, "champion") == champion
    with exclusive(lock_path(project)):  # released: it can be taken again
        pass


def test_an_unusable_tracking_store_fails_first_in_seconds(
    nightly: tuple[Settings, str], catalog: Catalog, tmp_path: Path
) -> None:
    project = nightly[0]
    broken = project.model_copy(update={"tracking_uri": f"sqlite:///{tmp_path}"})  # a directory, not a database
    with pytest.raises(RetrainFailed) as failed:
        retrain(broken, catalog, DAY + timedelta(days=2), sources=[])
    assert failed.value.step == "tracking" and "MLflow tracking store sqlite:///" in str(failed.value)
    assert failed.value.cause.__class__.__name__ == "TrackingUnavailable"
    assert json.loads(marker_path(project, DAY + timedelta(days=2)).read_text())["failed_step"] == "tracking"


def test_the_nightly_run_collects_the_services_decision_log(
    nightly: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nexttouch retrain` exports the service's logs first: its decisions, outcomes and posted events are inputs."""
    from datetime import UTC, datetime, time

    from serving.decision_log import DecisionLog, Feedback
    from serving.event_log import EventLog
    from tests.test_decision_log import _answer

    project = nightly[0]
    identity = pd.read_parquet(project.raw_dir / "identity.parquet").iloc[0]
    customer = identity["customer_id"]
    decided_at = datetime.combine(DAY - timedelta(days=3), time(10), tzinfo=UTC)
    log = DecisionLog(project.decision_log)
    log.record(_answer("service-decision-1", customer).model_copy(update={"decided_at": decided_at}), {})
    assert log.feedback("service-decision-1", 1.0) is Feedback.RECORDED
    event = {
        "event_id": "service-event-1",
        "occurred_at": decided_at + timedelta(hours=1),
        "source_system": identity["source_system"],
        "source_key": identity["source_key"],
        "touch_type": "push_opened",
        "tier": "tech",
        "direction": "in",
        "amount": None,
        "decision_id": "service-decision-1",
    }
    # After the day's snapshot (midnight): only the event log, folded into the rebuilt online store, keeps it.
    sent_at = datetime.combine(DAY, time(6), tzinfo=UTC)
    sent = {**event, "event_id": "service-event-2", "occurred_at": sent_at, "touch_type": "push_sent"}
    EventLog(log).keep(pd.DataFrame([event, {**sent, "direction": "out", "decision_id": None}]))
    log.close()

    out = _cli(project, monkeypatch)
    assert out.exit_code == 0, out.output
    from serving.online_features import OnlineFeatures

    row = OnlineFeatures(project).read(customer, sent_at + timedelta(hours=1))
    assert row is not None and row["days_since_contact"] == pytest.approx(1 / 24, abs=1e-6)
    decisions = pd.read_parquet(project.raw_dir / "decisions.parquet").set_index("decision_id")
    row = decisions.loc["service-decision-1"]
    assert (row["customer_id"], row["action"], row["propensity"], row["outcome"]) == (customer, "push", 0.95, 1.0)
    events = pd.read_parquet(project.raw_dir / "events.parquet").set_index("event_id")
    assert events.loc["service-event-1", ["customer_id", "decision_id"]].tolist() == [customer, "service-decision-1"]
    again = _cli(project, monkeypatch)  # the log exported again is the same input: nothing to do
    assert again.exit_code == 0 and "already done with the same inputs" in again.output
