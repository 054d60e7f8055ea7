"""A different action catalog works end to end with no code change: ingest, train, register, decide."""

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from nexttouch.catalog import load_catalog
from nexttouch.settings import Settings, load_settings
from tests.conftest import END, SMALL

pytestmark = pytest.mark.slow
EMAIL_CATALOG = Path(__file__).parent / "data" / "email_catalog.yaml"


def test_email_catalog_end_to_end(built: Settings, tmp_path: Path) -> None:
    from nexttouch.engine import DecisionEngine, from_row
    from nexttouch.ingest import ingest
    from nexttouch.simulate import write_brand
    from serving.champion import load_champion
    from serving.online_features import OnlineFeatures
    from training.dataset import training_set
    from training.registry import log_and_register
    from training.train import fit

    catalog = load_catalog(EMAIL_CATALOG)
    assert catalog.names == ["none", "email_a", "email_b"]
    project = load_settings(project_dir=tmp_path, catalog_path=EMAIL_CATALOG, **SMALL)
    write_brand(project, catalog, END, project.landing_dir)
    reports = {r.table: r for r in ingest(project, catalog, project.landing_dir, now=END)}
    assert reports["decisions"].rejected == {} and reports["decisions"].loaded > 1000
    decisions = pd.read_parquet(project.raw_dir / "decisions.parquet")
    assert set(decisions["action"]) == {"none", "email_a", "email_b"}
    # the default catalog refuses these actions at ingest
    other = load_settings(project_dir=tmp_path / "other")
    with_default = {r.table: r for r in ingest(other, load_catalog(), project.landing_dir, now=END)}
    assert with_default["decisions"].rejected["action not in catalog"] > 0

    # same customers as the built project: train on its Feast features, register under another name
    data = training_set(built, decisions)
    result = fit(data, catalog)
    email = built.model_copy(update={"model_name": "nexttouch_email", "catalog_path": EMAIL_CATALOG})
    log_and_register(email, result.model, result.params, result.metrics, data, {"catalog": "email"})
    champion = load_champion(email)
    assert champion.model.actions == ["none", "email_a", "email_b"]

    online = OnlineFeatures(built)
    engine = DecisionEngine(catalog, champion.model, champion.version, epsilon=0.0)
    now = datetime.now(UTC)
    answers = [
        engine.decide([cid], from_row(online.read(cid, now)), now, ["x"])[0]
        for cid in (f"C{i:07d}" for i in range(1, 31))
    ]
    assert {a["action"] for a in answers} <= {"none", "email_a", "email_b"}
    assert all(set(a["values"]) == {"none", "email_a", "email_b"} for a in answers)
    consented = [a for a in answers if "email_b" in a["eligible"]]
    refused = [a for a in answers if "email_b" not in a["eligible"]]
    assert consented and refused  # email_b needs push_opt_in, like push does
    assert all("email_b removed: no push opt-in on record" in a["reasons"] for a in refused)
