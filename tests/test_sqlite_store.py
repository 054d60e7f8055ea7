"""nexttouch's SQLite online store: Feast reads and writes it, `feast apply` evolves and converts it."""

from __future__ import annotations

import shutil
import sqlite3
import time
from datetime import UTC, datetime

import pandas as pd
import pytest
from feast import Field
from feast.types import Int64

from nexttouch.jobs.project import copy_feature_repo
from nexttouch.settings import Settings
from tests.conftest import END

pytestmark = pytest.mark.slow


@pytest.fixture
def offline(built: Settings, tmp_path) -> Settings:
    """A project of its own holding the built project's offline feature files (not yet applied)."""
    copy_feature_repo(tmp_path)
    shutil.copytree(built.offline_dir, tmp_path / "data" / "offline")
    return built.model_copy(update={"project_dir": tmp_path})


def _online(settings: Settings) -> pd.DataFrame:
    from nexttouch.feature_store import open_store

    store = open_store(settings)
    ids = pd.read_parquet(settings.offline_dir / "customer_profile.parquet")["customer_id"].tolist()
    rows = [{"customer_id": c, "request_at": END} for c in [*ids, "nobody"]]
    got = store.get_online_features(features=store.get_feature_service(settings.feature_service), entity_rows=rows)
    return pd.DataFrame(got.to_dict())


def _columns(settings: Settings, table: str) -> list[str]:
    with sqlite3.connect(settings.data_dir / "feast" / "online.db") as db:
        return [c[1] for c in db.execute(f'PRAGMA table_info("{table}")')]


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch):
    """Local time 5 hours behind UTC (Feast's own store reads naive UTC times as local ones)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_apply_converts_a_table_in_feasts_layout_keeping_its_rows(offline: Settings, new_york: None) -> None:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from features.online_read import OnlineReader
    from features.pipeline import feast_apply, materialize
    from nexttouch.feature_store import open_store

    ours = offline.feature_repo / "feature_store.yaml"
    text = ours.read_text()
    ours.write_text(text.replace("type: features.sqlite_store.WideSqliteOnlineStore", "type: sqlite"))
    feast_apply(offline)
    materialize(offline, END, stock=True)  # Feast's own store: a row per customer and feature
    assert "feature_name" in _columns(offline, "nexttouch_touch_history")
    before = _online(offline)
    assert before["tech_in_30d"].iloc[:-1].notna().all()

    ours.write_text(text)
    store = open_store(offline)
    with pytest.raises(RuntimeError, match="Feast's own SQLite layout: run `feast apply`"):  # not silent Nones
        OnlineReader(store, store.get_feature_service(offline.feature_service))
    feast_apply(offline)

    columns = _columns(offline, "nexttouch_touch_history")
    assert columns[:3] == ["entity_key", "event_ts", "created_ts"] and "v:tech_in_30d" in columns
    with sqlite3.connect(offline.data_dir / "feast" / "online.db") as db:
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master")}
        assert db.execute('SELECT count(*) FROM "nexttouch_touch_history"').fetchone()[0] == len(before) - 1
    assert not any(n.endswith(("__feast_layout", "_ek")) for n in tables)
    pd.testing.assert_frame_equal(_online(offline), before)
    store = open_store(offline)
    first = before["customer_id"].iloc[0]
    key = EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=first)])
    view = store.get_feature_view("touch_history")
    ((ts, _),) = store._get_provider().online_store.online_read(store.config, view, [key])
    history = pd.read_parquet(offline.offline_dir / "touch_history.parquet", filters=[("customer_id", "==", first)])
    assert ts == history.loc[history["event_timestamp"] <= END, "event_timestamp"].max()  # in UTC, as it was


def test_a_new_feature_gets_a_column_and_writes_keep_the_features_they_do_not_carry(offline: Settings) -> None:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from features.pipeline import feast_apply, materialize
    from nexttouch.feature_store import open_store

    feast_apply(offline)
    materialize(offline, END)
    before = _online(offline)
    store = open_store(offline)
    online = store._get_provider().online_store
    view = store.get_feature_view("touch_history")
    view.features.append(Field(name="new_score", dtype=Int64))
    online.update(store.config, [], [view], [], [], partial=False)  # what `feast apply` does with the new view
    assert "v:new_score" in _columns(offline, "nexttouch_touch_history")

    first = before["customer_id"].iloc[0]
    key = EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=first)])
    at = datetime(2026, 11, 2, 8, 30, tzinfo=UTC)
    same_7d = Value(int64_val=int(before["tech_in_7d"].iloc[0]))
    writes = [  # in this order: the last write of a feature wins, whatever else the writes carry
        (key, {"new_score": Value(int64_val=5)}, at, None),
        (key, {"new_score": Value(int64_val=6), "tech_in_7d": same_7d}, at, None),
        (key, {"new_score": Value(int64_val=7)}, at, None),
    ]
    online.online_write_batch(store.config, view, writes, None)

    (ts, values), (none_ts, nothing) = online.online_read(
        store.config, view, [key, EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val="nobody")])]
    )
    assert ts == at and (none_ts, nothing) == (None, None)
    assert values["new_score"].int64_val == 7
    assert values["tech_in_30d"].int64_val == before["tech_in_30d"].iloc[0]  # not carried: kept
    after = _online(offline)
    pd.testing.assert_frame_equal(after, before)  # the service's features are the same
