"""Bulk load of the latest feature row per entity into the Feast online store.

Stock ``materialize`` (and ``write_to_online_store``) builds one ``ValueProto`` per cell and
writes them one SQL statement (or one Redis command) at a time: 378 s for 1M customers into
SQLite. Feature values repeat a lot (counts, flags, shared snapshot times), so here each
*distinct* value of a column is converted once with Feast's own ``python_values_to_proto_values``
and serialized once, and the bytes are spread back with numpy; entity keys use Feast's
serialization. The result is byte for byte what ``materialize`` writes (checked by
``tests/test_online_load.py``), so ``get_online_features`` reads it unchanged.

Like SQLite ``materialize`` (and Redis ``materialize`` with ``skip_dedup``), a load overwrites an
entity's stored row even if that row is newer.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

SQLITE_BATCH = 200_000  # entities per executemany: bounds the memory of the row arrays
REDIS_BATCH = 5_000  # entities per pipeline round trip
# Key columns stay arrow strings in pandas: no Python object per cell for 26M snapshot rows.
_ARROW_STRINGS = {pa.string(): pd.ArrowDtype(pa.string()), pa.large_string(): pd.ArrowDtype(pa.large_string())}


def materialize_bulk(store: FeatureStore, end: datetime) -> dict[str, int]:
    """What ``store.materialize(start_date=EPOCH, end_date=end)`` does, for file-backed views, in bulk.

    Each online view's latest row per entity up to ``end`` is read from its parquet file (only those
    rows become pandas) and written with ``write_latest_online``; a view backed by anything but a
    parquet file goes through Feast's ``materialize``. Returns rows written per view.
    """
    from feast import FileSource

    written = {}
    for view in store.list_feature_views():
        source = view.batch_source
        if not view.online:
            continue
        if not isinstance(source, FileSource):
            store.materialize(start_date=datetime(1970, 1, 2, tzinfo=UTC), end_date=end, feature_views=[view.name])
            continue
        keys = [c.name for c in view.entity_columns]
        columns = [*keys, source.timestamp_field, *(f.name for f in view.features)]
        if source.created_timestamp_column:
            columns.append(source.created_timestamp_column)
        frame = read_latest(Path(source.path), keys, source.timestamp_field, columns, end)
        written[view.name] = write_latest_online(store, view.name, frame)
    return written


def read_latest(path: Path, keys: list[str], ts_col: str, columns: list[str], end: datetime) -> pd.DataFrame:
    """Each entity's latest row at or before ``end`` from a parquet file, reading batch by batch.

    The keys and times are read first to find the rows; then only those rows of ``columns`` are
    kept from each record batch, so a file of 26M weekly snapshots never sits in memory whole.
    """
    file = pq.ParquetFile(path)
    head = file.read(columns=[*keys, ts_col])
    times = pc.cast(head.column(ts_col), pa.timestamp("us", "UTC")).to_numpy()
    upto = times <= np.datetime64(pd.Timestamp(end).tz_convert("UTC").tz_localize(None), "us")
    frame = head.to_pandas(types_mapper=_ARROW_STRINGS.get)
    wanted = np.flatnonzero(upto)[_latest_rows(frame.loc[upto], keys, ts_col)]
    del head, frame
    parts, offset = [], 0
    for batch in file.iter_batches(batch_size=1 << 20, columns=columns):
        mine = wanted[(wanted >= offset) & (wanted < offset + batch.num_rows)] - offset
        parts.append(batch.take(pa.array(mine)))
        offset += batch.num_rows
    schema = pa.schema([file.schema_arrow.field(c) for c in columns])
    return pa.Table.from_batches(parts, schema=schema).to_pandas()


def write_latest_online(store: FeatureStore, feature_view_name: str, frame: pd.DataFrame) -> int:
    """Write the latest row of each entity in ``frame`` to the online store; returns rows written.

    ``frame`` is an offline feature frame of the view: its join keys, its batch source's
    timestamp column and its features (other columns are ignored).
    """
    view = store.get_feature_view(feature_view_name)
    source = view.batch_source
    keys = [c.name for c in view.entity_columns]
    ts_col = source.timestamp_field
    latest = frame.iloc[_latest_rows(frame, keys, ts_col)]
    if latest.empty:
        return 0
    cols = [*keys, ts_col, *(f.name for f in view.features)]
    if source.created_timestamp_column:
        cols.append(source.created_timestamp_column)
    table = pa.Table.from_pandas(latest[cols], preserve_index=False)
    online = store.config.online_store
    plain = not getattr(online, "vector_enabled", False) and not getattr(
        online, "enable_openai_compatible_store", False
    )
    if online.type == "sqlite" and plain:
        _write_sqlite(store, view, table)
    elif online.type == "redis":
        _write_redis(store, view, table)
    else:  # any other store: Feast's own (slow) path
        store.write_to_online_store(feature_view_name, latest[cols])
    return table.num_rows


def _latest_rows(frame: pd.DataFrame, keys: list[str], ts_col: str) -> np.ndarray:
    """Positions of each entity's latest row (the last one in file order on a tie), in file order."""
    times = pd.to_datetime(frame[ts_col], utc=True).dt.tz_localize(None).to_numpy()
    if len(keys) == 1:
        codes = pd.factorize(frame[keys[0]])[0]
    else:
        codes = frame.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()
    order = np.lexsort((times, codes))  # by entity, then time; stable for ties
    last = np.append(codes[order][1:] != codes[order][:-1], True)
    return np.sort(order[last])


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A column as Feast's ``_convert_arrow_fv_to_proto`` sees it."""
    return table.column(name).to_numpy(zero_copy_only=False)


def _encoded(values: np.ndarray, value_type: Any) -> tuple[np.ndarray, np.ndarray]:
    """Serialized ``ValueProto`` and Feast's ``value_text`` per value, converting each distinct value once."""
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.type_map import python_values_to_proto_values

    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    uniques = np.asarray(uniques, dtype=values.dtype)
    missing = np.flatnonzero(codes < 0)
    if len(missing):  # a missing value is converted as it is (NaN, NaT or None), by Feast's rules
        uniques = np.concatenate([uniques, values[missing[:1]]])
        codes = np.where(codes < 0, len(uniques) - 1, codes)
    protos = python_values_to_proto_values(uniques, value_type)
    blobs = np.array([p.SerializeToString() for p in protos], dtype=object)
    texts = np.array([extract_text_and_num(p, False)[0] for p in protos], dtype=object)
    return blobs[codes], texts[codes]


def _timestamps(values: np.ndarray) -> list[datetime]:
    """Python datetimes as Feast passes them to an online store (naive UTC)."""
    from feast.utils import _coerce_datetime

    return [_coerce_datetime(t) for t in pd.to_datetime(values)]


def _entity_keys(store: FeatureStore, view: FeatureView, table: pa.Table) -> np.ndarray:
    """Feast's serialized entity key of every row.

    One string join key (nexttouch's ``customer_id``): the serialization is a constant head, the
    value's length and its UTF-8 bytes, so it is built directly and checked against Feast's own
    function; any other key shape goes through Feast's function row by row.
    """
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    version = store.config.entity_key_serialization_version
    columns = view.entity_columns
    names = [c.name for c in columns]

    def feast_key(row: list[Any]) -> bytes:
        values = [
            python_values_to_proto_values([v], c.dtype.to_value_type())[0] for v, c in zip(row, columns, strict=True)
        ]
        return serialize_entity_key(EntityKeyProto(join_keys=names, entity_values=values), version)

    raw = [_column(table, n) for n in names]
    if len(columns) == 1 and columns[0].dtype.to_value_type() == ValueType.STRING:
        sample = "x"
        full = feast_key([sample])
        head = full[: -(4 + len(sample))]
        keys = np.array(
            [head + len(b).to_bytes(4, "little") + b for b in (str(v).encode("utf8") for v in raw[0])], dtype=object
        )
        for i in {0, len(keys) // 2, len(keys) - 1}:
            if keys[i] != feast_key([raw[0][i]]):
                raise RuntimeError("entity key serialization differs from Feast's; cannot bulk load")
        return keys
    return np.array([feast_key(list(row)) for row in zip(*raw, strict=True)], dtype=object)


def _feature_arrays(view: FeatureView, table: pa.Table) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {f.name: _encoded(_column(table, f.name), f.dtype.to_value_type()) for f in view.features}


def _write_sqlite(store: FeatureStore, view: FeatureView, table: pa.Table) -> None:
    """Upsert (entity_key, feature_name) rows with the values ``SqliteOnlineStore.online_write_batch`` writes.

    Binding parameters from Python costs ~4 us a row, whatever the indexes, so entities are bound
    once each, as one wide row of a temporary table, and SQLite unpivots them into Feast's
    one-row-per-feature layout itself (``CROSS JOIN`` with the feature names, in key order, so the
    table and its indexes grow at their ends).
    """
    from feast.infra.online_stores.sqlite import SqliteOnlineStore, _quote_id, _table_id, adapt_datetime_epoch
    from feast.utils import to_naive_utc

    config = store.config
    name = _table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
    keys = _entity_keys(store, view, table)
    order = np.argsort(keys, kind="stable")
    source = view.batch_source

    def epoch(column: str) -> np.ndarray:  # the sqlite3 adapter Feast registers, once per distinct time
        times = _column(table, column)
        codes, uniques = pd.factorize(times)
        stamps = [adapt_datetime_epoch(to_naive_utc(t)) for t in _timestamps(np.asarray(uniques, times.dtype))]
        return np.array([*stamps, None], dtype=object)[codes]

    event_ts = epoch(source.timestamp_field)
    created_ts = epoch(source.created_timestamp_column) if source.created_timestamp_column else np.full(len(keys), None)
    features = sorted(_feature_arrays(view, table).items())
    n = len(features)
    stage = ["k", "ts", "cts", *(f"v{i}" for i in range(n)), *(f"t{i}" for i in range(n))]
    columns = [keys, event_ts, created_ts, *(blobs for _, (blobs, _) in features), *(text for _, (_, text) in features)]

    def pick(prefix: str) -> str:
        return "CASE f.i " + " ".join(f"WHEN {i} THEN s.{prefix}{i}" for i in range(n)) + " END"

    target = ["entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts"]
    update = ", ".join(f"{c} = excluded.{c}" for c in target[2:])
    unpivot = (
        f"INSERT INTO {_quote_id(name)} ({', '.join(target)}) "
        f"SELECT s.k, f.name, {pick('v')}, {pick('t')}, s.ts, s.cts "
        "FROM temp.nexttouch_stage AS s CROSS JOIN temp.nexttouch_features AS f WHERE true "
        f"ON CONFLICT(entity_key, feature_name) DO UPDATE SET {update}"
    )
    db = sqlite3.connect(SqliteOnlineStore._get_db_path(config))
    try:
        # This connection only: no fsync per page, a large page cache, the staging table in memory.
        for pragma in ("synchronous = OFF", "cache_size = -524288", "temp_store = MEMORY"):
            db.execute(f"PRAGMA {pragma}")
        with db:
            db.execute(f"CREATE TEMP TABLE nexttouch_stage ({', '.join(stage)})")
            db.execute("CREATE TEMP TABLE nexttouch_features (i INTEGER PRIMARY KEY, name TEXT)")
            db.executemany("INSERT INTO temp.nexttouch_features VALUES (?, ?)", enumerate(f for f, _ in features))
            for lo in range(0, len(keys), SQLITE_BATCH):
                rows = order[lo : lo + SQLITE_BATCH]
                db.executemany(
                    f"INSERT INTO temp.nexttouch_stage VALUES ({', '.join('?' * len(stage))})",
                    zip(*(c[rows] for c in columns), strict=True),
                )
            # Feast's secondary index (on entity_key) is rebuilt once, sorted, not row by row.
            indexes = db.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                (name,),
            ).fetchall()
            for index, _ in indexes:
                db.execute(f"DROP INDEX {_quote_id(index)}")
            db.execute(unpivot)
            for _, sql in indexes:
                db.execute(sql)
            db.execute("DROP TABLE temp.nexttouch_stage")
            db.execute("DROP TABLE temp.nexttouch_features")
    finally:
        db.close()


def _write_redis(store: FeatureStore, view: FeatureView, table: pa.Table) -> None:
    """``HSET`` each entity's hash as ``RedisOnlineStore.online_write_batch`` does (skip_dedup path)."""
    from feast.infra.online_stores.helpers import _mmh3
    from feast.infra.online_stores.redis import RedisOnlineStore, _versioned_fv_name
    from feast.utils import make_tzaware
    from google.protobuf.timestamp_pb2 import Timestamp

    config = store.config
    online = config.online_store
    client = RedisOnlineStore()._get_client(online)
    fv_name = _versioned_fv_name(view, config)
    project = config.project.encode("utf-8")
    keys = [k + project for k in _entity_keys(store, view, table)]

    times = _column(table, view.batch_source.timestamp_field)
    codes, uniques = pd.factorize(times)
    stamps = []
    for t in _timestamps(np.asarray(uniques, times.dtype)):
        proto = Timestamp()
        proto.FromDatetime(make_tzaware(t))
        stamps.append(proto.SerializeToString())
    ts_values = np.array(stamps, dtype=object)[codes]
    features = _feature_arrays(view, table)
    fields = [f"_ts:{fv_name}", *(_mmh3(f"{fv_name}:{f}") for f in features)]
    values = np.stack([ts_values, *(blobs for blobs, _ in features.values())], axis=1)

    for lo in range(0, len(keys), REDIS_BATCH):
        with client.pipeline(transaction=False) as pipe:
            for key, row in zip(keys[lo : lo + REDIS_BATCH], values[lo : lo + REDIS_BATCH], strict=True):
                pipe.hset(key, mapping=dict(zip(fields, row, strict=True)))
                if online.key_ttl_seconds:
                    pipe.expire(name=key, time=online.key_ttl_seconds)
            pipe.execute()
