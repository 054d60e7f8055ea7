"""The bulk online load writes exactly what Feast's stock `materialize` writes (SQLite and Redis)."""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pytest

from nexttouch.jobs.project import copy_feature_repo
from nexttouch.settings import Settings
from tests.conftest import END

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

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


def _online(settings: Settings, store: FeatureStore | None = None) -> pd.DataFrame:
    from nexttouch.feature_store import open_store

    store = store or open_store(settings)
    ids = pd.read_parquet(settings.offline_dir / "customer_profile.parquet")["customer_id"].tolist()
    rows = [{"customer_id": c, "request_at": END} for c in [*ids, "nobody"]]
    got = store.get_online_features(features=store.get_feature_service(settings.feature_service), entity_rows=rows)
    return pd.DataFrame(got.to_dict())


def _dump(settings: Settings) -> dict[str, list[tuple]]:
    with sqlite3.connect(settings.data_dir / "feast" / "online.db") as con:
        return {v: con.execute(f'SELECT * FROM "nexttouch_{v}" ORDER BY entity_key').fetchall() for v in VIEWS}


def _empty(settings: Settings) -> None:
    with sqlite3.connect(settings.data_dir / "feast" / "online.db") as con:
        for v in VIEWS:
            con.execute(f'DELETE FROM "nexttouch_{v}"')


def test_sqlite_bulk_load_equals_stock_materialize(offline: Settings) -> None:
    from features.online_load import write_latest_online
    from features.pipeline import feast_apply, materialize
    from nexttouch.feature_store import open_store

    early = END - timedelta(days=20)  # before the last snapshots: those must not be loaded
    history = pd.read_parquet(offline.offline_dir / "touch_history.parquet")
    some = history[
        history["customer_id"].isin(history["customer_id"].unique()[::2]) & (history["event_timestamp"] <= early)
    ]
    store = open_store(offline)
    _empty(offline)
    assert materialize(offline, early, stock=True) == {}
    stock, stock_rows = _online(offline), _dump(offline)
    materialize(offline, END, stock=True)
    stock_later = _dump(offline)
    # Half the customers' older rows on top: the other half keep their later ones.
    store.write_to_online_store("touch_history", some.sort_values("event_timestamp").groupby("customer_id").tail(1))
    stock_half = _dump(offline)
    assert stock_half not in (stock_rows, stock_later)

    _empty(offline)
    reader = open_store(offline)  # a reader connection kept open across the loads, as the service's
    assert _online(offline, reader)["tech_in_30d"].isna().all()
    written = materialize(offline, early)
    assert written == {v: stock["customer_id"].iloc[:-1].nunique() for v in VIEWS}
    pd.testing.assert_frame_equal(_online(offline, reader), stock)
    assert _dump(offline) == stock_rows  # byte for byte, timestamps included
    assert stock["tech_in_30d"].iloc[:-1].notna().all() and pd.isna(stock["tech_in_30d"].iloc[-1])
    assert {len(rows) for rows in stock_rows.values()} == {stock["customer_id"].iloc[:-1].nunique()}  # a row each
    materialize(offline, END)  # a full load over a full table
    assert _dump(offline) == stock_later
    assert write_latest_online(store, "touch_history", some) == some["customer_id"].nunique()
    assert _dump(offline) == stock_half  # the customers a load does not cover keep their rows
    pd.testing.assert_frame_equal(_online(offline, reader), _online(offline))

    feast_apply(offline)  # leaves the loaded tables as they are
    assert _dump(offline) == stock_half


def test_partial_write_upserts(offline: Settings) -> None:
    """A few rows written update those entities (after a stock or a bulk load) and leave the others alone."""
    from features.online_load import write_latest_online
    from features.pipeline import materialize
    from nexttouch.feature_store import open_store

    store = open_store(offline)
    for bulk in (False, True):
        _empty(offline)
        materialize(offline, END, stock=not bulk)
        before = _online(offline)
        history = pd.read_parquet(offline.offline_dir / "touch_history.parquet")
        few = history[history["customer_id"].isin(before["customer_id"].iloc[:3])].copy()
        few["tech_in_30d"] += 1000
        few["event_timestamp"] += timedelta(days=1)
        assert write_latest_online(store, "touch_history", few) == 3
        after = _online(offline)
        changed = after["tech_in_30d"].fillna(-1) != before["tech_in_30d"].fillna(-1)
        assert changed.tolist() == [True] * 3 + [False] * (len(before) - 3)
        assert (after["tech_in_30d"].iloc[:3] == before["tech_in_30d"].iloc[:3] + 1000).all()


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
        assert {client.ttl(k) for k in keys} == {-1}  # no key_ttl_seconds: no expiry, as with stock

        yaml.write_text(yaml.read_text().replace("  type: redis\n", "  type: redis\n  key_ttl_seconds: 3600\n"))
        client.delete(*keys)
        materialize(s, END)  # with a key TTL, each customer's hash gets an EXPIRE after its HSET
        pd.testing.assert_frame_equal(_online(s), stock)
        assert all(3500 < client.ttl(k) <= 3600 for k in keys)
    finally:
        store.teardown()


def test_the_latest_rows_file_answers_as_a_scan_of_the_snapshots_does(offline: Settings, tmp_path: Path) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from features import online_load
    from features.online_load import latest_path, read_latest
    from features.touch_features import TOUCH_FEATURES
    from nexttouch.touches import CONTACT_STATE

    shutil.copy2(offline.offline_dir / "touch_history.parquet", tmp_path / "touch_history.parquet")
    path, latest = tmp_path / "touch_history.parquet", latest_path(offline.offline_dir / "touch_history.parquet")
    columns = ["customer_id", "event_timestamp", *TOUCH_FEATURES, *CONTACT_STATE]

    def read(end=END) -> pd.DataFrame:
        return read_latest(path, ["customer_id"], "event_timestamp", columns, end)

    scanned, early = read(), read(END - timedelta(days=20))  # no latest file yet: scans
    shutil.copy2(latest, latest_path(path))
    pd.testing.assert_frame_equal(read(), scanned)
    latest_path(path).write_bytes(b"")  # a file that does not parse is ignored
    pd.testing.assert_frame_equal(read(), scanned)
    shutil.copy2(latest, latest_path(path))
    with pytest.MonkeyPatch.context() as patch:  # the file is read where it answers, and only there
        patch.setattr(online_load, "_wanted_rows", lambda *a, **k: pytest.fail("scanned"))
        pd.testing.assert_frame_equal(read(), scanned)
    pd.testing.assert_frame_equal(read(END - timedelta(days=20)), early)  # rows later than the end: a scan

    table = pq.read_table(path)  # the snapshots rewritten since: the stale file is ignored
    pq.write_table(table.set_column(2, table.field(2), pc.add(table.column(2), 1).cast(table.field(2).type)), path)
    assert table.field(2).name in TOUCH_FEATURES
    assert (read()[table.field(2).name] == scanned[table.field(2).name] + 1).all()


def test_one_customer_and_constant_columns_are_written(offline: Settings) -> None:
    """A feature with one value in a write is a literal in the statement (no parameter of its own)."""
    from features.online_load import write_latest_online
    from features.pipeline import materialize
    from nexttouch.feature_store import open_store

    store = open_store(offline)
    materialize(offline, END)
    before = _online(offline)
    first = before["customer_id"].iloc[0]
    history = pd.read_parquet(offline.offline_dir / "touch_history.parquet")
    profile = pd.read_parquet(offline.offline_dir / "customer_profile.parquet")
    for view, frame in (("touch_history", history), ("contact_state", history), ("customer_profile", profile)):
        assert write_latest_online(store, view, frame[frame["customer_id"] == first]) == 1
    pd.testing.assert_frame_equal(_online(offline), before)

    last = store.get_feature_view("customer_profile").features[-1].name
    profile[last] = profile[last].iloc[0]  # the same for everyone, in the view's last column
    assert write_latest_online(store, "customer_profile", profile) == len(profile)
    after = _online(offline)
    assert (after[last].iloc[:-1] == profile[last].iloc[0]).all()
    pd.testing.assert_frame_equal(after.drop(columns=[last]), before.drop(columns=[last]))


def test_a_load_in_small_chunks_stores_what_the_whole_table_load_stores(
    offline: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Into an empty store and over a full one (holding older rows), byte for byte."""
    from features import online_load
    from features.pipeline import materialize

    _empty(offline)
    whole_written = materialize(offline, END)
    whole, whole_online = _dump(offline), _online(offline)

    sizes: list[int] = []
    write = online_load._write_latest

    def spy(store: FeatureStore, view: FeatureView, table: pa.Table, run: Callable[..., object]) -> int:
        sizes.append(table.num_rows)
        return write(store, view, table, run)

    monkeypatch.setattr(online_load, "ONLINE_LOAD_ROWS", 7)
    monkeypatch.setattr(online_load, "_write_latest", spy)
    _empty(offline)
    assert materialize(offline, END) == whole_written  # the totals over the chunks
    assert max(sizes) == 7 and len(sizes) >= 3 * (len(whole_online) - 1) // 7
    assert _dump(offline) == whole
    pd.testing.assert_frame_equal(_online(offline), whole_online)

    materialize(offline, END - timedelta(days=20))
    assert _dump(offline) != whole
    assert materialize(offline, END) == whole_written
    assert _dump(offline) == whole
    pd.testing.assert_frame_equal(_online(offline), whole_online)


def test_the_chunked_reader_yields_the_whole_read_rows(offline: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the latest-rows file and from a scan of the full file: the same rows, in chunks of at most N."""
    from features import online_load
    from features.online_load import _latest_chunks, _view_columns, latest_path, read_latest
    from nexttouch.feature_store import open_store

    store = open_store(offline)
    history, profile = store.get_feature_view("touch_history"), store.get_feature_view("customer_profile")
    assert latest_path(offline.offline_dir / "touch_history.parquet").exists()
    assert not latest_path(offline.offline_dir / "customer_profile.parquet").exists()
    cases = [  # (view, end, from the latest file)
        (history, END, True),
        (history, END - timedelta(days=20), False),  # rows later than the end: a scan
        (profile, END, False),
    ]
    for view, end, latest in cases:
        path = offline.offline_dir / Path(view.batch_source.path).name
        args = (path, ["customer_id"], view.batch_source.timestamp_field, _view_columns(view), end)
        whole = read_latest(*args)
        with monkeypatch.context() as patch:
            if latest:
                patch.setattr(online_load, "_wanted_rows", lambda *a, **k: pytest.fail("scanned"))
            chunks = list(_latest_chunks(*args, rows=7))
        assert [c.num_rows for c in chunks[:-1]] == [7] * (len(chunks) - 1) and 0 < chunks[-1].num_rows <= 7
        assert len(chunks) == -(-len(whole) // 7) and len(whole) > 50
        pd.testing.assert_frame_equal(pa.concat_tables(chunks).to_pandas(), whole)

    path, columns = offline.offline_dir / "customer_profile.parquet", _view_columns(profile)
    (empty,) = _latest_chunks(path, ["customer_id"], "event_timestamp", columns, END - timedelta(1e4), rows=7)
    assert empty.num_rows == 0 and empty.column_names == columns  # no rows: one empty table, the schema known


def test_the_writer_prepares_one_job_while_one_is_written() -> None:
    """A job is queued only once the one before it is done, and a job's error is the load's."""
    import time

    from features.online_load import _BoundedWriter

    done: list[int] = []

    def job(i: int) -> Callable[[], None]:
        def run() -> None:
            time.sleep(0.01)
            done.append(i)

        return run

    with _BoundedWriter() as writer:
        for i in range(5):
            writer.submit(job(i))
            assert done == list(range(i))
    assert done == list(range(5))

    def boom() -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"), _BoundedWriter() as writer:
        writer.submit(boom)
