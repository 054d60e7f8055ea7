"""Hostile input: broken files, wrong types and encodings, a million bad rows. Never a crash half-way:
each bad row is quarantined with its reason, an unusable file is reported (and the CLI fails),
and everything good still loads."""

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from nexttouch.catalog import Catalog
from nexttouch.ingest import NOT_UTF8, ingest
from nexttouch.settings import Settings

NOW = datetime(2026, 11, 1, tzinfo=UTC)
IDENTITY = "source_system,source_key,customer_id\napp,a-1,C1\napp,a-2,C2\n"
EVENTS = "event_id,occurred_at,source_system,source_key,touch_type\n"


def _quarantined(settings: Settings, table: str) -> pd.DataFrame:
    (path,) = settings.quarantine_dir.glob(f"{table}-*.csv")
    return pd.read_csv(path, dtype=str, keep_default_na=False, engine="pyarrow")


def test_a_truncated_parquet_is_reported_and_the_good_files_load(project: Settings, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nexttouch.cli import app

    src = tmp_path / "in"
    src.mkdir()
    (src / "identity.csv").write_text(IDENTITY)
    good = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(100)],
            "occurred_at": pd.Timestamp("2026-10-01", tz="UTC"),
            "source_system": "app",
            "source_key": "a-1",
            "touch_type": "app_session",
        }
    )
    good.to_parquet(src / "events-001.parquet")
    good.assign(event_id=good["event_id"] + "b").to_parquet(src / "events-002.parquet")
    whole = (src / "events-002.parquet").read_bytes()
    (src / "events-002.parquet").write_bytes(whole[: len(whole) // 2])  # cut off mid-file: no footer

    result = CliRunner().invoke(app, ["ingest", str(src), "--project-dir", str(project.project_dir)])
    assert result.exit_code == 2
    assert "events            100 rows: 100 loaded" in result.output
    assert "file not loaded: events-002.parquet: cannot read events-002.parquet" in result.output
    assert "ingest failed for these files" in result.stderr
    assert len(pd.read_parquet(project.raw_dir / "events.parquet")) == 100
    (copy,) = (project.quarantine_dir / "files").glob("*events-002.parquet")
    assert copy.read_bytes() == whole[: len(whole) // 2]


def test_wrong_column_types_reject_only_the_rows_they_break(
    project: Settings, catalog: Catalog, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "identity.csv").write_text(IDENTITY)
    pd.DataFrame(
        {
            "customer_id": ["C1", "C2"],
            "signup_at": ["2025-01-01", "2025-02-01"],  # text, not a timestamp type: parsed per row
            "score": [1, 2],
        }
    ).to_parquet(src / "customers.parquet")
    pd.DataFrame(
        {
            "event_id": [1, 2, 3],  # numbers where text is expected: taken as text
            "occurred_at": [1_790_000_000, 1_790_000_000, 1_790_000_000],  # epoch seconds: not a time
            "source_system": ["app"] * 3,
            "source_key": ["a-1", "a-2", "a-1"],
            "touch_type": ["app_session"] * 3,
        }
    ).to_parquet(src / "events-001.parquet")
    pd.DataFrame(
        {
            "event_id": ["x1", "x2"],
            "occurred_at": ["2026-10-01T00:00:00Z", "2026-10-02T00:00:00Z"],
            "source_system": ["app", "app"],
            "source_key": ["a-1", "a-2"],
            "touch_type": ["purchase", "purchase"],
            "amount": ["12.5", "twelve"],  # text amounts: one parses, one does not
        }
    ).to_parquet(src / "events-002.parquet")
    pd.DataFrame(
        {
            "decision_id": ["d1", "d2"],
            "customer_id": ["C1", "C2"],
            "decided_at": [pd.Timestamp("2026-10-01")] * 2,  # naive: taken as UTC
            "action": ["push", "push"],
            "propensity": ["0.5", "high"],
            "outcome": [True, False],  # booleans are 1 and 0
        }
    ).to_parquet(src / "decisions.parquet")

    reports = {r.table: r for r in ingest(project, catalog, src, now=NOW)}
    assert (reports["customers"].loaded, reports["customers"].rejected) == (2, {})
    assert reports["events"].rejected == {"unparsable occurred_at": 3, "unparsable amount": 1}
    assert reports["decisions"].rejected == {"unparsable propensity": 1}
    events = pd.read_parquet(project.raw_dir / "events.parquet")
    assert events.set_index("event_id").loc["x1", "amount"] == 12.5
    decisions = pd.read_parquet(project.raw_dir / "decisions.parquet")
    assert decisions["outcome"].tolist() == [1.0] and str(decisions["decided_at"].dtype) == "datetime64[us, UTC]"
    assert _quarantined(project, "events").set_index("event_id").loc["1", "occurred_at"] == "1790000000"


def test_latin1_rows_are_quarantined_utf16_loads(project: Settings, catalog: Catalog, tmp_path: Path) -> None:
    header = "customer_id,signup_at,city\n"
    latin = tmp_path / "latin"
    latin.mkdir()
    (latin / "customers.csv").write_bytes(
        (header + "C1,2025-01-01,Oslo\nC2,2025-01-01,Göteborg\nC3,2025-01-01,Malmö\nC4,2025-01-01,Bergen\n").encode(
            "latin-1"
        )
    )
    (report,) = ingest(project, catalog, latin, now=NOW)
    assert (report.loaded, report.rejected) == (2, {NOT_UTF8: 2})
    bad = _quarantined(project, "customers").set_index("customer_id")
    assert bad.loc["C2", "city"] == "Göteborg"  # shown as latin-1, never loaded as mojibake
    assert sorted(pd.read_parquet(project.raw_dir / "customers.parquet")["customer_id"]) == ["C1", "C4"]

    utf16 = tmp_path / "utf16"
    utf16.mkdir()
    (utf16 / "customers.csv").write_text(header + "C5,2025-01-01,Zürich\nC6,2025-01-01,東京\n", encoding="utf-16")
    (report,) = ingest(project, catalog, utf16, now=NOW)
    assert (report.loaded, report.rejected) == (2, {})
    cities = pd.read_parquet(project.raw_dir / "customers.parquet").set_index("customer_id")["city"]
    assert cities["C5"] == "Zürich" and cities["C6"] == "東京"


def test_garbage_files_are_reported_not_crashed_on(project: Settings, catalog: Catalog, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "identity.csv").write_text(IDENTITY)
    (src / "events-001.csv").write_bytes(bytes(range(256)) * 40)  # binary junk named .csv
    (src / "events-002.csv").write_text(EVENTS + "e1,2026-10-01,app,a-1,app_session,extra,fields\n")
    (src / "events-003.csv").write_text("\ufeff" + EVENTS + "e2,2026-10-01,app,a-2,app_like\n")  # UTF-8 BOM
    (src / "decisions.parquet").write_bytes(b"")
    reports = {r.table: r for r in ingest(project, catalog, src, now=NOW)}
    assert sorted(p.name for p in reports["events"].failed_files) == ["events-001.csv", "events-002.csv"]
    assert reports["events"].loaded == 1 and reports["identity"].loaded == 2
    (why,) = reports["decisions"].failed_files.values()
    assert why.startswith("cannot read decisions.parquet")
    assert "more fields than the header" in reports["events"].failed_files[src / "events-002.csv"]


def test_a_million_bad_rows_are_quarantined_with_a_reason_each(
    project: Settings, catalog: Catalog, tmp_path: Path
) -> None:
    n = 1_000_000
    src = tmp_path / "in"
    src.mkdir()
    (src / "identity.csv").write_text(IDENTITY)
    i = np.arange(n)
    kind = i % 4
    pd.DataFrame(
        {
            "event_id": pd.Series(i).astype(str).radd("e").where(kind != 3, None),  # kind 3: no id
            "occurred_at": np.where(kind == 1, "2099-01-01T00:00:00Z", "2026-10-01T00:00:00Z"),
            "source_system": "app",
            "source_key": np.where(kind == 2, "nobody", "a-1"),
            "touch_type": np.where(kind == 0, "telepathy", "app_session"),
        }
    ).to_parquet(src / "events.parquet")
    pd.DataFrame({"event_id": ["ok"], "occurred_at": ["2026-10-01"], "source_system": ["app"]}).assign(
        source_key="a-2", touch_type="app_like"
    ).to_csv(src / "events-good.csv", index=False)

    reports = {r.table: r for r in ingest(project, catalog, src, now=NOW)}
    q = n // 4
    assert reports["events"].rejected == {
        "unknown touch type": q,
        "occurred_at in the future": q,
        "unresolvable source key": q,
        "missing event_id": q,
    }
    assert reports["events"].loaded == 1
    quarantined = _quarantined(project, "events")
    assert len(quarantined) == n
    assert quarantined.loc[7, "reason"] == "missing event_id" and quarantined.loc[7, "source_key"] == "a-1"
    assert pd.read_parquet(project.raw_dir / "events.parquet")["customer_id"].tolist() == ["C2"]


def test_the_id_check_on_bytes_agrees_with_the_id_pattern() -> None:
    """Ids are checked on their bytes, not by regex: the same answer as ID_PATTERN for any text."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from nexttouch.api import ID_PATTERN
    from nexttouch.ingest import _fits_id

    hostile = ["C0000001", "app-0000a1b2", "a.b:c@d_e-f", "", " C1", "C1 ", "C1\n", "\nC1", "=HYPERLINK(x)", "ü1"]
    hostile += ["C1\x00", "tab\there", "日本", "emoji😀", "a/b", "a+b", "a,b", "-", ".", "x" * 300, None]
    rng = np.random.default_rng(7)
    alphabet = list("aZ09_.:@-/ +,=\n\t\x7fé")
    hostile += ["".join(rng.choice(alphabet, rng.integers(0, 6))) for _ in range(2000)]
    values = pa.array(hostile, pa.large_string())
    for text in (
        values,
        values.slice(3),
        values.slice(1, 50),
        values.slice(0, 0),
        pa.array([None, None], pa.large_string()),
    ):
        expected = pc.fill_null(pc.match_substring_regex(text, ID_PATTERN), True).to_numpy(zero_copy_only=False)
        assert (_fits_id(text) == expected).all()
    assert _fits_id(pa.array(["", None, "ok"], pa.large_string())).tolist() == [False, True, True]
