"""Feast's SQLite online store with one row per entity and view: a column per feature.

Feast's own SQLite store keeps one row per (entity, feature), each repeating the entity key and
the feature name: 34M rows for 1M customers here, so any load writes 34M B-tree entries (stock
``materialize`` took 378 s). This store, a subclass registered through Feast's custom online store
setting (``type: features.sqlite_store.WideSqliteOnlineStore``), keeps the same file, the same
serialized entity keys and the same serialized ``ValueProto`` per feature, in one row per entity:
``entity_key`` (the primary key, ``WITHOUT ROWID``), ``event_ts``, ``created_ts`` (epoch seconds)
and a BLOB column ``"v:<feature>"`` per feature. Feast's ``get_online_features``, ``materialize``,
``push`` and ``feast apply`` go through it unchanged; ``features.online_load`` bulk-writes it and
``features.online_read`` bulk-reads it.

A write replaces the features it carries and leaves an entity's other features as they are, as
Feast's store does; a feature never written reads as missing. ``feast apply`` adds a column for a
new feature (a dropped feature's column stays, unread) and converts a table left in Feast's layout.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from feast import Entity, FeatureView, RepoConfig
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig, _quote_id, _table_id
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

TYPE = "features.sqlite_store.WideSqliteOnlineStore"
KEY_COLUMNS = ("entity_key", "event_ts", "created_ts")
PREFIX = "v:"  # of a feature's column: no feature name can clash with the key columns
READ_CHUNK = 5_000  # keys per query: well under SQLite's bound-parameter limit


class WideSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    type: Literal["features.sqlite_store.WideSqliteOnlineStore"] = TYPE  # type: ignore[assignment]


def column(feature: str) -> str:
    """The quoted column of a feature."""
    return _quote_id(PREFIX + feature)


def table_name(config: RepoConfig, view: FeatureView) -> str:
    return _table_id(config.project, view, config.registry.enable_online_feature_view_versioning)


def epoch_seconds(ts: datetime | None) -> int | None:
    """Whole seconds since the epoch, floored; a naive time is UTC (Feast's own store reads it as local time)."""
    if ts is None:
        return None
    aware = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    return int(aware.timestamp() // 1)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """A table's column names (none: no such table)."""
    return [c[1] for c in conn.execute(f"PRAGMA main.table_info({_quote_id(table)})")]


def stored_features(conn: sqlite3.Connection, table: str) -> list[str]:
    """The features a table has a column for (none: no such table); a table in Feast's own layout is an error."""
    columns = _columns(conn, table)
    if "feature_name" in columns:
        raise RuntimeError(f"online table {table} is in Feast's own SQLite layout: run `feast apply` to convert it")
    return _features(columns)


def _features(columns: Sequence[str]) -> list[str]:
    return [c.removeprefix(PREFIX) for c in columns if c.startswith(PREFIX)]


def upsert_sql(table: str, features: Sequence[str], values: Sequence[str] | None = None) -> str:
    """``INSERT`` of (entity_key, event_ts, created_ts, *features) that replaces those columns of a stored row.

    ``values`` are the SQL expressions of the row (default: one ``?`` each).
    """
    columns = [*KEY_COLUMNS, *map(column, features)]
    values = values or ["?"] * len(columns)
    update = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
    return (
        f"INSERT INTO {_quote_id(table)} ({', '.join(columns)}) VALUES ({', '.join(values)}) "
        f"ON CONFLICT (entity_key) DO UPDATE SET {update}"
    )


class WideSqliteOnlineStore(SqliteOnlineStore):
    """Feast's SQLite online store, one row per entity (see the module's docstring)."""

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        conn = self._get_conn(config)
        name = table_name(config, table)
        version = config.entity_key_serialization_version
        with conn:
            # Consecutive rows carrying the same features share a statement; the order of the writes is kept.
            for features, run in itertools.groupby(data, key=lambda row: tuple(sorted(row[1]))):
                rows = [
                    (
                        serialize_entity_key(key, version),
                        epoch_seconds(ts),
                        epoch_seconds(created),
                        *(values[f].SerializeToString() for f in features),
                    )
                    for key, values, ts, created in run
                ]
                conn.executemany(upsert_sql(name, features), rows)
                if progress:
                    progress(len(rows))

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        conn = self._get_conn(config)
        name = table_name(config, table)
        present = set(stored_features(conn, name))
        wanted = requested_features if requested_features is not None else [f.name for f in table.features]
        features = [f for f in dict.fromkeys(wanted) if f in present]
        version = config.entity_key_serialization_version
        keys = [serialize_entity_key(k, version) for k in entity_keys]
        select = ", ".join(["entity_key", "event_ts", *map(column, features)])
        found: dict[bytes, tuple] = {}
        for lo in range(0, len(keys), READ_CHUNK):
            chunk = keys[lo : lo + READ_CHUNK]
            sql = f"SELECT {select} FROM {_quote_id(name)} WHERE entity_key IN ({', '.join('?' * len(chunk))})"
            found.update((row[0], row[1:]) for row in conn.execute(sql, chunk))
        result: list[tuple[datetime | None, dict[str, ValueProto] | None]] = []
        for key in keys:
            row = found.get(key)
            if row is None:
                result.append((None, None))
                continue
            values = {f: ValueProto.FromString(b) for f, b in zip(features, row[1:], strict=True) if b is not None}
            result.append((None if row[0] is None else datetime.fromtimestamp(row[0], UTC), values))
        return result

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        online = config.online_store
        if online.vector_enabled or online.text_search_enabled or online.enable_openai_compatible_store:
            raise ValueError(f"{TYPE} stores plain features only: vector and text search need type: sqlite")
        conn = self._get_conn(config)
        with conn:
            conn.execute("BEGIN IMMEDIATE")  # one transaction: DDL included, a conversion is all or nothing
            for view in tables_to_keep:
                name = table_name(config, view)
                columns = _columns(conn, name)
                if "feature_name" in columns:
                    _convert_feast_layout(conn, name)
                    columns = _columns(conn, name)
                if not columns:
                    _create(conn, name, [f.name for f in view.features])
                    continue
                stored = _features(columns)
                for feature in [f.name for f in view.features if f.name not in stored]:
                    conn.execute(f"ALTER TABLE {_quote_id(name)} ADD COLUMN {column(feature)} BLOB")
            for view in tables_to_delete:
                conn.execute(f"DROP TABLE IF EXISTS {_quote_id(table_name(config, view))}")

    def plan(self, config: RepoConfig, desired_registry_proto: Any) -> list:
        """No infra objects: Feast's would create tables in its own layout (``feast apply`` calls ``update``)."""
        return []

    def retrieve_online_documents(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{TYPE} has no vector search: use type: sqlite")

    def retrieve_online_documents_v2(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{TYPE} has no vector search: use type: sqlite")


def _create(conn: sqlite3.Connection, name: str, features: Sequence[str]) -> None:
    columns = ", ".join(["entity_key BLOB PRIMARY KEY", "event_ts INTEGER", "created_ts INTEGER"])
    features_sql = "".join(f", {column(f)} BLOB" for f in features)
    conn.execute(f"CREATE TABLE {_quote_id(name)} ({columns}{features_sql}) WITHOUT ROWID")


def _convert_feast_layout(conn: sqlite3.Connection, name: str) -> None:
    """Rewrite a table in Feast's layout (a row per entity and feature) as one row per entity, keeping its data."""
    features = [f for (f,) in conn.execute(f"SELECT DISTINCT feature_name FROM {_quote_id(name)} ORDER BY 1")]
    old = f"{name}__feast_layout"
    conn.execute(f"ALTER TABLE {_quote_id(name)} RENAME TO {_quote_id(old)}")
    conn.execute(f"DROP INDEX IF EXISTS {_quote_id(name + '_ek')}")
    _create(conn, name, features)
    picks = "".join(", max(CASE WHEN feature_name = ? THEN value END)" for _ in features)
    # Feast stored int(naive UTC time.timestamp()), which reads the time as local: shifted back to UTC here.
    utc = "CAST(strftime('%s', max({0}), 'unixepoch', 'localtime') AS INTEGER)"
    conn.execute(
        f"INSERT INTO {_quote_id(name)} SELECT entity_key, {utc.format('event_ts')}, {utc.format('created_ts')}{picks} "
        f"FROM {_quote_id(old)} GROUP BY entity_key",
        features,
    )
    conn.execute(f"DROP TABLE {_quote_id(old)}")
