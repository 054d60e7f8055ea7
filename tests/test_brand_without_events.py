"""A brand with profile columns and a randomised decision log, and no touch events, as a new user runs it.

init -> ingest -> features -> train -> plan, through the CLI: it trains on the profile alone, the run
says so, no touch-history or tenure column is a model input, and every customer is decided by it.
"""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

ARMS = ("none", "email_a", "email_b", "email_c")
CATALOG = "actions:\n" + "".join(
    f"  - {{name: {a}, tier: {'none' if a == 'none' else 'tech'}, cost: {0.0 if a == 'none' else 0.02}, "
    "value_of_success: 10.0, success_touch: store_visit}\n"
    for a in ARMS
)
PROFILE = {"loyalty_points", "region", "age_band"}
UNKNOWN = 30  # decisions whose outcome has not come back


def _write_brand(landing: Path) -> None:
    """Customers without sign-up dates; decisions drawn uniformly over the arms, outcomes given.

    e-mail A works in the north, e-mail B elsewhere: only the profile can tell them apart.
    """
    rng = np.random.default_rng(3)
    n, m = 400, 1200
    ids = np.array([f"K{i:04d}" for i in range(n)])
    region = rng.choice(["north", "south", "east"], n)
    customers = {"customer_id": ids, "region": region, "age_band": rng.choice(["18-34", "35-54", "55+"], n)}
    pd.DataFrame({**customers, "loyalty_points": rng.integers(0, 500, n)}).to_csv(
        landing / "customers.csv", index=False
    )
    who = rng.integers(0, n, m)
    action = np.array(ARMS)[rng.integers(0, len(ARMS), m)]
    north = region[who] == "north"
    p = 0.05 + 0.5 * (action == "email_a") * north + 0.5 * (action == "email_b") * ~north
    outcome = (rng.random(m) < p).astype(float)
    outcome[-UNKNOWN:] = np.nan  # nothing to attribute them from: left out, not counted as failures
    decided = pd.Timestamp("2026-09-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 30 * 86_400, m), unit="s")
    decisions = {"decision_id": [f"d{i}" for i in range(m)], "customer_id": ids[who], "decided_at": decided}
    decisions |= {"action": action, "propensity": 1 / len(ARMS), "outcome": outcome}
    pd.DataFrame(decisions).to_csv(landing / "decisions.csv", index=False)


def test_a_brand_without_touch_events_trains_on_its_profile_and_decides(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from nexttouch.cli import app
    from nexttouch.registry_io import alias_version, load_version
    from nexttouch.settings import load_settings
    from nexttouch.tracking import tracking_client

    cli = CliRunner()
    project, catalog = tmp_path / "brand", tmp_path / "email_catalog.yaml"
    catalog.write_text(CATALOG)
    where = ["--project-dir", str(project)]
    assert cli.invoke(app, ["init", str(project)]).exit_code == 0
    _write_brand(project / "data" / "landing")

    ingested = cli.invoke(app, ["ingest", *where, "--catalog", str(catalog)])
    assert ingested.exit_code == 0, ingested.output
    assert "0 rejected" in ingested.output and "events" not in ingested.output

    features = cli.invoke(app, ["features", *where])
    assert features.exit_code == 0, features.output
    assert "snapshot rows for 400 customers (0 touch events)" in features.output

    with caplog.at_level(logging.INFO, logger="training"):
        trained = cli.invoke(app, ["train", *where, "--catalog", str(catalog)])
    assert trained.exit_code == 0, trained.output
    assert f"trained on {1200 - UNKNOWN:,} decisions" in trained.output
    message = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("model features: "))
    said = message.removeprefix("model features: ")
    assert said.startswith("profile features only: ")
    assert set(said.split(";")[0].removeprefix("profile features only: ").split(", ")) == PROFILE
    assert "; no touch events ingested; no signup_at (no tenure); " in said

    settings = load_settings(project_dir=project, catalog_path=catalog)
    model = load_version(settings, "1")  # the first trained version (the gate may serve the best single action)
    assert set(model.inputs) == PROFILE  # no touch-history feature, no tenure_days
    client = tracking_client(settings)
    run = client.get_run(client.get_model_version(settings.model_name, "1").run_id)
    assert run.data.tags["features"] == said
    assert run.data.params["feature_count"] == "3"

    assert "promoted to @champion" in trained.output and alias_version(settings) == "1"

    # Every customer decided through the engine from the online store: the arm their region answers.
    planned = cli.invoke(
        app, ["plan", *where, "--catalog", str(catalog), "--epsilon", "0", "--at", "2026-10-01T10:00:00"]
    )
    assert planned.exit_code == 0, planned.output
    plan = pd.read_parquet(next((project / "data" / "plans").glob("plan-*.parquet")))
    region = pd.read_csv(project / "data" / "landing" / "customers.csv").set_index("customer_id")["region"]
    expected = np.where(region.loc[plan["customer_id"]] == "north", "email_a", "email_b")
    assert len(plan) == 400 and (plan["action"].to_numpy() == expected).all()
