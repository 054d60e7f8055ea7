"""The snapshots `nexttouch features` builds by default are chosen from the ingested data and cover every decision."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from features.pipeline import SNAPSHOT_TTL, snapshot_window, uncovered
from nexttouch.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
TODAY = datetime(2026, 6, 1, tzinfo=UTC)


def _raw(tmp_path: Path, customers: int, decided: list[str], occurred: list[str]) -> Settings:
    settings = load_settings(project_dir=tmp_path)
    raw = settings.raw_dir
    raw.mkdir(parents=True)
    ids = [f"C{i:07d}" for i in range(customers)]
    pd.DataFrame({"customer_id": ids, "signup_at": pd.Timestamp("2025-01-01", tz="UTC")}).to_parquet(
        raw / "customers.parquet"
    )
    times = {"decisions": ("decided_at", decided), "events": ("occurred_at", occurred)}
    for table, (column, values) in times.items():
        pd.DataFrame({column: pd.to_datetime(values, utc=True, format="ISO8601")}).to_parquet(raw / f"{table}.parquet")
    return settings


def test_the_default_window_ends_after_the_data_and_reaches_back_to_the_first_decision(tmp_path: Path) -> None:
    settings = _raw(tmp_path, 100, ["2026-03-10 12:00", "2026-05-20 08:00"], ["2026-01-02", "2026-05-21 10:00"])
    window = snapshot_window(settings, TODAY)
    assert window.end == datetime(2026, 5, 22, tzinfo=UTC)  # the day boundary after the last touch
    assert (window.days, window.every_days) == (74, 1)  # 72.5 days back to the first decision, rounded up, +1
    assert window.first == datetime(2026, 3, 10, tzinfo=UTC) and window.chosen == ("end", "days", "every_days")
    assert uncovered(settings, window).decisions == 0


def test_many_customers_get_the_smallest_spacing_under_the_row_budget(tmp_path: Path) -> None:
    settings = _raw(tmp_path, 100_000, ["2026-03-10 12:00"], ["2026-05-21 10:00"])
    window = snapshot_window(settings, TODAY)
    assert window.every_days == 2  # daily: 100,000 x 75 rows > 5M; every 2 days: 3.8M
    assert window.first <= datetime(2026, 3, 10, 12, tzinfo=UTC) and uncovered(settings, window).decisions == 0


def test_data_that_runs_into_today_ends_at_today(tmp_path: Path) -> None:
    settings = _raw(tmp_path, 10, ["2026-05-01"], ["2026-06-01 09:00"])
    assert snapshot_window(settings, TODAY).end == TODAY  # never a snapshot in the future


def test_a_window_that_misses_decisions_names_them(tmp_path: Path) -> None:
    decided = ["2026-02-01 10:00", "2026-03-01 10:00", "2026-04-20 10:00", "2026-05-20 10:00"]
    settings = _raw(tmp_path, 10, decided, ["2026-05-21"])
    window = snapshot_window(settings, TODAY, end=datetime(2026, 5, 22, tzinfo=UTC), days=40, every_days=7)
    assert window.chosen == () and window.first == datetime(2026, 4, 17, tzinfo=UTC)
    gap = uncovered(settings, window)  # before the first snapshot: the two oldest decisions
    assert (gap.decisions, gap.of, gap.first, gap.last) == (
        2,
        4,
        datetime(2026, 2, 1, 10, tzinfo=UTC),
        datetime(2026, 3, 1, 10, tzinfo=UTC),
    )
    # the newest decision is more than the TTL after an old last snapshot
    stale = snapshot_window(settings, TODAY, end=datetime(2026, 4, 15, tzinfo=UTC), days=90, every_days=1)
    assert uncovered(settings, stale).decisions == 1 and stale.end + SNAPSHOT_TTL < pd.Timestamp(decided[-1], tz="UTC")


@pytest.mark.parametrize("view", ["touch_history", "contact_state"])
def test_the_ttl_the_window_checks_is_the_feature_views(view: str) -> None:
    tree = ast.parse((ROOT / "features" / "feature_views.py").read_text())
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "FeatureView":
            kw = {k.arg: k.value for k in call.keywords}
            if ast.literal_eval(kw["name"]) == view:
                ttl = kw["ttl"]
                assert isinstance(ttl, ast.Call) and ttl.func.id == "timedelta"  # type: ignore[attr-defined]
                days = {k.arg: ast.literal_eval(k.value) for k in ttl.keywords}
                assert timedelta(**days) == SNAPSHOT_TTL
                return
    pytest.fail(f"no FeatureView {view}")
