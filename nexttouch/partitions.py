"""Data steps a slice at a time: hash partitions on disk, and the engine that runs a step on each.

Every data step works per customer (features) or per key (ingest's checks), so a table bigger
than the memory budget (``settings.data_memory_gib``) is split by a hash of that key into
partitions: the rows are streamed a batch at a time into the partitions' files, DuckDB working out
each row's partition from the batch's key columns; the step's one function then takes each
partition whole. The engine runs that function over the partitions: ``settings.data_workers`` at a
time on threads of this process (the budget shared among them), or on the Dask cluster at
``settings.dask_scheduler`` when it is set (the project directory must then be on storage the
workers share). Either way it is the same function on the same partitions, so the results are the same.
"""

from __future__ import annotations

import math
import shutil
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from nexttouch.blanks import trimmed
from nexttouch.parquet import parquet_file, small_dictionaries
from nexttouch.settings import Settings
from nexttouch.sql import identifier, literal

_BATCH_ROWS = 1 << 20  # rows of the input held at once while splitting it, at the least
# A batch is cut into a slice per partition, each written and read back as an IPC batch of its own: with many
# partitions (a big table) the slices get small and cost more than their rows. So a batch holds enough rows
# for slices of _SLICE_ROWS, as far as 1/_BATCH_SHARE of a thread's share of the budget allows.
_SLICE_ROWS = 1 << 15
_BATCH_SHARE = 8
_ARROW_PER_PARQUET_BYTE = 2  # arrow's size of a batch per uncompressed parquet byte (64-bit text offsets)
# The split files: LZ4, half the disk of plain IPC (plain ones, tried, raised ingest's peak memory)
_IPC = ipc.IpcWriteOptions(compression="lz4")


def partition_count(nbytes: float, settings: Settings) -> int:
    """How many partitions keep ``nbytes`` of working memory within the budget, with as many at once as ``run``
    runs here (one at a time on each worker of a cluster)."""
    return max(1, math.ceil(nbytes * _at_once(settings) / (settings.data_memory_gib * 2**30)))


def _at_once(settings: Settings) -> int:
    return 1 if settings.dask_scheduler else settings.data_workers


def parquet_bytes(paths: Sequence[Path], columns: Sequence[str] | None = None) -> int:
    """Uncompressed size of ``columns`` (all by default) of parquet files, from their footers."""
    return sum(_uncompressed(pq.read_metadata(path), columns) for path in paths)


def _uncompressed(meta: pq.FileMetaData, columns: Sequence[str] | None) -> int:
    total = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            col = group.column(c)
            if columns is None or col.path_in_schema in columns:
                total += col.total_uncompressed_size
    return total


def split(
    paths: Sequence[Path],
    keys: Sequence[str],
    parts: int,
    out: Path,
    memory_gib: float,
    columns: Sequence[str] | None = None,
    ordered: bool = True,
    bounds: Sequence[str] | None = None,
    workers: int = 1,
) -> list[list[Path]]:
    """The rows of the parquet files ``paths`` in ``parts`` partitions by a hash of ``keys``.

    Returns each partition's files under ``out`` (emptied first), Arrow IPC files that
    ``read_partition`` reads; a partition's rows come in input order. Each file is split by
    ``workers`` threads, each a range of its row groups (within ``memory_gib`` together). ``ordered``
    (for input as it arrived): keys are hashed as text trimmed of blanks (``nexttouch.blanks``), so an id and the
    same id with blanks around it meet in one partition. Otherwise (validated tables) keys are hashed as they are.
    With ``bounds`` (``range_bounds`` of the one key) partition i holds the keys from ``bounds[i - 1]`` up to before
    ``bounds[i]`` instead: partitions in key order.
    """
    if ordered:  # (trimmed in arrow as each batch is read: most batches have no blanks to trim)
        key = ", ".join(f"coalesce(CAST({identifier(k)} AS VARCHAR), '')" for k in keys)
    else:
        key = ", ".join(identifier(k) for k in keys)
    part = f"hash({key}) % {parts}"
    if bounds is not None:
        if len(keys) != 1 or len(bounds) != parts - 1:
            raise ValueError("a range split takes one key and parts - 1 bounds")
        part = _range_case(identifier(keys[0]), list(bounds), 0)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    written: list[list[Path]] = [[] for _ in range(parts)]
    for i, path in enumerate(paths):
        every = pq.read_schema(path).names
        names = [c for c in columns if c in every] if columns else every
        read = [*names, *(k for k in keys if k not in names)]
        dictionaries = small_dictionaries(path, read)  # codes are cheap to read and to reorder
        meta = pq.read_metadata(path)
        groups = meta.num_row_groups
        ranges = [r.tolist() for r in np.array_split(np.arange(groups), max(1, min(workers, groups)))]
        memory_mb = duckdb_memory_mb(memory_gib) // len(ranges)
        rows = _batch_rows(meta, read, parts, memory_gib / len(ranges))
        writing = (parts, out, memory_mb, rows)
        jobs = [
            (path, r, names, read, dictionaries, part, list(keys), ordered, f"{i}-{j}.arrow", *writing)
            for j, r in enumerate(ranges)
        ]
        with ThreadPoolExecutor(len(jobs), thread_name_prefix="split") as pool:
            for files in pool.map(_write_partitions, *zip(*jobs, strict=True)):  # in range order: input order kept
                for k, file in files:
                    written[k].append(file)
    return written


def _batch_rows(meta: pq.FileMetaData, columns: Sequence[str], parts: int, memory_gib: float) -> int:
    """Rows of a file (its footer ``meta``) a thread of the split reads at a time, with ``memory_gib`` its share of
    the budget."""
    per_row = _ARROW_PER_PARQUET_BYTE * _uncompressed(meta, columns) / max(meta.num_rows, 1)
    allowed = int(memory_gib * 2**30 / _BATCH_SHARE / max(per_row, 1.0))
    return max(_BATCH_ROWS, min(parts * _SLICE_ROWS, allowed))


def duckdb_memory_mb(memory_gib: float) -> int:
    """DuckDB's memory limit in a data step: most of the budget (the step's arrow and pandas need the rest)."""
    return max(256, int(memory_gib * 1024 * 0.6))


def _write_partitions(
    path: Path,
    row_groups: list[int],
    names: list[str],
    read: list[str],
    dictionaries: list[str],
    part: str,
    keys: list[str],
    trim: bool,
    name: str,
    parts: int,
    out: Path,
    memory_mb: int,
    batch_rows: int,
) -> list[tuple[int, Path]]:
    """The rows of ``row_groups`` of ``path`` streamed ``batch_rows`` at a time into one Arrow IPC file per partition
    (``out/_part=k/name``): the columns ``names`` of the columns ``read`` (those and the keys), the
    ``dictionaries`` among them read as arrow dictionaries and written as text; text keys trimmed of blanks
    with ``trim``.

    DuckDB works out the partition of each batch's rows from its key columns (``part``, SQL), so
    nothing the size of the file is held. IPC, not parquet: the files are read once, soon, and IPC
    costs next to nothing to write and read.
    """
    import duckdb

    source = parquet_file(path, dictionaries)
    con = duckdb.connect(config={"memory_limit": f"{memory_mb}MB", "preserve_insertion_order": True})
    writers: dict[int, ipc.RecordBatchFileWriter] = {}
    try:
        for batch in _batches(source, row_groups, read, batch_rows):
            con.register("batch_keys", pa.table({k: _key(batch.column(k), trim) for k in keys}))
            here = np.asarray(con.execute(f"SELECT CAST({part} AS USMALLINT) AS p FROM batch_keys").fetchnumpy()["p"])
            con.unregister("batch_keys")
            batch = batch.select(names)
            counts = np.bincount(here, minlength=parts)
            batch = batch.take(pa.array(np.argsort(here, kind="stable")))  # grouped by partition, in order within
            batch = pa.RecordBatch.from_arrays([_plain(c) for c in batch.columns], names=batch.schema.names)
            ends = np.cumsum(counts)
            for k in np.flatnonzero(counts):
                if k not in writers:
                    file = out / f"_part={k}" / name
                    file.parent.mkdir(exist_ok=True)
                    writers[k] = ipc.new_file(file, batch.schema, options=_IPC)
                writers[k].write_batch(batch.slice(ends[k] - counts[k], counts[k]))
    finally:
        con.close()
        for writer in writers.values():
            writer.close()
    return [(k, out / f"_part={k}" / name) for k in sorted(writers)]


def _batches(source: pq.ParquetFile, row_groups: list[int], columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
    """``columns`` of ``row_groups`` in batches of at most ``rows``. The reader's own batches end with each row group
    when it reads dictionaries (their dictionary is the row group's): as many of those as fit are joined."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in source.iter_batches(batch_size=rows, row_groups=row_groups, columns=columns):
        if held and count + batch.num_rows > rows:
            yield _joined(held)
            held, count = [], 0
        held.append(batch)
        count += batch.num_rows
    if held:
        yield _joined(held)


def _joined(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).unify_dictionaries().combine_chunks().to_batches()[0]


def _key(column: pa.Array, trim: bool) -> pa.Array:
    """A key column as DuckDB hashes it: text decoded, and trimmed of blanks with ``trim``."""
    column = _plain(column)
    return trimmed(column) if trim and _is_text(column.type) else column


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _plain(column: pa.Array) -> pa.Array:
    """Dictionary-encoded text decoded: DuckDB hashes the text, as it does read from parquet."""
    return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column


def range_bounds(path: Path, key: str, parts: int) -> list[str]:
    """``parts - 1`` values of ``key`` that cut the parquet file's rows into ``parts`` ranges of about equal size."""
    import duckdb

    if parts < 2:
        return []
    cuts = ", ".join(f"{i / parts!r}" for i in range(1, parts))
    con = duckdb.connect()
    try:
        query = f"SELECT quantile_disc({identifier(key)}, [{cuts}]) FROM read_parquet({literal(str(path))})"
        (values,) = con.execute(query).fetchone()
    finally:
        con.close()
    return [str(v) for v in values] if values is not None else [""] * (parts - 1)


def _range_case(key: str, bounds: list[str], first: int) -> str:
    """The partition of ``key`` among ``bounds`` (sorted) as a balanced CASE: log2(parts) comparisons a row."""
    if not bounds:
        return str(first)
    mid = len(bounds) // 2
    below = _range_case(key, bounds[:mid], first)
    above = _range_case(key, bounds[mid + 1 :], first + mid + 1)
    return f"(CASE WHEN {key} < {literal(bounds[mid])} THEN {below} ELSE {above} END)"


def read_partition(files: Sequence[Path], schema: pa.Schema) -> pa.Table:
    """A partition's rows (``split`` files, or parquet files read whole), typed as ``schema`` with its metadata.

    Each file is cast on its own: files of one input may disagree on a column's type (an inbox part
    with whole-number amounts), and a column missing from a file is null in its rows.
    """
    if not files:
        return schema.empty_table()
    table = pa.concat_tables([_typed(_read_columns(f, schema.names), schema) for f in files])
    return table.replace_schema_metadata(schema.metadata)


def _typed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    def column(field: pa.Field) -> pa.ChunkedArray | pa.Array:
        if field.name in table.column_names:
            return table.column(field.name).cast(field.type)
        return pa.nulls(table.num_rows, field.type)

    return pa.table([column(f) for f in schema], schema=pa.schema(list(schema)))


def _read_columns(path: Path, columns: list[str]) -> pa.Table:
    if path.suffix == ".arrow":
        with pa.OSFile(str(path)) as source:
            names = ipc.open_file(source).schema.names
            fields = [names.index(c) for c in columns if c in names]
            return ipc.open_file(source, options=ipc.IpcReadOptions(included_fields=fields)).read_all()
    present = set(pq.read_schema(path).names)
    return pq.read_table(path, columns=[c for c in columns if c in present])


def run(settings: Settings, fn: Callable[..., Any], tasks: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
    """``fn(*task)`` for every task, results in task order: here, or on the Dask cluster when configured.

    Here ``settings.data_workers`` tasks run at once, on threads (the steps' arrow, numpy and DuckDB
    work releases the GIL), and a task starts when the result of the one ``data_workers`` before it
    has been taken. On the cluster all tasks run at once on the workers and each result is fetched
    (and released) in turn. Either way the caller holds one partition's result at a time.
    """
    if not settings.dask_scheduler:
        yield from _threads(fn, tasks, settings.data_workers)
        return
    from distributed import Client

    with Client(settings.dask_scheduler) as client:
        futures = [client.submit(fn, *task, pure=False) for task in tasks]
        for future in futures:
            result = future.result()
            future.release()
            yield result


def _threads(fn: Callable[..., Any], tasks: Sequence[tuple[Any, ...]], workers: int) -> Iterator[Any]:
    if workers == 1:
        yield from (fn(*task) for task in tasks)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="partition") as pool:
        running: deque[Future[Any]] = deque()
        try:
            for task in tasks:
                if len(running) == workers:
                    yield running.popleft().result()
                running.append(pool.submit(fn, *task))
            while running:
                yield running.popleft().result()
        finally:
            for future in running:  # stopped early (an error, the caller gone): no more to start
                future.cancel()
