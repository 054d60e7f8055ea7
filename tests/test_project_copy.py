"""A copied project directory is a project of its own: applying Feast in it leaves the original alone."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from features.pipeline import feast_apply
from nexttouch.settings import Settings

pytestmark = pytest.mark.slow


def _tables(settings: Settings) -> set[str]:
    with sqlite3.connect(settings.data_dir / "feast" / "online.db") as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_feast_apply_in_a_copy_keeps_the_originals_online_tables(built: Settings, tmp_path: Path) -> None:
    before = _tables(built)
    assert any(t.endswith("_touch_history") for t in before)
    shutil.copytree(built.project_dir, tmp_path / "copy", ignore=shutil.ignore_patterns("mlruns", "models"))
    copy = built.model_copy(update={"project_dir": tmp_path / "copy"})

    feast_apply(copy)

    assert _tables(built) == before  # the copied registry's infra pointed at the original's tables
    assert (copy.data_dir / "feast" / "registry.db.owner").read_text() == str(
        (copy.data_dir / "feast" / "registry.db").resolve()
    )
