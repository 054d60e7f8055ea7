"""`nexttouch ingest`: good rows load, every bad row is quarantined with its reason, re-runs change nothing."""

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from nexttouch.catalog import Catalog
from nexttouch.ingest import IngestError, ingest
from nexttouch.settings import Settings

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _write(path: Path, text: str) -> None:
    path.write_text(text.strip() + "\n", encoding="utf-8")


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    d = tmp_path / "landing"
    d.mkdir()
    _write(
        d / "identity.csv",
        """
source_system,source_key,customer_id
app,a-1,C1
store,s-1,C1
app,a-2,C2
crm,k-9,C1
crm,k-9,C2
app,,C3
""",
    )
    _write(
        d / "customers.csv",
        """
customer_id,signup_at,region,vip_score,email
C1,2025-01-01T00:00:00Z,north,1.5,jo@example.com
C2,2025-06-01,south,2,al@example.org
C2,2025-06-02,south,2,al@example.org
,2025-06-01,east,3,x@example.com
C4,2099-01-01,east,3,y@example.com
""",
    )
    _write(
        d / "events.csv",
        """
event_id,occurred_at,source_system,source_key,touch_type,tier,direction,amount,decision_id
e1,2026-10-01T10:00:00Z,app,a-1,app_session,,,,
e2,2026-10-02T10:00:00+02:00,store,s-1,purchase,high,in,120.50,
e3,2026-10-03T10:00:00Z,app,a-2,push_opened,,,,d1
e4,2026-10-03T10:00:00Z,app,a-1,telepathy,,,,
e5,2026-10-03T10:00:00Z,app,nobody,app_session,,,,
e6,last tuesday,app,a-1,app_session,,,,
e7,2099-01-01T00:00:00Z,app,a-1,app_session,,,,
e1,2026-10-05T10:00:00Z,app,a-1,app_like,,,,
e8,2026-10-03T10:00:00Z,app,a-1,app_session,low,,,
e9,2026-10-03T10:00:00Z,app,a-1,purchase,,,a lot,
,2026-10-03T10:00:00Z,app,a-1,app_session,,,,
""",
    )
    _write(
        d / "decisions.csv",
        """
decision_id,customer_id,decided_at,action,propensity,outcome
d1,C1,2026-10-03T09:00:00Z,push,0.5,1
d2,C2,2026-10-03T09:00:00Z,event_invite,1,
d3,C1,2026-10-03T09:00:00Z,teleport,0.5,0
d4,C1,2026-10-03T09:00:00Z,push,0,0
d5,C1,2026-10-03T09:00:00Z,push,1.5,0
d6,C9,2026-10-03T09:00:00Z,push,0.5,0
d7,C1,2026-10-03T09:00:00Z,push,0.5,2
d1,C1,2026-10-04T09:00:00Z,push,0.5,0
""",
    )
    return d


def _quarantined(settings: Settings, table: str) -> pd.DataFrame:
    (path,) = settings.quarantine_dir.glob(f"{table}-*.csv")
    return pd.read_csv(path, dtype=str)


def test_every_bad_row_is_quarantined_with_its_reason(project: Settings, catalog: Catalog, landing: Path) -> None:
    reports = {r.table: r for r in ingest(project, catalog, landing, now=NOW)}

    assert reports["identity"].rejected == {"source key maps to several customers": 2, "missing source_key": 1}
    assert reports["identity"].loaded == 3

    assert reports["customers"].rejected == {
        "duplicate customer_id": 1,
        "missing customer_id": 1,
        "signup_at in the future": 1,
    }
    assert reports["customers"].refused_columns == {"email": "column name suggests personal data"}

    assert reports["events"].rejected == {
        "unknown touch type": 1,
        "unresolvable source key": 1,
        "unparsable occurred_at": 1,
        "occurred_at in the future": 1,
        "duplicate event_id": 1,
        "tier does not match touch type": 1,
        "unparsable amount": 1,
        "missing event_id": 1,
    }
    assert reports["events"].loaded == 3
    assert reports["decisions"].rejected == {
        "action not in catalog": 1,
        "propensity outside (0, 1]": 2,
        "unknown customer_id": 1,
        "outcome not 0 or 1": 1,
        "duplicate decision_id": 1,
    }
    # every input row is either loaded or in quarantine: nothing is dropped silently
    for table, report in reports.items():
        assert report.loaded + sum(report.rejected.values()) == report.rows
        assert len(_quarantined(project, table)) == sum(report.rejected.values())
    bad_events = _quarantined(project, "events").set_index("event_id")
    assert bad_events.loc["e4", "reason"] == "unknown touch type"
    assert bad_events.loc["e6", "occurred_at"] == "last tuesday"  # the row as it arrived


def test_loaded_rows_are_typed_resolved_and_free_of_personal_data(
    project: Settings, catalog: Catalog, landing: Path
) -> None:
    ingest(project, catalog, landing, now=NOW)
    events = pd.read_parquet(project.raw_dir / "events.parquet").set_index("event_id")
    assert events.loc["e2", "customer_id"] == "C1"  # store key resolved through the identity map
    assert events.loc["e2", "occurred_at"] == pd.Timestamp("2026-10-02T08:00:00Z")
    assert (events.loc["e1", "tier"], events.loc["e1", "direction"]) == ("tech", "in")  # derived from the type
    assert events.loc["e2", "amount"] == 120.5
    customers = pd.read_parquet(project.raw_dir / "customers.parquet").set_index("customer_id")
    assert "email" not in customers.columns
    assert customers.loc["C1", "vip_score"] == 1.5 and customers.loc["C1", "region"] == "north"
    assert str(customers["signup_at"].dtype) == "datetime64[us, UTC]"


def test_identity_rows_given_again_load_once(project: Settings, catalog: Catalog, tmp_path: Path) -> None:
    """Repeated rows (also once trimmed) load once; every row of a key given for two customers is rejected."""
    d = tmp_path / "again"
    d.mkdir()
    _write(
        d / "identity.csv",
        """
source_system,source_key,customer_id
app,a-1,C1
store,s-1,C1
app,a-1,C1
 app , a-1 ,C1
crm,k-9,C1
crm,k-9,C2
crm,k-9,C1
app,a-2,C2
""",
    )
    (report,) = ingest(project, catalog, d, now=NOW)
    assert report.rejected == {"source key maps to several customers": 3}
    loaded = pd.read_parquet(project.raw_dir / "identity.parquet").astype(str)
    assert loaded.values.tolist() == [["app", "a-1", "C1"], ["store", "s-1", "C1"], ["app", "a-2", "C2"]]
    assert report.loaded == 3


def test_running_twice_changes_nothing(project: Settings, catalog: Catalog, landing: Path) -> None:
    ingest(project, catalog, landing, now=NOW)
    before = {p.name: p.read_bytes() for p in [*project.raw_dir.iterdir(), *project.quarantine_dir.iterdir()]}
    again = ingest(project, catalog, landing, now=NOW)
    after = {p.name: p.read_bytes() for p in [*project.raw_dir.iterdir(), *project.quarantine_dir.iterdir()]}
    assert before == after
    assert all(r.loaded == 0 for r in again)
    assert {r.table: r.already_loaded for r in again} == {"identity": 3, "customers": 2, "events": 3, "decisions": 2}


def _later_outcomes(landing: Path) -> Path:
    """A later delivery: d2's outcome arrives, and d1 again with another outcome than the one loaded."""
    later = landing.parent / "later"
    later.mkdir()
    _write(
        later / "decisions.csv",
        """
decision_id,customer_id,decided_at,action,propensity,outcome
d2,C2,2026-10-03T09:00:00Z,event_invite,1,1
d1,C1,2026-10-03T09:00:00Z,push,0.5,0
""",
    )
    return later


def test_an_outcome_arriving_later_updates_its_decision(project: Settings, catalog: Catalog, landing: Path) -> None:
    ingest(project, catalog, landing, now=NOW)
    later = _later_outcomes(landing)
    (report,) = ingest(project, catalog, later, now=NOW)
    assert report.loaded == 1
    assert report.rejected == {"decision_id already loaded with other values": 1}  # d1 had outcome 1
    decisions = pd.read_parquet(project.raw_dir / "decisions.parquet").set_index("decision_id")
    assert decisions.loc["d2", "outcome"] == 1.0 and decisions.loc["d1", "outcome"] == 1.0


def test_an_unusable_file_is_reported_and_loads_nothing(project: Settings, catalog: Catalog, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IngestError, match="no tables"):
        ingest(project, catalog, empty, now=NOW)
    broken = tmp_path / "broken"
    broken.mkdir()
    _write(broken / "identity.csv", "system,key\napp,a-1")
    (broken / "events.parquet").write_bytes(b"PAR1 truncated")
    reports = {r.table: r for r in ingest(project, catalog, broken, now=NOW)}
    (why,) = reports["identity"].failed_files.values()
    assert "missing required columns ['source_system', 'source_key', 'customer_id']" in why
    (why,) = reports["events"].failed_files.values()
    assert why.startswith("cannot read events.parquet")
    assert all(r.rows == r.loaded == 0 for r in reports.values())
    assert not any(project.raw_dir.glob("*.parquet"))
    kept = sorted(p.name for p in (project.quarantine_dir / "files").iterdir())
    assert len(kept) == 4 and kept[0].startswith("events-") and kept[0].endswith("events.parquet")


def test_customers_need_no_sign_up_date(project: Settings, catalog: Catalog, tmp_path: Path) -> None:
    source = tmp_path / "profile_only"
    source.mkdir()
    _write(source / "customers.csv", "customer_id,region\nC1,north\nC2,south")
    (report,) = ingest(project, catalog, source, now=NOW)
    assert (report.loaded, report.rejected, report.failed_files) == (2, {}, {})
    assert list(pd.read_parquet(project.raw_dir / "customers.parquet").columns) == ["customer_id", "region"]


def test_event_parts_such_as_the_service_inbox_load_together(
    project: Settings, catalog: Catalog, landing: Path
) -> None:
    ingest(project, catalog, landing, now=NOW)
    inbox = landing.parent / "inbox"
    inbox.mkdir()
    header = "event_id,occurred_at,source_system,source_key,touch_type\n"
    (inbox / "events-001.csv").write_text(header + "rt-1,2026-10-20T10:00:00Z,app,a-1,app_like\n")
    (inbox / "events-002.csv").write_text(
        header + "rt-2,2026-10-21T10:00:00Z,app,a-2,app_like\nrt-3,2026-10-21T10:00:00Z,app,zzz,app_like\n"
    )
    (report,) = ingest(project, catalog, inbox, now=NOW)
    assert (report.rows, report.loaded, report.rejected) == (3, 2, {"unresolvable source key": 1})


def test_the_cli_prints_counts_per_reason_and_fails_cleanly(project: Settings, landing: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nexttouch.cli import app

    ok = CliRunner().invoke(app, ["ingest", str(landing), "--project-dir", str(project.project_dir)])
    assert ok.exit_code == 0, ok.output
    assert "events             11 rows: 3 loaded, 0 already loaded, 8 rejected" in ok.output
    assert "1  unknown touch type" in ok.output and "quarantine: " in ok.output
    (tmp_path / "nothing").mkdir()
    failed = CliRunner().invoke(app, ["ingest", str(tmp_path / "nothing"), "--project-dir", str(project.project_dir)])
    assert failed.exit_code == 2 and "ingest failed: no tables" in failed.output


@pytest.mark.parametrize("engine", ["embedded", "dask"])
def test_key_partitions_load_and_reject_what_one_pass_does(
    project: Settings, catalog: Catalog, landing: Path, tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    """A tiny memory budget splits every table but customers by key: the same reports, rows and quarantine,
    with the partitions run here or on a Dask cluster."""
    from nexttouch.ingest import KEYS, TABLES, _partitions

    scheduler = request.getfixturevalue("dask_scheduler") if engine == "dask" else None
    small = project.model_copy(
        update={"project_dir": tmp_path / "small", "data_memory_gib": 1e-7, "dask_scheduler": scheduler}
    )
    assert _partitions(small, "events", [landing / "events.csv"]) > 3
    assert _partitions(small, "customers", [landing / "customers.csv"]) == 1
    for rerun in (False, True):
        whole = {r.table: r for r in ingest(project, catalog, landing, now=NOW)}
        parted = {r.table: r for r in ingest(small, catalog, landing, now=NOW)}
        for table in TABLES:
            a, b = whole[table], parted[table]
            assert (a.rows, a.loaded, a.already_loaded, a.rejected) == (b.rows, b.loaded, b.already_loaded, b.rejected)
            assert a.refused_columns == b.refused_columns
            got = pd.read_parquet(small.raw_dir / f"{table}.parquet").sort_values(KEYS[table], ignore_index=True)
            want = pd.read_parquet(project.raw_dir / f"{table}.parquet").sort_values(KEYS[table], ignore_index=True)
            pd.testing.assert_frame_equal(got, want)
            if a.rejected:
                rows = ["reason", *KEYS[table]]
                q_a = pd.read_csv(a.quarantine, dtype=str).sort_values(rows, ignore_index=True)
                q_b = pd.read_csv(b.quarantine, dtype=str).sort_values(rows, ignore_index=True)
                pd.testing.assert_frame_equal(q_a, q_b)
        assert all(r.loaded == 0 for r in parted.values()) == rerun
    later = _later_outcomes(landing)
    (report,) = ingest(small, catalog, later, now=NOW)
    assert report.loaded == 1 and report.rejected == {"decision_id already loaded with other values": 1}
    decisions = pd.read_parquet(small.raw_dir / "decisions.parquet").set_index("decision_id")
    assert decisions.loc["d2", "outcome"] == 1.0 and decisions.loc["d1", "outcome"] == 1.0
    assert len(decisions) == len(pd.read_parquet(project.raw_dir / "decisions.parquet"))


def test_an_id_given_again_with_blanks_around_it_is_a_duplicate_in_any_partition(
    project: Settings, catalog: Catalog, tmp_path: Path
) -> None:
    from nexttouch.ingest import _partitions

    d = tmp_path / "padded"
    d.mkdir()
    _write(d / "identity.csv", "source_system,source_key,customer_id\napp,a-1,C1")
    rows = [f"e{i},2026-10-01T10:00:00Z,app,a-1,app_session,,,," for i in range(40)]
    rows += [f"\te{i}\t,2026-10-02T10:00:00Z,app,a-1,app_like,,,," for i in range(0, 40, 2)]  # given again, tabbed
    _write(
        d / "events.csv",
        "event_id,occurred_at,source_system,source_key,touch_type,tier,direction,amount,decision_id\n"
        + "\n".join(rows),
    )
    small = project.model_copy(update={"project_dir": tmp_path / "small", "data_memory_gib": 1e-7})
    assert _partitions(small, "events", [d / "events.csv"]) > 3
    reports = {r.table: r for r in ingest(small, catalog, d, now=NOW)}
    assert reports["events"].rejected == {"duplicate event_id": 20}
    assert reports["events"].loaded == 40


def test_a_profile_column_is_numbers_only_if_every_value_is_one() -> None:
    from nexttouch.ingest import _all_numbers

    numbers = pd.Series(["1", "2.5", None] * 600, dtype="string[pyarrow]")
    parsed = _all_numbers(numbers)
    assert parsed.iloc[:2].tolist() == [1.0, 2.5] and parsed.isna().sum() == 600
    late_word = pd.concat([numbers, pd.Series(["gold"], dtype="string[pyarrow]")], ignore_index=True)
    assert _all_numbers(late_word) is None  # past the head: the whole column is read
    assert _all_numbers(pd.Series(["gold", "1"], dtype="string[pyarrow]")) is None


def test_a_value_given_where_one_was_missing_is_a_change(project: Settings, catalog: Catalog, tmp_path: Path) -> None:
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    later.mkdir()
    _write(first / "identity.csv", "source_system,source_key,customer_id\napp,a-1,C1")
    _write(first / "customers.csv", "customer_id,signup_at,region\nC1,2025-01-01,\nC2,2025-01-01,south")
    event = "e1,2026-10-01T10:00:00Z,app,a-1,push_opened,,,,"
    header = "event_id,occurred_at,source_system,source_key,touch_type,tier,direction,amount,decision_id"
    _write(first / "events.csv", f"{header}\n{event}")
    ingest(project, catalog, first, now=NOW)
    _write(later / "customers.csv", "customer_id,signup_at,region\nC1,2025-01-01,north\nC2,2025-01-01,south")
    _write(later / "events.csv", f"{header}\n{event}d1")  # e1 again, now naming a decision
    reports = {r.table: r for r in ingest(project, catalog, later, now=NOW)}
    assert (reports["customers"].loaded, reports["customers"].already_loaded) == (1, 1)  # C1's region filled in
    customers = pd.read_parquet(project.raw_dir / "customers.parquet").set_index("customer_id")
    assert customers.loc["C1", "region"] == "north"
    assert reports["events"].rejected == {"event_id already loaded with other values": 1}


def test_rows_compared_across_kinds_of_values_differ_where_a_value_differs() -> None:
    from nexttouch.ingest import _rows_equal

    numbers = pd.DataFrame({"v": pd.array([1, None, 3], dtype="Int64"), "w": [1.0, 2.0, None]})
    text = pd.DataFrame({"v": pd.array(["1", None, "x"], dtype="string[pyarrow]"), "w": [1.0, None, None]})
    assert _rows_equal(numbers, text, ["v"]).tolist() == [False, True, False]  # a number is not its text
    assert _rows_equal(text, numbers, ["v"]).tolist() == [False, True, False]
    assert _rows_equal(numbers, text, ["w"]).tolist() == [True, False, True]  # missing equals only missing
