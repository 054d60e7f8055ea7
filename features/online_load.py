"""Bulk load of the latest feature row per entity into the Feast online store.

Stock ``materialize`` (and ``write_to_online_store``) builds one ``ValueProto`` per cell and
writes them one SQL statement (or one Redis command) at a time: 378 s for 1M customers into
SQLite. Here feature values are converted once per *distinct* value (numbers and times by numpy
encoders checked against Feast's ``python_values_to_proto_values``, other types by it), entity
keys are built with Feast's serialization (checked the same way), and the bytes are spread back
with numpy. nexttouch's SQLite store (``features.sqlite_store``: one row per entity) gets one
upsert per view whose values are mostly bound as small ints (``_sqlite_writer``); Redis gets its
``HSET`` commands as raw RESP on one connection. The stored bytes are exactly those of
``materialize`` (checked by ``tests/test_online_load.py``), so ``get_online_features`` reads them
unchanged.

A load reads, encodes and writes ``ONLINE_LOAD_ROWS`` entities at a time, so its memory is set by
that chunk, not by the number of customers. Like SQLite ``materialize`` (and Redis ``materialize``
with ``skip_dedup``), a load overwrites an entity's stored row even if that row is newer, and
leaves entities it does not cover alone.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nexttouch.parquet import PartWriter, parquet_file

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

# Entities per chunk of ``materialize_bulk`` (the store does not carry the settings' budget). A chunk
# costs ~2.5 KiB an entity (its arrow rows, a view's encoded arrays and bound rows, the previous
# chunk being written meanwhile): ~0.6 GiB a load whatever the number of customers, within the
# data steps' 4 GiB default. Chunks of 100k to 500k measured as fast as one whole table.
ONLINE_LOAD_ROWS = 250_000
SQLITE_BATCH = 200_000  # entities per executemany: bounds the memory of the row arrays
REDIS_BATCH = 10_000  # entities per RESP write on the connection
CASE_VALUES = 256  # at most this many distinct values: bound as their numbers (4096 measured 2x slower)
LATEST_STAMP = b"nexttouch.latest_of"  # parquet metadata key: which file a latest-rows file was made from
CHECKED = 64  # distinct values per column whose fast encoding is compared with Feast's
# Key columns stay arrow strings in pandas: no Python object per cell for 26M snapshot rows.
_ARROW_STRINGS = {pa.string(): pd.ArrowDtype(pa.string()), pa.large_string(): pd.ArrowDtype(pa.large_string())}


def materialize_bulk(store: FeatureStore, end: datetime) -> dict[str, int]:
    """What ``store.materialize(start_date=EPOCH, end_date=end)`` does, for file-backed views, in bulk.

    Each online view's latest row per entity up to ``end`` is read from its parquet file
    ``ONLINE_LOAD_ROWS`` entities at a time (views on the same file, like touch_history and
    contact_state, share each chunk's read) and written in bulk (``_write_latest``), so memory is
    set by the chunk, not by the number of customers. A view backed by anything but a parquet file
    goes through Feast's ``materialize``. Returns rows written per view.
    """
    from feast import FileSource

    written: dict[str, int] = {}
    reads: dict[tuple[str, tuple[str, ...], str], list[FeatureView]] = {}
    for view in store.list_feature_views():
        source = view.batch_source
        if not view.online:
            continue
        if not isinstance(source, FileSource):
            store.materialize(start_date=datetime(1970, 1, 2, tzinfo=UTC), end_date=end, feature_views=[view.name])
            continue
        read = (source.path, tuple(c.name for c in view.entity_columns), source.timestamp_field)
        reads.setdefault(read, []).append(view)
        written[view.name] = 0
    with _BoundedWriter() as writer:
        for (path, keys, ts_col), views in reads.items():
            columns = list(dict.fromkeys(c for view in views for c in _view_columns(view)))
            for chunk in _latest_chunks(Path(path), list(keys), ts_col, columns, end, ONLINE_LOAD_ROWS):
                for view in views:
                    written[view.name] += _write_latest(store, view, chunk.select(_view_columns(view)), writer.submit)
                del chunk  # not held while the next one is read
    return written


class _BoundedWriter:
    """One writer thread running SQLite's INSERTs (which release the GIL) while the next chunk is encoded.

    ``submit`` waits for the job before it first, so at most one job is written while one is
    prepared: prepared chunks never pile up in memory when encoding outpaces SQLite.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-load")
        self._pending: Future | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self._wait()
        self._pending = self._pool.submit(job)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> _BoundedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._wait()  # the last job's error, if any, is the load's
        finally:
            self._pool.shutdown(wait=True)


def read_latest(path: Path, keys: list[str], ts_col: str, columns: list[str], end: datetime) -> pd.DataFrame:
    """Each entity's latest row at or before ``end`` from a parquet file, reading batch by batch."""
    return _read_latest_table(path, keys, ts_col, columns, end).to_pandas()


def latest_path(path: Path) -> Path:
    """Where ``LatestFileWriter`` keeps the latest rows of the parquet file ``path``."""
    return path.with_name(path.name.removesuffix(".parquet") + ".latest.parquet")


class LatestFileWriter:
    """Keeps the latest row of each entity of the parquet file ``path`` in a file next to it.

    ``read_latest`` then reads these rows instead of finding them among all of ``path``'s (26M
    snapshot rows at 1M customers). The rows are written a table at a time (the latest rows of every
    customer are never in memory together); ``close`` stamps the file with ``path``'s size and
    modification time, the entity keys and the time column, so it is called once ``path`` is
    written. A stamp that does not match (``path`` rewritten since, or another key or time asked
    for) makes the file ignored.
    """

    def __init__(self, path: Path, keys: list[str], ts_col: str) -> None:
        self.path, self.keys, self.ts_col = path, keys, ts_col
        self._writer = PartWriter(latest_path(path), keys)

    def write(self, latest: pa.Table) -> None:
        self._writer.write(latest)

    def close(self) -> None:
        stamp = json.dumps(_stamp(self.path, self.keys, self.ts_col)).encode()
        self._writer.close({LATEST_STAMP: stamp})  # the file's footer, read by _latest_file

    def abort(self) -> None:
        self._writer.abort()


def _stamp(path: Path, keys: list[str], ts_col: str) -> dict[str, Any]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "keys": keys, "time": ts_col}


def _latest_file(path: Path, keys: list[str], ts_col: str, columns: list[str], end: datetime) -> pq.ParquetFile | None:
    """``path``'s latest file, if it is current, holds ``columns`` and no row is later than ``end``.

    Each entity's latest row at all is then its latest row at or before ``end``. The times are
    checked a batch at a time, the time column alone.
    """
    try:
        file = parquet_file(latest_path(path))
        stamp = json.loads((file.metadata.metadata or {}).get(LATEST_STAMP, b"null"))
        if stamp != _stamp(path, keys, ts_col) or not set(columns) <= set(file.schema_arrow.names):
            return None
        for batch in file.iter_batches(batch_size=1 << 20, columns=[ts_col]):
            times = pc.cast(batch.column(0), pa.timestamp("us", "UTC"))
            if times.null_count or (len(times) and pc.max(times).as_py() > end):
                return None
    except (OSError, ValueError, pa.ArrowException):
        return None
    return file


def _read_latest_table(path: Path, keys: list[str], ts_col: str, columns: list[str], end: datetime) -> pa.Table:
    """``read_latest`` as one arrow table."""
    return pa.concat_tables(_latest_chunks(path, keys, ts_col, columns, end, ONLINE_LOAD_ROWS))


def _latest_chunks(
    path: Path, keys: list[str], ts_col: str, columns: list[str], end: datetime, rows: int
) -> Iterator[pa.Table]:
    """``read_latest``'s rows (``columns``, in file order) as tables of at most ``rows`` rows.

    From ``path``'s latest file where it answers (``_latest_file``); otherwise the keys and times
    are read first to find the rows, then only those rows of ``columns`` are kept from each record
    batch, so a file of 26M weekly snapshots never sits in memory whole. At least one table comes
    out (an empty one when there are no rows), so a reader always learns the schema.
    """
    latest = _latest_file(path, keys, ts_col, columns, end)
    if latest is not None:
        yield from _rechunked(latest.iter_batches(batch_size=rows, columns=columns), _schema(latest, columns), rows)
        return
    file = parquet_file(path)
    wanted = _wanted_rows(file, keys, ts_col, end)
    yield from _rechunked(_taken(file, wanted, columns, rows), _schema(file, columns), rows)


def _schema(file: pq.ParquetFile, columns: list[str]) -> pa.Schema:
    return pa.schema([file.schema_arrow.field(c) for c in columns])


def _wanted_rows(file: pq.ParquetFile, keys: list[str], ts_col: str, end: datetime) -> np.ndarray:
    """Positions of each entity's latest row at or before ``end`` in ``file``, from its keys and times only."""
    head = file.read(columns=[*keys, ts_col])
    times = pc.cast(head.column(ts_col), pa.timestamp("us", "UTC")).to_numpy()
    upto = times <= np.datetime64(pd.Timestamp(end).tz_convert("UTC").tz_localize(None), "us")
    if len(keys) == 1:  # arrow's hash encoding: ~2x pandas' factorize on 26M strings
        key = head.column(keys[0]).combine_chunks()
        codes = pc.dictionary_encode(key, null_encoding="encode").indices.to_numpy(zero_copy_only=False)
    else:
        codes = head.select(keys).to_pandas().groupby(keys, sort=False, dropna=False).ngroup().to_numpy()
    return _last_latest(codes, times, upto)


def _taken(file: pq.ParquetFile, wanted: np.ndarray, columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
    """The ``wanted`` rows (sorted positions) of ``columns``, read ``rows`` rows of the file at a time."""
    offset = 0
    for batch in file.iter_batches(batch_size=rows, columns=columns):
        start, offset = offset, offset + batch.num_rows
        lo, hi = np.searchsorted(wanted, [start, offset])
        taken = batch.take(pa.array(wanted[lo:hi] - start))
        del batch  # not held while the consumer works on the rows taken
        if taken.num_rows:
            yield taken


def _rechunked(batches: Iterable[pa.RecordBatch], schema: pa.Schema, rows: int) -> Iterator[pa.Table]:
    """``batches`` regrouped as tables of ``rows`` rows (the last one shorter); one empty table if none."""
    held: list[pa.RecordBatch] = []
    count, done = 0, False
    for batch in batches:
        held.append(batch)
        count += batch.num_rows
        del batch  # ``held``, then the chunk cut from it, are the only holds on a batch's rows
        while count >= rows:
            table = pa.Table.from_batches(held, schema=schema)
            held, count, done = [b for b in table.slice(rows).to_batches() if b.num_rows], count - rows, True
            chunk = table.slice(0, rows)
            del table
            yield chunk
            del chunk
    if count or not done:
        yield pa.Table.from_batches(held, schema=schema)


def write_latest_online(store: FeatureStore, feature_view_name: str, frame: pd.DataFrame) -> int:
    """Write the latest row of each entity in ``frame`` to the online store; returns rows written.

    ``frame`` is an offline feature frame of the view: its join keys, its batch source's
    timestamp column and its features (other columns are ignored). Entities missing from
    ``frame`` keep their stored rows.
    """
    view = store.get_feature_view(feature_view_name)
    keys = [c.name for c in view.entity_columns]
    latest = frame.iloc[latest_rows(frame, keys, view.batch_source.timestamp_field)]
    table = pa.Table.from_pandas(latest[_view_columns(view)], preserve_index=False)
    return _write_latest(store, view, table)


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
    run: Callable[[Callable[[], None]], Any] = _now,
) -> int:
    """Write one row per entity (``table``: the view's columns) with the store's bulk writer.

    ``run`` is given SQLite's SQL part (default: run it now).
    """
    if table.num_rows == 0:
        return 0
    from features.sqlite_store import WideSqliteOnlineStore

    if isinstance(store._get_provider().online_store, WideSqliteOnlineStore):
        run(_sqlite_writer(store, view, table))
    elif store.config.online_store.type == "redis":
        _write_redis(store, view, table)
    else:  # any other store: Feast's own (slow) path
        store.write_to_online_store(view.name, table.to_pandas())
    return table.num_rows


def latest_rows(frame: pd.DataFrame, keys: list[str], ts_col: str) -> np.ndarray:
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


def _encoded(values: np.ndarray, value_type: Any) -> tuple[np.ndarray, list[bytes]]:
    """Codes into the distinct values, and each distinct value's serialized ``ValueProto``."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    uniques = np.asarray(uniques, dtype=values.dtype)
    blobs = _converted(uniques, value_type)
    missing = np.flatnonzero(codes < 0)
    if len(missing):  # a missing value is converted as it is (NaN, NaT or None), by Feast's rules
        blobs = [*blobs, *_feast_converted(values[missing[:1]], value_type)]
        codes = np.where(codes < 0, len(uniques), codes)
    return codes, blobs


def _spread(codes: np.ndarray, items: list[Any]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out[codes]


def _feast_converted(values: np.ndarray, value_type: Any) -> list[bytes]:
    from feast.type_map import python_values_to_proto_values

    return [p.SerializeToString() for p in python_values_to_proto_values(values, value_type)]


def _converted(uniques: np.ndarray, value_type: Any) -> list[bytes]:
    """Feast's conversion of distinct non-missing values, by numpy where the type allows.

    Feast's ``python_values_to_proto_values`` costs ~8 us a value, and time columns have a distinct
    value per customer. A ``ValueProto`` holding one number is its field tag and the number's
    varint or little-endian bytes, so those are built for all values at once; a sample of them is
    compared with Feast's own result and any difference sends the column through Feast.
    """
    if not len(uniques):
        return []
    fast = _fast_converted(uniques, value_type)
    if fast is not None:
        sample = np.unique(np.linspace(0, len(uniques) - 1, CHECKED).astype(int))
        if _feast_converted(uniques[sample], value_type) == [fast[i] for i in sample]:
            return fast
    return _feast_converted(uniques, value_type)


def _fast_converted(values: np.ndarray, value_type: Any) -> list[bytes] | None:
    """Serialized ``ValueProto`` of int, float and time values; None for other types."""
    from feast.value_type import ValueType

    kind, name = values.dtype.kind, value_type.name
    if kind in "iu" and name in ("INT32", "INT64"):
        ints = values.astype(np.int64)
        if name == "INT32" and (ints.min() < -(2**31) or ints.max() >= 2**31):
            return None
        tag = 0x18 if name == "INT32" else 0x20  # int32_val = 3, int64_val = 4, varint
        return _tagged_varints(tag, ints)
    if kind == "f" and value_type in (ValueType.FLOAT, ValueType.DOUBLE):
        single = value_type == ValueType.FLOAT  # float_val = 6 (fixed32), double_val = 5 (fixed64)
        numbers = values.astype("<f4" if single else "<f8")
        tag = np.full((len(values), 1), 0x35 if single else 0x29, dtype=np.uint8)
        raw = np.hstack([tag, numbers.view(np.uint8).reshape(len(values), -1)])
        return raw.view(f"V{raw.shape[1]}").ravel().tolist()
    if kind == "M" and value_type == ValueType.UNIX_TIMESTAMP:  # unix_timestamp_val = 8: whole seconds, floored
        seconds = values.astype("datetime64[s]").astype(np.int64)
        return _tagged_varints(0x40, seconds)
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


def _sqlite_writer(store: FeatureStore, view: FeatureView, table: pa.Table) -> Callable[[], None]:
    """Prepare the rows ``WideSqliteOnlineStore.online_write_batch`` would write; returns the SQL step writing them.

    One row per entity, a serialized ``ValueProto`` per feature column (``features.sqlite_store``).
    Python's sqlite3 binds an int in ~0.05 us but a bytes value in ~0.3 us (1M customers' 34
    values bound as bytes: ~10 s), so the values mostly travel as ints or not at all:

    - a column with at most ``CASE_VALUES`` distinct values is bound as each value's number, and
      the statement holds the values' bytes as literals, picked by a binary search of ``CASE``s;
    - the other columns whose values all have one length (floats, timestamps) travel together
      as one blob per row that SQLite cuts with ``substr``;
    - anything else is bound as it is.

    Entities are written in key order (each B-tree page filled once) and upserted: a load over
    a full table replaces the rows it covers and leaves the others alone.
    """
    from features.sqlite_store import table_name, upsert_sql

    keys = _entity_keys(store, view, table)
    order = pa.array(pc.sort_indices(keys))  # byte order, as SQLite compares BLOBs
    table = table.take(order)
    source = view.batch_source
    bound = [keys.take(order).to_numpy(zero_copy_only=False), _epoch_seconds(_column(table, source.timestamp_field))]
    values = ["?1", "?2"]
    created = source.created_timestamp_column
    if created:
        bound.append(_epoch_seconds(_column(table, created)))
    values.append(f"?{len(bound)}" if created else "NULL")
    fixed: list[tuple[int, np.ndarray, bytes | None]] = []  # (feature's place, its values' bytes, missing blob)
    for feature in view.features:
        column = _column(table, feature.name)
        codes, blobs = _encoded(column, feature.dtype.to_value_type())
        blank = blobs[-1] if pd.isna(column).any() else None  # _encoded puts the missing value's blob last
        present = blobs[:-1] if blank is not None else blobs
        widths = set(map(len, present))
        if len(blobs) == 1:  # one value: a literal (an unused parameter would break the bindings' count)
            values.append(f"x'{blobs[0].hex()}'")
        elif len(blobs) <= CASE_VALUES:
            bound.append(codes)
            values.append(_case(f"?{len(bound)}", blobs))
        elif len(widths) == 1:  # a missing value travels as zero bytes (a stored value starts with its tag)
            width = widths.pop()
            rows = np.frombuffer(b"".join(present) + bytes(width if blank is not None else 0), np.uint8)
            fixed.append((len(values), rows.reshape(len(blobs), width)[codes], blank))
            values.append("")
        else:
            bound.append(_spread(codes, blobs))
            values.append(f"?{len(bound)}")
    if fixed:
        packed = np.hstack([m for _, m, _ in fixed])
        bound.append(packed.view(f"V{packed.shape[1]}").ravel())
        offset = 1
        for at, matrix, blank in fixed:
            width = matrix.shape[1]
            cut = f"substr(?{len(bound)}, {offset}, {width})"
            values[at] = cut if blank is None else f"coalesce(nullif({cut}, zeroblob({width})), x'{blank.hex()}')"
            offset += width
    sql = upsert_sql(table_name(store.config, view), [f.name for f in view.features], values)
    path = store._get_provider().online_store._get_db_path(store.config)

    def run() -> None:
        db = sqlite3.connect(path)
        try:
            # This connection only: no fsync per page (the store is rebuilt from the offline files)
            # and a large page cache.
            for pragma in ("synchronous = OFF", "cache_size = -524288"):
                db.execute(f"PRAGMA {pragma}")
            with db:
                for lo in range(0, len(bound[0]), SQLITE_BATCH):
                    db.executemany(sql, zip(*(c[lo : lo + SQLITE_BATCH].tolist() for c in bound), strict=True))
        finally:
            db.close()

    return run


def _epoch_seconds(times: np.ndarray) -> np.ndarray:
    """Whole seconds since the epoch (floored, as ``features.sqlite_store.epoch_seconds``), None where missing."""
    seconds = pd.to_datetime(times, utc=True).tz_localize(None).to_numpy().astype("datetime64[s]")
    out = seconds.astype(np.int64).astype(object)
    out[np.isnat(seconds)] = None
    return out


def _case(param: str, blobs: list[bytes], first: int = 0) -> str:
    """Blob number ``param`` (counting from ``first``) by a binary search of ``CASE``s over literals."""
    if len(blobs) == 1:
        return f"x'{blobs[0].hex()}'"
    half = len(blobs) // 2
    low, high = _case(param, blobs[:half], first), _case(param, blobs[half:], first + half)
    return f"CASE WHEN {param} < {first + half} THEN {low} ELSE {high} END"


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
    columns += [_encoded(_column(table, f.name), f.dtype.to_value_type()) for f in view.features]
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
