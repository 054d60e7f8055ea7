"""A touch the service accepted still counts after the online store is rebuilt, by every path that rebuilds it:
`nexttouch features`, its --online-only load, the load of the demo and the nightly job, and `feast materialize`.

The touch goes in as the service takes it (event log, then the online contact state through Feast's push
source); the rebuild then loads each customer's snapshot over the online store; the decision rules read the
online features afterwards. The nightly job's path is checked in tests/test_retrain.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from nexttouch.api import EventsRequest
from nexttouch.catalog import Catalog
from nexttouch.cli import app
from nexttouch.columns import from_row
from nexttouch.engine.rules import check
from nexttouch.settings import Settings
from nexttouch.telemetry import TELEMETRY_OFF
from tests.reliability import clone_project

pytestmark = pytest.mark.slow


@pytest.fixture
def project(built: Settings, tmp_path: Path) -> Settings:
    from features.pipeline import feast_apply

    project = clone_project(built, tmp_path / "project")
    (project.data_dir / "feast" / "registry.db").unlink()  # the copy's own registry, on the copy's data
    feast_apply(project)
    return project


def post(project: Settings, customer: str, touch_type: str, at: datetime) -> None:
    """Accept one touch as the service does: kept in the event log, applied to the online contact state."""
    from serving.contact_state import ContactUpdater, lock_path
    from serving.decision_log import DecisionLog
    from serving.event_log import EventLog
    from serving.identity import IdentityMap
    from serving.online_features import OnlineFeatures

    log = DecisionLog.open(project)
    identity = IdentityMap.load(project.raw_dir / "identity.parquet")
    store = OnlineFeatures(project).store
    lock = lock_path(project.data_dir)
    updater = ContactUpdater(store, EventLog(log).keep, identity.resolve, timeout_s=30, lock=lock)
    try:
        body = {"event_id": f"posted-{customer}", "customer_id": customer, "touch_type": touch_type, "occurred_at": at}
        assert updater.apply(EventsRequest.model_validate({"events": [body]})).customers_updated == 1
    finally:
        updater.close()
        log.close()


def invite_allowed(project: Settings, catalog: Catalog, customer: str, now: datetime) -> bool:
    """What the decision rules say of an event invitation for ``customer`` now, from the online features."""
    from serving.online_features import OnlineFeatures

    row = OnlineFeatures(project).read(customer, now)
    assert row is not None
    return bool(check(catalog, from_row(row), 1, now).eligible[0][catalog.names.index("event_invite")])


def invitable(project: Settings, catalog: Catalog, now: datetime) -> str:
    """A customer an event invitation is open to before the touch."""
    customers = pd.read_parquet(project.raw_dir / "customers.parquet")["customer_id"]
    return next(c for c in customers if invite_allowed(project, catalog, c, now))


def test_posted_touches_still_count_after_every_rebuild(
    project: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nexttouch.jobs.online import load_online
    from serving.online_features import OnlineFeatures

    monkeypatch.setenv("NEXTTOUCH_PROJECT_DIR", str(project.project_dir))  # snapshots chosen from the data
    now = datetime.now(UTC).replace(microsecond=0)
    posted: list[str] = []
    # load_online: the demo's and the nightly job's load; then Feast's own, run by hand in the repo
    for how in ("features", "features --online-only", "load_online", "feast materialize"):
        customer = invitable(project, catalog, now)
        post(project, customer, "event_invited", now - timedelta(hours=1))
        assert not invite_allowed(project, catalog, customer, now)  # cool-down: a week after the last low touch
        posted.append(customer)
        if how == "load_online":
            folded = load_online(project, now).folded
        elif how == "feast materialize":
            feast = Path(sys.executable).with_name("feast")
            cmd = [str(feast), "materialize", "1970-01-02T00:00:00", now.strftime("%Y-%m-%dT%H:%M:%S")]
            done = subprocess.run(
                cmd, cwd=project.feature_repo, env={**os.environ, **TELEMETRY_OFF}, capture_output=True
            )
            assert done.returncode == 0, done.stderr[-2000:]
        else:
            result = CliRunner().invoke(app, how.split())
            assert result.exit_code == 0, result.output
        for c in posted:  # each rebuild keeps every touch posted before it
            row = OnlineFeatures(project).read(c, now)
            assert row is not None and row["days_since_low"] == pytest.approx(1 / 24, abs=1e-6), (how, c)
            assert not invite_allowed(project, catalog, c, now), (how, c)
        if how == "load_online":
            assert folded == len(posted)
        elif how != "feast materialize":
            assert f"{len(posted)} customers' contact state moved by touches posted to the service" in result.output

    # The nightly plan reads the snapshot files, and folds the posted touches in as a load does.
    from nexttouch.jobs.plan import latest_features

    planned = latest_features(project, now).set_index("customer_id")
    assert planned.loc[posted, "days_since_low"].tolist() == pytest.approx([1 / 24] * len(posted), abs=1e-6)
