"""`nexttouch demo` end to end on a small brand in a temporary project (real bentoml serve)."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexttouch.cli import app
from nexttouch.jobs.project import copy_feature_repo
from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.service]


def test_demo_runs_every_stage_and_prints_decisions(tmp_path: Path) -> None:
    copy_feature_repo(tmp_path)
    port = free_port()
    args = ["demo", "--project-dir", str(tmp_path), "--customers", "300", "--port", str(port), "--no-keep-serving"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = result.output
    for step in ("[1/4] Simulate", "[2/4] Touch history", "[3/4] Training set", "[4/4] Serve it"):
        assert step in out
    assert len(re.findall(r"^      done in \d+\.\ds$", out, re.M)) == 3 and "ready (it answers /readyz) in " in out
    assert re.search(r"events +[\d,]+ rows: [\d,]+ loaded, 0 already loaded, 0 rejected", out)
    assert re.search(r"200 decisions in [\d.]+s by v\d+: .* \(\d+ of them explored\)", out)
    assert "C9999999 -> " in out and re.search(r"C9999999 +none \(fallback\) +1\.000( +-){4}$", out, re.M)
    assert "- : not eligible" in out and "*: drawn at random by exploration" in out
    assert "expected uplift over none" in out and "log-odds" not in out
    assert "malformed body -> HTTP 400" in out
    assert f"http://127.0.0.1:{port}/   the service's OpenAPI page" in out and "make ui" in out
    # One output style: job logs and library notices (MLflow, SQLAlchemy, ibis) go to the demo's log file.
    for noise in (" INFO ", " WARNING ", "Warning:", "Successfully registered model", "Created version"):
        assert noise not in out, noise
    log = (tmp_path / "data" / "logs" / "demo.log").read_text()
    assert "training.job: step train done in" in log and "Successfully registered model" in log
    assert (tmp_path / "mlruns" / "mlflow.db").exists() and (tmp_path / "data" / "raw" / "events.parquet").exists()
    # What the demo says about the champion is what the service then decides with.
    said = re.search(r"v(\d+) passed the gate and is @champion|the service decides with v(\d+)", out)
    assert said, out
    assert f"model v{said.group(1) or said.group(2)})" in out
    # The key lives in the project, readable by its owner only, never in the output; the printed lines work
    # against `nexttouch serve` started afterwards with no key set.
    key_file = tmp_path / "data" / "api_key"
    key = key_file.read_text().strip()
    assert key and key not in out and (key_file.stat().st_mode & 0o777) == 0o600
    assert f'-H "X-API-Key: $(cat {key_file})"' in out and "make serve" in out

    import httpx

    from nexttouch.settings import load_settings
    from serving import server

    settings = load_settings(project_dir=tmp_path, port=free_port())
    proc = server.start(settings, tmp_path / "serve.log")
    try:
        r = httpx.post(
            f"http://127.0.0.1:{settings.port}/decide", json={"customer_id": "C0000001"}, headers={"X-API-Key": key}
        )
        assert r.status_code == 200, r.text
    finally:
        server.stop(proc)
    assert key not in (tmp_path / "serve.log").read_text()


def test_the_decision_table_shows_uplift_over_none_not_raw_values() -> None:
    from nexttouch.jobs.demo import decision_table

    answer = {
        "customer_id": "C0000001",
        "action": "push",
        "explored": False,
        "propensity": 0.95,
        "uplift": {"none": 0.0, "push": 0.68, "event_invite": -3.2, "advisor_call": -7.1},
        "values": {"none": 10.9, "push": 11.58, "event_invite": 7.7, "advisor_call": 3.8},
        "eligible": ["none", "push", "event_invite"],
        "cold_start": False,
        "fallback": False,
    }
    lines = decision_table([answer])
    assert lines[0].strip() == "expected uplift over none"
    assert lines[1].split() == ["customer", "action", "propensity", "none", "push", "event_invite", "advisor_call"]
    assert lines[3].split() == ["C0000001", "push", "0.950", "+0.00", "+0.68", "-3.20", "-"]
