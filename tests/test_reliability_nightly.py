"""The nightly job (`nexttouch retrain`) under faults, on a private copy of the built project: killed -9 while it
registers its model, and run with the MLflow tracking store gone. The champion never changes by accident,
the tracking DB stays sound and the next run succeeds."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nexttouch.settings import Settings
from tests.reliability import clone_project, integrity_ok

pytestmark = [pytest.mark.slow]

NIGHTLY = ["retrain"]  # the nightly job command of the CLI
KILL_AT = "step register ..."  # the job logs each step as it starts: kill -9 in the middle of registering


def _champion(settings: Settings) -> str:
    """The champion alias's version, read straight from the tracking DB (no MLflow client, no global state)."""
    with sqlite3.connect(f"file:{settings.mlruns_dir / 'mlflow.db'}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?",
            (settings.model_name, settings.champion_alias),
        ).fetchone()
    return str(row[0])


def _versions(settings: Settings) -> int:
    with sqlite3.connect(f"file:{settings.mlruns_dir / 'mlflow.db'}?mode=ro", uri=True, timeout=5) as db:
        return db.execute("SELECT count(*) FROM model_versions WHERE name = ?", (settings.model_name,)).fetchone()[0]


def _job(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    cli = str(Path(sys.executable).with_name("nexttouch"))
    env = {**os.environ, "NEXTTOUCH_PROJECT_DIR": str(settings.project_dir), "COLUMNS": "120"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [cli, *NIGHTLY, "--project-dir", str(settings.project_dir)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture
def nightly_project(built: Settings, tmp_path: Path) -> Settings:
    return clone_project(built, tmp_path / "project")


def test_killed_mid_run_leaves_the_champion_and_the_next_run_succeeds(
    nightly_project: Settings, tmp_path: Path
) -> None:
    s = nightly_project
    champion, versions_before = _champion(s), _versions(s)
    log = tmp_path / "killed.log"
    job = _job(s, log)
    deadline = time.monotonic() + 240
    while KILL_AT not in log.read_text(errors="replace"):
        assert job.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the job never reached the register step"
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)  # the job runs no worker processes of its own
    job.wait(timeout=10)
    assert job.returncode == -signal.SIGKILL
    assert integrity_ok(s.mlruns_dir / "mlflow.db") == "ok"
    assert _champion(s) == champion

    again = _job(s, tmp_path / "again.log")
    assert again.wait(timeout=400) == 0, (tmp_path / "again.log").read_text()[-3000:]
    assert _versions(s) > versions_before  # it registered a model (the gate decides about the champion)
    assert integrity_ok(s.mlruns_dir / "mlflow.db") == "ok"


def test_tracking_store_unreachable_fails_cleanly(nightly_project: Settings, tmp_path: Path) -> None:
    s = nightly_project
    db = s.mlruns_dir / "mlflow.db"
    champion = _champion(s)
    db.rename(db.with_suffix(".moved"))
    db.mkdir()  # sqlite cannot open a directory: the tracking store is unreachable
    try:
        started = time.monotonic()
        job = _job(s, tmp_path / "unreachable.log")
        code = job.wait(timeout=300)
        took = time.monotonic() - started
    finally:
        db.rmdir()
        db.with_suffix(".moved").rename(db)
    out = (tmp_path / "unreachable.log").read_text()
    assert code not in (0, -signal.SIGKILL), out[-2000:]
    assert "Traceback" not in out and "╭" not in out, out[-2000:]  # one clear message, not a stack dump
    assert "tracking store" in out and "champion unchanged" in out, out[-2000:]
    assert took < 60, f"took {took:.0f}s to give up"  # MLflow alone would retry for ~100 s
    assert _champion(s) == champion
