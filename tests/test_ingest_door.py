"""Ingest keeps the same door as the API: no personal data in ids (the one shared detector), no formula
loaded as an id or left live in a quarantine file, customers named by id resolved only when known."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from nexttouch.catalog import Catalog
from nexttouch.ingest import REMOVED, ingest
from nexttouch.settings import Settings
from tests.test_ingest_hostile import EVENTS, IDENTITY, NOW

FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+cmd|' /C calc'!A0", "@SUM(A1:A9)", "-2+3"]


def _cells(folder: Path) -> list[str]:
    cells = []
    for path in folder.glob("*.csv"):
        with path.open(newline="") as f:
            cells += [c for row in csv.reader(f) for c in row]
    return cells


def test_formula_ids_are_not_loaded_and_no_quarantine_cell_is_a_formula(
    project: Settings, catalog: Catalog, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "identity.csv").write_text(IDENTITY)
    rows = [f'"{f.replace(chr(34), chr(34) * 2)}",2026-10-01T00:00:00Z,app,a-1,app_session' for f in FORMULAS]
    rows += ['ok-1,2026-10-01T00:00:00Z,app,a-1,"\t=1+2"', "ok-2,2026-10-01T00:00:00Z,app,a-1,app_like"]
    (src / "events.csv").write_text(EVENTS + "\n".join(rows) + "\n")

    reports = {r.table: r for r in ingest(project, catalog, src, now=NOW)}
    assert reports["events"].rejected == {
        "event_id is not an opaque id (letters, digits and _ . : @ - only)": len(FORMULAS),
        "unknown touch type": 1,
    }
    assert pd.read_parquet(project.raw_dir / "events.parquet")["event_id"].tolist() == ["ok-2"]
    cells = _cells(project.quarantine_dir)
    assert len(cells) > 20
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], cells
    assert "'" + FORMULAS[0] in cells and "'\t=1+2" in cells  # kept readable, as text


def test_ids_holding_personal_data_are_quarantined_with_the_value_removed(
    project: Settings, catalog: Catalog, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "identity.csv").write_text(IDENTITY + "crm,07946095866,C1\nstore,00447946095822,C2\nstore,s-0000a1b2,C2\n")
    (src / "customers.csv").write_text(
        "customer_id,signup_at,contact\nC1,2025-01-01,07946095811\nC2,2025-01-01,+44 20 7946 0958\n"
        "jo@example.com,2025-01-01,0\n"
    )
    # The refused keys and id again, in events and decisions: still found, though known keys are not checked again.
    events = ["e-1,2026-10-01T00:00:00Z,crm,07946095866,app_like", "e-2,2026-10-01T00:00:00Z,store,s-0000a1b2,purchase"]
    events += ["e-3,2026-10-01T00:00:00Z,api,jo@example.com,app_like", "e-4,2026-10-01T00:00:00Z,api,C1,app_like"]
    (src / "events.csv").write_text(EVENTS + "\n".join(events) + "\n")
    (src / "decisions.csv").write_text(
        "decision_id,customer_id,decided_at,action,propensity\n"
        "d-1,jo@example.com,2026-10-01T00:00:00Z,push,0.5\nd-2,C1,2026-10-01T00:00:00Z,push,0.5\n"
    )
    reports = {r.table: r for r in ingest(project, catalog, src, now=NOW)}
    assert reports["identity"].rejected == {"personal data in source_key": 2}
    assert reports["identity"].loaded == 3
    assert reports["customers"].refused_columns == {"contact": "values look like phone numbers"}
    assert reports["customers"].rejected == {"personal data in customer_id": 1}
    assert reports["events"].rejected == {"personal data in source_key": 2} and reports["events"].loaded == 2
    assert reports["decisions"].rejected == {"personal data in customer_id": 1} and reports["decisions"].loaded == 1
    stored = b"".join(p.read_bytes() for p in project.data_dir.rglob("*") if p.is_file())
    assert b"7946095" not in stored and b"jo@example" not in stored
    assert REMOVED in _cells(project.quarantine_dir)


def test_events_sent_by_customer_id_resolve_only_for_known_customers(
    project: Settings, catalog: Catalog, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "identity.csv").write_text(IDENTITY)
    (src / "customers.csv").write_text("customer_id,signup_at\nC1,2025-01-01\nC2,2025-01-01\n")
    rows = ["k-1,2026-10-01T00:00:00Z,api,C1,app_like", "k-2,2026-10-01T00:00:00Z,api,C-made-up,app_like"]
    (src / "events.csv").write_text(EVENTS + "\n".join(rows) + "\n")
    reports = {r.table: r for r in ingest(project, catalog, src, now=NOW)}
    assert reports["events"].rejected == {"unresolvable source key": 1}
    events = pd.read_parquet(project.raw_dir / "events.parquet")
    assert events[["event_id", "customer_id"]].values.tolist() == [["k-1", "C1"]]
