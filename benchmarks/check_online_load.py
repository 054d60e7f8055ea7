"""Check that ``features.online_load.write_latest_online`` writes what stock ``materialize`` writes.

A small simulated brand is materialized the stock way; the online tables are dumped, emptied,
loaded again with ``write_latest_online`` and dumped again: the two dumps must be identical row
for row and byte for byte (SQLite), and ``get_online_features`` must return the same values.
Usage: ``.venv/bin/python -m benchmarks.check_online_load [--customers 2000] [--redis]``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from tests.conftest import copy_feature_repo

END = datetime(2026, 11, 1, tzinfo=UTC)
VIEWS = ("touch_history", "contact_state", "customer_profile")


def _dump(db: Path, project: str) -> dict[str, list[tuple]]:
    with sqlite3.connect(db) as con:
        return {
            v: con.execute(
                f'SELECT entity_key, feature_name, value, value_text, event_ts, created_ts FROM "{project}_{v}" '
                "ORDER BY entity_key, feature_name"
            ).fetchall()
            for v in VIEWS
        }


def _online(store, ids: list[str]) -> pd.DataFrame:
    service = store.get_feature_service("nexttouch_v1")
    rows = [{"customer_id": c, "request_at": END} for c in ids]
    return pd.DataFrame(store.get_online_features(features=service, entity_rows=rows).to_dict())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--redis", action="store_true", help="also check the Redis profile (127.0.0.1:6379, db 15)")
    args = parser.parse_args()
    os.environ.setdefault("FEAST_USAGE", "False")

    from features.online_load import write_latest_online
    from features.pipeline import build_offline, feast_apply, materialize
    from nexttouch.catalog import load_catalog
    from nexttouch.feature_store import open_store
    from nexttouch.ingest import ingest
    from nexttouch.settings import load_settings
    from nexttouch.simulate import write_brand

    with tempfile.TemporaryDirectory() as tmp:
        copy_feature_repo(Path(tmp))
        s = load_settings(project_dir=Path(tmp), customers=args.customers, days=120, seed=3)
        write_brand(s, load_catalog(), END, s.landing_dir)
        ingest(s, load_catalog(), s.landing_dir, now=END)
        build_offline(s, END, s.days)
        profiles = [s]
        if args.redis:
            profiles.append(s.model_copy(update={"online_store": "redis", "redis_url": "127.0.0.1:6379,db=15"}))
        for p in profiles:
            feast_apply(p)
            materialize(p, END)
            store = open_store(p)
            ids = pd.read_parquet(s.raw_dir / "customers.parquet")["customer_id"].tolist()
            ids = ids[:: max(1, len(ids) // 500)]
            stock = _online(store, ids)
            db = s.data_dir / "feast" / "online.db"
            before = _dump(db, store.project) if p.online_store == "sqlite" else None
            if p.online_store == "sqlite":
                with sqlite3.connect(db) as con:
                    for v in VIEWS:
                        con.execute(f'DELETE FROM "{store.project}_{v}"')
            else:
                client = __import__("redis").Redis(host="127.0.0.1", port=6379, db=15)
                client.flushdb()
            touch = pd.read_parquet(s.offline_dir / "touch_history.parquet")
            profile = pd.read_parquet(s.offline_dir / "customer_profile.parquet")
            store = open_store(p)
            for view, frame in (("touch_history", touch), ("contact_state", touch), ("customer_profile", profile)):
                write_latest_online(store, view, frame)
            bulk = _online(store, ids)
            pd.testing.assert_frame_equal(stock, bulk)
            if before is not None:
                after = _dump(db, store.project)
                for v in VIEWS:
                    assert before[v] == after[v], f"{v}: rows differ from materialize"
                    print(f"{v}: {len(after[v]):,} SQLite rows identical to materialize")
            else:
                client.flushdb()
            print(f"{p.online_store}: get_online_features identical for {len(ids)} customers, {stock.shape[1]} columns")


if __name__ == "__main__":
    main()
