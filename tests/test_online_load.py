"""The bulk online load writes exactly what Feast's stock `materialize` writes (SQLite and Redis)."""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from nexttouch.settings import Settings
from tests.conftest import END, copy_feature_repo

pytestmark = pytest.mark.slow
VIEWS = ("touch_history", "contact_state", "customer_profile")


@pytest.fixture(scope="module")
def offline(built: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A project of its own holding the built project's offline feature files (no rebuild)."""
    base = tmp_path_factory.mktemp("online_load")
    copy_feature_repo(base)
    from features.pipeline import feast_apply

    shutil.copytree(built.offline_dir, base / "data" / "offline")
    settings = built.model_copy(update={"project_dir": base})
    feast_apply(settings)
    return settings


def _online(settings: Settings) -> pd.DataFrame:
    from nexttouch.feature_store import open_store

    store = open_store(settings)
    ids = pd.read_parquet(settings.offline_dir / "customer_profile.parquet")["customer_id"].tolist()
    rows = [{"customer_id": c, "request_at": END} for c in [*ids, "nobody"]]
    got = store.get_online_features(features=store.get_feature_service(settings.feature_service), entity_rows=rows)
    return pd.DataFrame(got.to_dict())


def _dump(settings: Settings) -> dict[str, list[tuple]]:
    with sqlite3.connect(settings.data_dir / "feast" / "online.db") as con:
        rows = {
            v: con.execute(f'SELECT * FROM "nexttouch_{v}" ORDER BY entity_key, feature_name').fetchall() for v in VIEWS
        }
        # Feast's indexes are all there after a bulk load (it drops and rebuilds them)
        return rows | {"indexes": sorted(con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))}


def _empty(settings: Settings) -> None:
    with sqlite3.connect(settings.data_dir / "feast" / "online.db") as con:
        for v in VIEWS:
            con.execute(f'DELETE FROM "nexttouch_{v}"')


def test_sqlite_bulk_load_equals_stock_materialize(offline: Settings) -> None:
    from features.pipeline import materialize

    end = END - timedelta(days=20)  # before the last snapshots: those must not be loaded
    _empty(offline)
    assert materialize(offline, end, stock=True) == {}
    stock, stock_rows = _online(offline), _dump(offline)
    _empty(offline)
    written = materialize(offline, end)
    assert written == {v: stock["customer_id"].iloc[:-1].nunique() for v in VIEWS}
    pd.testing.assert_frame_equal(_online(offline), stock)
    assert _dump(offline) == stock_rows  # byte for byte, timestamps included
    assert stock["tech_in_30d"].iloc[:-1].notna().all() and pd.isna(stock["tech_in_30d"].iloc[-1])


def test_redis_bulk_load_equals_stock_materialize(offline: Settings) -> None:
    redis = pytest.importorskip("redis")
    from features.pipeline import feast_apply, materialize
    from nexttouch.feature_store import open_store

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379")
    yaml: Path = offline.feature_repo / "feature_store.redis.yaml"
    yaml.write_text(yaml.read_text().replace("project: nexttouch", f"project: nt_test_{uuid.uuid4().hex[:10]}"))
    s = offline.model_copy(update={"online_store": "redis", "redis_url": "127.0.0.1:6379"})
    feast_apply(s)
    store = open_store(s)
    try:
        materialize(s, END, stock=True)
        stock = _online(s)
        client = redis.Redis(host="127.0.0.1", port=6379)
        keys = list(client.scan_iter(match=f"*{store.project}".encode()))  # keys end with the project name
        assert len(keys) == len(stock) - 1
        client.delete(*keys)
        assert _online(s)["tech_in_30d"].isna().all()
        materialize(s, END)
        pd.testing.assert_frame_equal(_online(s), stock)
    finally:
        store.teardown()
