"""Registry and promotion: the gate, alias moves with their history, rollback, a worse model kept out."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from nexttouch.catalog import Catalog
from nexttouch.cli import app
from nexttouch.settings import Settings
from tests.reliability import clone_project
from training.gate import Paired
from training.promotion import (
    HISTORY_FILE,
    PREVIOUS,
    NothingToRollBack,
    alias_version,
    champion_history,
    promote,
    rollback,
)


@pytest.fixture(scope="module")
def project(built: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return clone_project(built, tmp_path_factory.mktemp("registry") / "project")


@pytest.fixture(scope="module")
def data(project: Settings) -> pd.DataFrame:
    from training.job import build_training_set

    return build_training_set(project, pd.read_parquet(project.raw_dir / "decisions.parquet"))


@pytest.mark.slow
def test_gate_keeps_the_champion_against_a_model_trained_on_shuffled_labels(
    project: Settings, catalog: Catalog, data: pd.DataFrame
) -> None:
    from training.job import evaluate_register_gate
    from training.registry import start_run
    from training.train import fit

    before = alias_version(project, "champion")
    bad = data.assign(outcome=np.random.default_rng(0).permutation(data["outcome"].to_numpy()))
    with start_run(project, catalog, {"job": "test"}):  # exactly what the training job does after fit
        registered, ev, verdict, move = evaluate_register_gate(project, catalog, bad, fit(bad, catalog), by="test")
    assert not verdict.promote
    assert verdict.reason.startswith("candidate vs best single action")  # it does not even beat a constant policy
    pair = ev.paired["new_vs_best_single"]
    assert pair.outcome(project.gate_tolerance) != "better" and verdict.numbers["vs_best_single_diff"] == pair.diff
    client = MlflowClient()
    tags = client.get_model_version(project.model_name, registered.version).tags
    assert tags["gate"] == "refused" and tags["champion_at_gate"] == before and tags["gate_serves"] == verdict.serve
    assert tags["gate_reason"] == verdict.reason
    description = client.get_model_version(project.model_name, registered.version).description
    assert description.startswith("Gate refused") and verdict.reason in description
    # The numbers behind the verdict, as a table the version page shows.
    assert f"| vs best single action | {pair.text()} per decision" in description
    test = f"| test period | {int(ev.metrics['test_rows']):,} decisions, AUC {ev.metrics['test_auc']:.3f}"
    assert test in description
    assert f"({registered.run_id}) |" in description
    assert "nexttouch champion-history" in client.get_registered_model(project.model_name).description
    run = mlflow.get_run(registered.run_id)  # every run is registered, with the verdict's numbers
    assert run.data.tags["gate"] == "refused" and run.data.metrics["paired/new_vs_best_single/diff"] == pair.diff
    assert run.data.params["gate_tolerance"] == str(project.gate_tolerance)
    assert not any(k.startswith("gate") for k in run.data.metrics)  # the paired numbers, not a copy of them
    if verdict.serve == "champion":  # the champion beats the best single action, or already is it
        assert move is None and alias_version(project, "champion") == before
    else:  # the best single action is served in its place, as a model of its own
        assert move is not None and alias_version(project, "champion") == move.champion != registered.version
        served = client.get_model_version(project.model_name, move.champion)
        assert served.tags["policy"] == "best_single_action" and served.run_id == registered.run_id
        assert served.tags["best_single_action"] == ev.best_single
        assert f"Value per decision of each action: {ev.best_single} " in served.description  # highest first


@pytest.mark.slow
def test_promote_rollback_and_history(
    built: Settings, data: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nexttouch.registry_io import load_registered
    from training.registry import log_and_register

    project = clone_project(built, tmp_path / "project")  # the built champion, never moved before
    first = alias_version(project, "champion")
    start = len(champion_history(project))
    model = load_registered(project)
    # Registering never replaces an existing champion.
    v2 = log_and_register(project, model, {}, {}, data, {"job": "test"}).version
    v3 = log_and_register(project, model, {}, {}, data, {"job": "test"}).version
    assert alias_version(project, "champion") == first

    promote(project, v2, by="test", why="v2 better", metrics={"new_dr_low": 8.0, "champion_dr": 7.5})
    promote(project, v3, by="test", why="v3 better")
    assert (alias_version(project, "champion"), alias_version(project, PREVIOUS)) == (v3, v2)

    back = rollback(project, by="test")  # v3 was bad: back to v2, whose fallback was the first champion
    assert (back.replaced, back.champion, back.previous) == (v3, v2, first)
    assert (alias_version(project, "champion"), alias_version(project, PREVIOUS)) == (v2, first)
    rollback(project, by="test")
    assert (alias_version(project, "champion"), alias_version(project, PREVIOUS)) == (first, None)
    with pytest.raises(NothingToRollBack, match="no @previous version"):
        rollback(project, by="test")

    history = champion_history(project)[start:]
    assert [(m.kind, m.replaced, m.champion, m.previous) for m in history] == [
        ("promote", first, v2, first),
        ("promote", v2, v3, v2),
        ("rollback", v3, v2, first),
        ("rollback", v2, first, None),
    ]
    assert history[0].metrics == {"new_dr_low": 8.0, "champion_dr": 7.5} and history[0].why == "v2 better"
    assert [m.seq for m in history] == sorted({m.seq for m in history})
    # The same moves, readable without nexttouch: registered-model tags, version tags and the JSONL file.
    tags = MlflowClient().get_registered_model(project.model_name).tags
    assert sum(k.startswith("champion_move.") for k in tags) == start + 4
    assert MlflowClient().get_model_version(project.model_name, v2).tags["promotion_reason"] == "rollback"
    # ... and on the registered model's page: its description ends with the history, newest first.
    about = MlflowClient().get_registered_model(project.model_name).description
    assert about.count("### Champion history") == 1 and "nexttouch champion-history" in about
    rows = [row for row in about.split("### Champion history")[1].splitlines() if re.match(r"\| \d+ \|", row)]
    assert len(rows) == start + 4 and f"| rollback | v{first} | v{v2} | test | rollback |" in rows[0]
    assert f"| promote | v{v2} | v{first} | test | v2 better |" in rows[3]
    lines = [json.loads(line) for line in (project.mlruns_dir / HISTORY_FILE).read_text().splitlines()]
    assert [(x["kind"], x["champion"]) for x in lines[-4:]] == [(m.kind, m.champion) for m in history]

    # The CLI: history printed from the registry; a rollback with nothing to go back to is refused.
    monkeypatch.setenv("NEXTTOUCH_PROJECT_DIR", str(project.project_dir))
    runner = CliRunner()
    shown = runner.invoke(app, ["champion-history"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].startswith(f"{project.model_name}: @champion v{first} since ") and lines[0].endswith("@previous -")
    moves = [line for line in lines if re.match(r"\s+\d+  \d{4}-", line)]
    assert len(moves) == start + 4
    assert f"promote v{v2} (replaced v{first})  by test" in moves[-4]
    assert f"rollback v{first} (replaced v{v2})" in moves[-1]
    assert "     why: v2 better" in lines and "     new_dr_low 8; champion_dr 7.5" in lines
    refused = runner.invoke(app, ["rollback"])
    assert refused.exit_code == 1 and "nothing to roll back to" in refused.output
    assert alias_version(project, "champion") == first


@pytest.mark.slow
def test_a_champion_moved_during_the_run_is_left_alone(
    project: Settings, catalog: Catalog, data: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone rolls back (or promotes) while the nightly model is being evaluated: the gate's comparison
    is stale, so the new version, however good, does not replace the champion that was just set."""
    import training.job as job
    from training.registry import log_and_register, start_run
    from training.train import fit

    result = fit(data, catalog)
    other = log_and_register(project, result.model, {}, {}, data, {"job": "test"}).version
    evaluate = job.evaluate

    def evaluated_while_someone_promotes(*args: object, **kwargs: object) -> object:
        ev = evaluate(*args, **kwargs)
        promote(project, other, by="someone", why="manual promotion")
        win = Paired(5.0, 4.0, 6.0, decisions=1_000, customers=400, differ=0.5)  # a clear win over both
        return replace(ev, paired={**ev.paired, "new_vs_best_single": win, "new_vs_champion": win})

    monkeypatch.setattr(job, "evaluate", evaluated_while_someone_promotes)
    with start_run(project, catalog, {"job": "test"}):
        registered, _, verdict, move = job.evaluate_register_gate(project, catalog, data, result, by="test")
    assert not verdict.promote and move is None
    assert verdict.reason.startswith("champion changed during the run")
    assert alias_version(project, "champion") == other != registered.version
