"""Bulk load of the latest feature row per entity into the Feast online store.

Stock ``materialize`` (and ``write_to_online_store``) builds one ``ValueProto`` per cell and
writes them one SQL statement (or one Redis command) at a time: 378 s for 1M customers into
SQLite. Here feature values are converted once per *distinct* value (numbers and times by numpy
encoders checked against Feast's ``python_values_to_proto_values``, other types by it), entity
keys are built with Feast's serialization (checked the same way), and the bytes are spread back
with numpy. SQLite gets one ``INSERT … SELECT`` per view into a fresh table that is swapped in
(``_sqlite_writer``); Redis gets its ``HSET`` commands as raw RESP on one connection. The stored
bytes are exactly those of ``materialize`` (checked by ``tests/test_online_load.py``), so
``get_online_features`` reads them unchanged.

Like SQLite ``materialize`` (and Redis ``materialize`` with ``skip_dedup``), a load overwrites an
entity's stored row even if that row is newer, and leaves entities it does not cover alone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
REDIS_BATCH = 10_000  # entities per RESP write on the connection
LOOKUP_RATIO = 8  # a column with at most 1 distinct value per this many rows is bound as ids
CHECKED = 64  # distinct values per column whose fast encoding is compared with Feast's
# Key columns stay arrow strings in pandas: no Python object per cell for 26M snapshot rows.
_ARROW_STRINGS = {pa.string(): pd.ArrowDtype(pa.string()), pa.large_string(): pd.ArrowDtype(pa.large_string())}


def materialize_bulk(store: FeatureStore, end: datetime) -> dict[str, int]:
    """What ``store.materialize(start_date=EPOCH, end_date=end)`` does, for file-backed views, in bulk.

    Each online view's latest row per entity up to ``end`` is read from its parquet file (views on
    the same file, like touch_history and contact_state, share one read) and written as a full load
    (``_write_latest``); a view backed by anything but a parquet file goes through Feast's
    ``materialize``. Returns rows written per view.
    """
    from feast import FileSource

    written, reads = {}, {}
    views = []
    for view in store.list_feature_views():
        source = view.batch_source
        if not view.online:
            continue
        if not isinstance(source, FileSource):
            store.materialize(start_date=datetime(1970, 1, 2, tzinfo=UTC), end_date=end, feature_views=[view.name])
            continue
        read = (source.path, tuple(c.name for c in view.entity_columns), source.timestamp_field)
        reads.setdefault(read, {}).update(dict.fromkeys(_view_columns(view)))
        views.append((view, read))
    tables: dict[tuple, pa.Table] = {}
    # SQLite runs each view's INSERT (which releases the GIL) on a writer thread while the next
    # view is read and encoded.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-load") as writer:
        jobs: list[Future] = []
        for view, read in views:
            if read not in tables:
                tables[read] = _read_latest_table(Path(read[0]), list(read[1]), read[2], list(reads[read]), end)
            table = tables[read].select(_view_columns(view))
            written[view.name] = _write_latest(store, view, table, True, lambda job: jobs.append(writer.submit(job)))
        for job in jobs:
            job.result()
    return written


def read_latest(path: Path, keys: list[str], ts_col: str, columns: list[str], end: datetime) -> pd.DataFrame:
    """Each entity's latest row at or before ``end`` from a parquet file, reading batch by batch."""
    return _read_latest_table(path, keys, ts_col, columns, end).to_pandas()


def _read_latest_table(path: Path, keys: list[str], ts_col: str, columns: list[str], end: datetime) -> pa.Table:
    """``read_latest`` as an arrow table.

    The keys and times are read first to find the rows; then only those rows of ``columns`` are
    kept from each record batch, so a file of 26M weekly snapshots never sits in memory whole.
    """
    file = pq.ParquetFile(path)
    head = file.read(columns=[*keys, ts_col])
    times = pc.cast(head.column(ts_col), pa.timestamp("us", "UTC")).to_numpy()
    upto = times <= np.datetime64(pd.Timestamp(end).tz_convert("UTC").tz_localize(None), "us")
    if len(keys) == 1:  # arrow's hash encoding: ~2x pandas' factorize on 26M strings
        key = head.column(keys[0]).combine_chunks()
        codes = pc.dictionary_encode(key, null_encoding="encode").indices.to_numpy(zero_copy_only=False)
    else:
        codes = head.select(keys).to_pandas().groupby(keys, sort=False, dropna=False).ngroup().to_numpy()
    wanted = _last_latest(codes, times, upto)
    del head, codes, times
    parts, offset = [], 0
    for batch in file.iter_batches(batch_size=1 << 20, columns=columns):
        mine = wanted[(wanted >= offset) & (wanted < offset + batch.num_rows)] - offset
        parts.append(batch.take(pa.array(mine)))
        offset += batch.num_rows
    schema = pa.schema([file.schema_arrow.field(c) for c in columns])
    return pa.Table.from_batches(parts, schema=schema)


def write_latest_online(store: FeatureStore, feature_view_name: str, frame: pd.DataFrame, full: bool = False) -> int:
    """Write the latest row of each entity in ``frame`` to the online store; returns rows written.

    ``frame`` is an offline feature frame of the view: its join keys, its batch source's
    timestamp column and its features (other columns are ignored). ``full`` says it holds (about)
    every entity of the view, so SQLite rebuilds the view's table instead of upserting row by row;
    entities missing from ``frame`` keep their stored rows either way.
    """
    view = store.get_feature_view(feature_view_name)
    keys = [c.name for c in view.entity_columns]
    latest = frame.iloc[_latest_rows(frame, keys, view.batch_source.timestamp_field)]
    table = pa.Table.from_pandas(latest[_view_columns(view)], preserve_index=False)
    return _write_latest(store, view, table, full)


def _view_columns(view: FeatureView) -> list[str]:
    source = view.batch_source
    columns = [*(c.name for c in view.entity_columns), source.timestamp_field, *(f.name for f in view.features)]
    return [*columns, source.created_timestamp_column] if source.created_timestamp_column else columns


def _now(job: Callable[[], None]) -> None:
    job()


def _write_latest(
    store: FeatureStore,
    view: FeatureView,
    table: pa.Table,
    full: bool,
    run: Callable[[Callable[[], None]], Any] = _now,
) -> int:
    """Write one row per entity (``table``: the view's columns) with the store's bulk writer.

    ``run`` is given SQLite's SQL part (default: run it now).
    """
    if table.num_rows == 0:
        return 0
    online = store.config.online_store
    plain = not getattr(online, "vector_enabled", False) and not getattr(
        online, "enable_openai_compatible_store", False
    )
    if online.type == "sqlite" and plain:
        run(_sqlite_writer(store, view, table, full))
    elif online.type == "redis":
        _write_redis(store, view, table)
    else:  # any other store: Feast's own (slow) path
        store.write_to_online_store(view.name, table.to_pandas())
    return table.num_rows


def _latest_rows(frame: pd.DataFrame, keys: list[str], ts_col: str) -> np.ndarray:
    """Positions of each entity's latest row (the last one in file order on a tie), in file order."""
    times = pd.to_datetime(frame[ts_col], utc=True).dt.tz_localize(None).to_numpy()
    if len(keys) == 1:
        codes = pd.factorize(frame[keys[0]], use_na_sentinel=False)[0]
    else:
        codes = frame.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()
    return _last_latest(codes, times, np.ones(len(codes), dtype=bool))


def _last_latest(codes: np.ndarray, times: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per entity code, the position of its latest kept row (the last in file order on a tie), in file order.

    Two ``np.maximum.at`` passes, linear in the rows: a lexsort of 26M (entity, time) pairs took ~5 s.
    A missing time counts as the latest, as it sorts last in numpy.
    """
    stamps = times.astype("datetime64[us]").view(np.int64)
    stamps = np.where(np.isnat(times), np.iinfo(np.int64).max, stamps)
    size = int(codes.max()) + 1 if len(codes) else 0
    best = np.full(size, np.iinfo(np.int64).min)
    np.maximum.at(best, codes[keep], stamps[keep])
    rows = np.flatnonzero(keep & (stamps == best[codes]))
    last = np.full(size, -1)
    np.maximum.at(last, codes[rows], rows)
    return np.sort(last[last >= 0])


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A column as Feast's ``_convert_arrow_fv_to_proto`` sees it."""
    return table.column(name).to_numpy(zero_copy_only=False)


def _encoded(values: np.ndarray, value_type: Any) -> tuple[np.ndarray, list[bytes], list[str | None]]:
    """Codes into the distinct values, and each distinct value's serialized ``ValueProto`` and ``value_text``."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    uniques = np.asarray(uniques, dtype=values.dtype)
    blobs, texts = _converted(uniques, value_type)
    missing = np.flatnonzero(codes < 0)
    if len(missing):  # a missing value is converted as it is (NaN, NaT or None), by Feast's rules
        more_blobs, more_texts = _feast_converted(values[missing[:1]], value_type)
        blobs, texts = [*blobs, *more_blobs], [*texts, *more_texts]
        codes = np.where(codes < 0, len(uniques), codes)
    return codes, blobs, texts


def _spread(codes: np.ndarray, items: list[Any]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out[codes]


def _feast_converted(values: np.ndarray, value_type: Any) -> tuple[list[bytes], list[str | None]]:
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.type_map import python_values_to_proto_values

    protos = python_values_to_proto_values(values, value_type)
    return [p.SerializeToString() for p in protos], [extract_text_and_num(p, False)[0] for p in protos]


def _converted(uniques: np.ndarray, value_type: Any) -> tuple[list[bytes], list[str | None]]:
    """Feast's conversion of distinct non-missing values, by numpy where the type allows.

    Feast's ``python_values_to_proto_values`` costs ~8 us a value, and time columns have a distinct
    value per customer. A ``ValueProto`` holding one number is its field tag and the number's
    varint or little-endian bytes, so those are built for all values at once; a sample of them is
    compared with Feast's own result and any difference sends the column through Feast.
    """
    if not len(uniques):
        return [], []
    fast = _fast_converted(uniques, value_type)
    if fast is not None:
        sample = np.unique(np.linspace(0, len(uniques) - 1, CHECKED).astype(int))
        expected = _feast_converted(uniques[sample], value_type)
        if expected == ([fast[0][i] for i in sample], [fast[1][i] for i in sample]):
            return fast
    return _feast_converted(uniques, value_type)


def _fast_converted(values: np.ndarray, value_type: Any) -> tuple[list[bytes], list[str | None]] | None:
    """Serialized ``ValueProto`` and ``value_text`` of int, float and time values; None for other types."""
    from feast.value_type import ValueType

    kind, name = values.dtype.kind, value_type.name
    if kind in "iu" and name in ("INT32", "INT64"):
        ints = values.astype(np.int64)
        if name == "INT32" and (ints.min() < -(2**31) or ints.max() >= 2**31):
            return None
        tag = 0x18 if name == "INT32" else 0x20  # int32_val = 3, int64_val = 4, varint
        return _tagged_varints(tag, ints), [str(v) for v in ints.tolist()]
    if kind == "f" and value_type in (ValueType.FLOAT, ValueType.DOUBLE):
        single = value_type == ValueType.FLOAT  # float_val = 6 (fixed32), double_val = 5 (fixed64)
        numbers = values.astype("<f4" if single else "<f8")
        tag = np.full((len(values), 1), 0x35 if single else 0x29, dtype=np.uint8)
        raw = np.hstack([tag, numbers.view(np.uint8).reshape(len(values), -1)])
        return raw.view(f"V{raw.shape[1]}").ravel().tolist(), [str(v) for v in numbers.astype(np.float64).tolist()]
    if kind == "M" and value_type == ValueType.UNIX_TIMESTAMP:  # unix_timestamp_val = 8: whole seconds, floored
        seconds = values.astype("datetime64[s]").astype(np.int64)
        return _tagged_varints(0x40, seconds), [None] * len(values)
    return None


def _tagged_varints(tag: int, values: np.ndarray) -> list[bytes]:
    """``bytes([tag]) + varint(v)`` for int64 values (negatives as 10-byte two's complement, as protobuf does)."""
    rest = values.astype(np.uint64)
    raw = np.zeros((len(values), 11), dtype=np.uint8)
    raw[:, 0] = tag
    length = np.full(len(values), 2)
    for i in range(1, 11):
        low = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest = rest >> np.uint64(7)
        more = rest != 0
        raw[:, i] = low | (more.astype(np.uint8) << 7)
        length += more
    out = np.empty(len(values), dtype=object)
    for n in np.unique(length):
        rows = np.flatnonzero(length == n)
        out[rows] = np.ascontiguousarray(raw[rows, :n]).view(f"V{n}").ravel().tolist()
    return out.tolist()


def _timestamps(values: np.ndarray) -> list[datetime]:
    """Python datetimes as Feast passes them to an online store (naive UTC)."""
    from feast.utils import _coerce_datetime

    return [_coerce_datetime(t) for t in pd.to_datetime(values)]


def _entity_keys(store: FeatureStore, view: FeatureView, table: pa.Table) -> pa.Array:
    """Feast's serialized entity key of every row, as an arrow binary array.

    One string join key (nexttouch's ``customer_id``): the serialization is a constant head, the
    value's length and its UTF-8 bytes, so it is built by arrow and checked against Feast's own
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

    if len(columns) == 1 and columns[0].dtype.to_value_type() == ValueType.STRING:
        values = pc.cast(table.column(names[0]), pa.string()).combine_chunks()
        sample = "x"
        head = feast_key([sample])[: -(4 + len(sample))]
        lengths = pc.binary_length(values).to_numpy(zero_copy_only=False)
        sizes, at = np.unique(lengths, return_inverse=True)
        heads = pa.array([head + int(n).to_bytes(4, "little") for n in sizes], pa.binary()).take(pa.array(at))
        keys = pc.binary_join_element_wise(heads, pc.cast(values, pa.binary()), b"")
        for i in {0, len(keys) // 2, len(keys) - 1}:
            if keys[i].as_py() != feast_key([values[i].as_py()]):
                raise RuntimeError("entity key serialization differs from Feast's; cannot bulk load")
        return keys
    raw = [_column(table, n) for n in names]
    return pa.array([feast_key(list(row)) for row in zip(*raw, strict=True)], pa.binary())


def _sqlite_writer(store: FeatureStore, view: FeatureView, table: pa.Table, full: bool) -> Callable[[], None]:
    """Prepare the rows ``SqliteOnlineStore.online_write_batch`` would write; returns the SQL step writing them.

    Binding parameters from Python costs ~4 us a row, so entities are bound once each, as one wide
    row of a temporary table (a column with few distinct values as ids into a table of them), and
    SQLite unpivots them into Feast's one-row-per-feature layout itself (``CROSS JOIN`` with the
    feature names, in key order).

    Feast's table has a rowid, so each row lands in three B-trees: the table, its primary-key
    index and the ``<table>_ek`` index on entity_key (34M entries each at 1M customers). A full
    load writes a fresh ``WITHOUT ROWID`` table with the same columns and primary key instead:
    one B-tree, filled at its end in key order, whose key prefix serves Feast's ``entity_key IN``
    reads (so ``<table>_ek`` is made an empty partial index, which keeps ``feast apply``'s
    ``CREATE INDEX IF NOT EXISTS`` from building a redundant copy). The stored rows of entities
    the load does not cover are copied over, then the fresh table replaces the old one (``DROP``
    + ``ALTER TABLE … RENAME``) in the same transaction: readers see the old table or the new one.
    The old table's pages stay in the file, free, and hold the next load.
    Feast's own SQL (upsert, read, ``feast apply``, teardown) works on either layout. A partial
    load (``full=False``) upserts into the table as it is.
    """
    from feast.infra.online_stores.sqlite import SqliteOnlineStore, _quote_id, _table_id, adapt_datetime_epoch
    from feast.utils import to_naive_utc

    config = store.config
    name = _table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
    keys = _entity_keys(store, view, table)
    order = pc.sort_indices(keys).to_numpy()  # byte order, as SQLite compares BLOBs
    keys = keys.take(pa.array(order)).to_numpy(zero_copy_only=False)
    table = table.take(pa.array(order))
    source = view.batch_source

    def epoch(column: str) -> np.ndarray:  # the sqlite3 adapter Feast registers, once per distinct time
        times = _column(table, column)
        codes, uniques = pd.factorize(times)
        stamps = [adapt_datetime_epoch(to_naive_utc(t)) for t in _timestamps(np.asarray(uniques, times.dtype))]
        return np.array([*stamps, None], dtype=object)[codes]

    stage, columns = ["k", "ts"], [keys, epoch(source.timestamp_field)]
    if source.created_timestamp_column:
        stage.append("cts")
        columns.append(epoch(source.created_timestamp_column))
    features = sorted(f.name for f in view.features)
    types = {f.name: f.dtype.to_value_type() for f in view.features}
    # A bytes parameter costs ~5x an int one to bind, so a column with few distinct values is
    # bound as ids into a table of its distinct (value, value_text), which SQLite joins back.
    distinct: list[tuple[int, bytes, str | None]] = []
    ids, values, texts = [], [], []
    for i, feature in enumerate(features):
        codes, blobs, text = _encoded(_column(table, feature), types[feature])
        if len(blobs) * LOOKUP_RATIO <= len(codes):
            stage.append(f"c{i}")
            columns.append((codes + len(distinct)).tolist())
            distinct += zip(range(len(distinct), len(distinct) + len(blobs)), blobs, text, strict=True)
            ids.append(f"s.c{i}")
            values.append("d.value")
            texts.append("d.value_text")
            continue
        stage.append(f"v{i}")
        columns.append(_spread(codes, blobs))
        ids.append("NULL")
        values.append(f"s.v{i}")
        if any(t is not None for t in text):  # time values have no value_text: NULL, not bound
            stage.append(f"t{i}")
            columns.append(_spread(codes, text))
        texts.append(f"s.t{i}" if stage[-1] == f"t{i}" else "NULL")
    created = "s.cts" if source.created_timestamp_column else "NULL"
    target = ["entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts"]
    select = (
        f"SELECT s.k, f.name, {_pick(values)}, {_pick(texts)}, s.ts, {created} "
        "FROM temp.nexttouch_stage AS s CROSS JOIN temp.nexttouch_features AS f "
        f"LEFT JOIN temp.nexttouch_values AS d ON d.id = {_pick(ids)}"
    )
    quoted, fresh = _quote_id(name), _quote_id(f"{name}__load")

    def run() -> None:
        db = sqlite3.connect(SqliteOnlineStore._get_db_path(config))
        try:
            # This connection only: no fsync per page, a large page cache, the staging table in memory,
            # and dropped pages left as they are (Debian's SQLite zeroes them by default, secure_delete,
            # which also copies each one to the rollback journal: a DROP of 1M customers' rows wrote GBs).
            for pragma in ("synchronous = OFF", "cache_size = -524288", "temp_store = MEMORY", "secure_delete = FAST"):
                db.execute(f"PRAGMA {pragma}")
            with db:
                db.execute(f"CREATE TEMP TABLE nexttouch_stage ({', '.join(stage)})")
                db.execute("CREATE TEMP TABLE nexttouch_features (i INTEGER PRIMARY KEY, name TEXT)")
                db.executemany("INSERT INTO temp.nexttouch_features VALUES (?, ?)", enumerate(features))
                db.execute("CREATE TEMP TABLE nexttouch_values (id INTEGER PRIMARY KEY, value BLOB, value_text TEXT)")
                db.executemany("INSERT INTO temp.nexttouch_values VALUES (?, ?, ?)", distinct)
                insert = f"INSERT INTO temp.nexttouch_stage VALUES ({', '.join('?' * len(stage))})"
                for lo in range(0, len(keys), SQLITE_BATCH):
                    db.executemany(insert, zip(*(c[lo : lo + SQLITE_BATCH] for c in columns), strict=True))
                if not full:
                    update = ", ".join(f"{c} = excluded.{c}" for c in target[2:])
                    db.execute(
                        f"INSERT INTO {quoted} ({', '.join(target)}) {select} WHERE true "
                        f"ON CONFLICT(entity_key, feature_name) DO UPDATE SET {update}"
                    )
                else:
                    info = db.execute(f"PRAGMA main.table_info({quoted})").fetchall()
                    if not info:
                        raise sqlite3.OperationalError(f"no such table: {name} (run `feast apply`)")
                    all_columns = [_quote_id(c[1]) for c in info]
                    # The placeholder index is made while the fresh table is empty (CREATE INDEX reads
                    # every row, even for WHERE false); the old table's index gives up its name first.
                    db.execute(f"DROP INDEX IF EXISTS {_quote_id(name + '_ek')}")
                    db.execute(
                        f"CREATE TABLE {fresh} ({', '.join(f'{_quote_id(c[1])} {c[2]}' for c in info)}, "
                        "PRIMARY KEY (entity_key, feature_name)) WITHOUT ROWID"
                    )
                    db.execute(f"CREATE INDEX {_quote_id(name + '_ek')} ON {fresh} (entity_key) WHERE false")
                    db.execute(f"INSERT INTO {fresh} ({', '.join(target)}) {select}")
                    # Stored entities the load does not cover keep their rows: each entity is looked up once.
                    db.execute(
                        f"WITH stored AS MATERIALIZED (SELECT DISTINCT entity_key FROM {quoted}) "
                        f"INSERT INTO {fresh} SELECT {', '.join(all_columns)} FROM {quoted} WHERE entity_key IN "
                        "(SELECT entity_key FROM stored WHERE entity_key NOT IN (SELECT k FROM temp.nexttouch_stage))"
                    )
                    # Dropped last: pages freed in this transaction would be journaled if reused in it;
                    # freed now, they hold the next load without a journal copy.
                    db.execute(f"DROP TABLE {quoted}")
                    db.execute(f"ALTER TABLE {fresh} RENAME TO {quoted}")
                db.execute("DROP TABLE temp.nexttouch_stage")
                db.execute("DROP TABLE temp.nexttouch_features")
                db.execute("DROP TABLE temp.nexttouch_values")
        finally:
            db.close()

    return run


def _pick(columns: list[str], first: int = 0) -> str:
    """The stage column of feature ``f.i``: a binary search of nested ``CASE``s, ~5 comparisons a row, not ~17."""
    if len(columns) == 1:
        return columns[0]
    half = len(columns) // 2
    low, high = _pick(columns[:half], first), _pick(columns[half:], first + half)
    return f"CASE WHEN f.i < {first + half} THEN {low} ELSE {high} END"


def _write_redis(store: FeatureStore, view: FeatureView, table: pa.Table) -> None:
    """``HSET`` each entity's hash as ``RedisOnlineStore.online_write_batch`` does (skip_dedup path).

    redis-py spends ~15 us building each command of a pipeline; here each distinct value's RESP
    field/value pair is built once, an entity's command is one ``bytes.join``, and the commands
    go out ``REDIS_BATCH`` at a time on one connection, the replies of a batch read while Redis
    works on the next one. A Redis Cluster client goes through its pipeline instead.
    """
    import redis
    from feast.infra.online_stores.helpers import _mmh3
    from feast.infra.online_stores.redis import RedisOnlineStore, _versioned_fv_name
    from feast.utils import make_tzaware
    from google.protobuf.timestamp_pb2 import Timestamp

    config = store.config
    online = config.online_store
    client = RedisOnlineStore()._get_client(online)
    fv_name = _versioned_fv_name(view, config)
    keys_arrow = pc.binary_join_element_wise(
        _entity_keys(store, view, table), pa.scalar(config.project.encode("utf-8")), b""
    )
    keys = keys_arrow.to_numpy(zero_copy_only=False)

    times = _column(table, view.batch_source.timestamp_field)
    codes, uniques = pd.factorize(times)
    stamps = []
    for t in _timestamps(np.asarray(uniques, times.dtype)):
        proto = Timestamp()
        proto.FromDatetime(make_tzaware(t))
        stamps.append(proto.SerializeToString())
    fields = [f"_ts:{fv_name}".encode(), *(_mmh3(f"{fv_name}:{f.name}") for f in view.features)]
    columns = [(codes, stamps)]
    columns += [_encoded(_column(table, f.name), f.dtype.to_value_type())[:2] for f in view.features]
    ttl = online.key_ttl_seconds

    if not isinstance(client, redis.Redis):  # a cluster client spreads keys over nodes: its own pipeline
        values = [_spread(codes, blobs) for codes, blobs in columns]
        for lo in range(0, len(keys), REDIS_BATCH):
            with client.pipeline(transaction=False) as pipe:
                for i in range(lo, min(lo + REDIS_BATCH, len(keys))):
                    pipe.hset(keys[i], mapping={f: v[i] for f, v in zip(fields, values, strict=True)})
                    if ttl:
                        pipe.expire(name=keys[i], time=ttl)
                pipe.execute()
        return

    def resp(*parts: bytes) -> bytes:
        return b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)

    # An entity's command is its key's RESP frame then each field's (field, value) frames, each
    # built once per distinct value by arrow; a command is then one bytes.join per entity.
    hset = b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * len(fields))
    cells = [_resp_frames(hset, keys_arrow)]
    for f, (codes, blobs) in zip(fields, columns, strict=True):
        cells.append(_resp_frames(resp(f), pa.array(blobs, pa.binary()))[codes])
    if ttl:
        seconds = str(ttl).encode()
        cells.append(np.array([b"*3\r\n$6\r\nEXPIRE\r\n" + resp(k, seconds) for k in keys], dtype=object))

    conn = client.connection_pool.get_connection()
    try:
        backlog, partial = 0, b""
        for lo in range(0, len(keys), REDIS_BATCH):
            rows = slice(lo, lo + REDIS_BATCH)
            commands = map(b"".join, zip(*(c[rows] for c in cells), strict=True))
            conn.send_packed_command([b"".join(commands)], check_health=False)
            count = len(keys[rows]) * (2 if ttl else 1)
            # The previous batch's replies, while Redis works on this one.
            backlog, partial = _read_replies(conn._sock, backlog + count, count, partial)
        _read_replies(conn._sock, backlog, 0, partial)
    except BaseException:
        conn.disconnect()  # replies may be left unread on it
        raise
    finally:
        client.connection_pool.release(conn)


def _resp_frames(head: bytes, values: pa.Array) -> np.ndarray:
    """``head + b"$<length>\\r\\n" + value + b"\\r\\n"`` for each value (a RESP bulk string after ``head``)."""
    sizes, at = np.unique(pc.binary_length(values).to_numpy(zero_copy_only=False), return_inverse=True)
    heads = pa.array([head + b"$%d\r\n" % n for n in sizes], pa.binary()).take(pa.array(at))
    return pc.binary_join_element_wise(heads, values, pa.scalar(b"\r\n"), b"").to_numpy(zero_copy_only=False)


def _read_replies(sock: Any, backlog: int, leave: int, partial: bytes) -> tuple[int, bytes]:
    """Read integer replies (``:n\\r\\n``, those of HSET and EXPIRE) until ``leave`` are outstanding.

    redis-py's ``read_response`` costs ~4 us a reply (3M replies for 1M customers and 3 views);
    these are counted in the raw bytes instead, and an error reply raises. Returns the replies still
    outstanding and the bytes of a reply cut short.
    """
    import redis

    while backlog > leave:
        data = sock.recv(1 << 16)
        if not data:
            raise redis.ConnectionError("Redis closed the connection during a bulk load")
        data = partial + data
        cut = data.rfind(b"\r\n") + 2 if b"\r\n" in data else 0
        done, partial = data[:cut], data[cut:]
        if b"-" in done:  # an error reply; HSET and EXPIRE never return a negative integer
            raise redis.ResponseError(done[done.index(b"-") + 1 :].split(b"\r\n")[0].decode(errors="replace"))
        backlog -= done.count(b"\r\n")
    return backlog, partial
