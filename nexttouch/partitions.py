"""Data steps a slice at a time: hash partitions on disk, and the engine that runs a step on each.

Every data step works per customer (features) or per key (ingest's checks), so a table bigger
than the memory budget (``settings.data_memory_gib``) is split by a hash of that key into
partitions, with DuckDB reading and writing parquet out of core within the budget; the step's one
function then takes each partition whole. The engine runs that function over the partitions:
one after another in this process, or on the Dask cluster at ``settings.dask_scheduler`` when it is
set (the project directory must then be on storage the workers share). Either way it is the same
function on the same partitions, so the results are the same.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nexttouch.settings import Settings

ORDER = "_order"  # the row's place in the input (file, row): partitions keep their rows in input order
_FILE_ROWS = 1 << 40


def partition_count(nbytes: float, memory_gib: float) -> int:
    """How many partitions keep ``nbytes`` of working memory within ``memory_gib``."""
    return max(1, math.ceil(nbytes / (memory_gib * 2**30)))


def parquet_bytes(paths: Sequence[Path], columns: Sequence[str] | None = None) -> int:
    """Uncompressed size of ``columns`` (all by default) of parquet files, from their footers."""
    total = 0
    for path in paths:
        meta = pq.read_metadata(path)
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
) -> list[list[Path]]:
    """The rows of the parquet files ``paths`` in ``parts`` partitions by a hash of ``keys``.

    Returns each partition's files under ``out`` (emptied first). ``ordered`` (for input as it
    arrived): keys are hashed as trimmed text (an id and the same id with surrounding blanks meet
    in one partition) and a row's ``ORDER`` column says where it came from, so a partition can be
    put back in input order. Otherwise (validated tables) keys are hashed as they are and the rows
    of a partition come in any order. With ``bounds`` (``range_bounds`` of the one key) partition i
    holds the keys from ``bounds[i - 1]`` up to before ``bounds[i]`` instead: partitions in key order.
    """
    import duckdb

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    files = ", ".join(f"'{_sql_text(str(p))}'" for p in paths)
    if ordered:
        key = ", ".join(f"coalesce(trim(CAST({_quoted(k)} AS VARCHAR)), '')" for k in keys)
        index = " ".join(f"WHEN '{_sql_text(str(p))}' THEN {i}" for i, p in enumerate(paths))
        cols = ", ".join(_quoted(c) for c in columns) if columns else "* EXCLUDE (filename, file_row_number)"
        cols += f", (CASE filename {index} END) * {_FILE_ROWS} + file_row_number AS {ORDER}"
        source = f"read_parquet([{files}], filename = true, file_row_number = true, union_by_name = true)"
    else:
        key = ", ".join(_quoted(k) for k in keys)
        cols = ", ".join(_quoted(c) for c in columns) if columns else "*"
        source = f"read_parquet([{files}], union_by_name = true)"
    part = f"CAST(hash({key}) % {parts} AS INTEGER)"
    if bounds is not None:
        if len(keys) != 1 or len(bounds) != parts - 1:
            raise ValueError("a range split takes one key and parts - 1 bounds")
        part = _range_case(_quoted(keys[0]), list(bounds), 0)
    con = duckdb.connect(
        config={"memory_limit": f"{max(256, int(memory_gib * 1024 * 0.6))}MB", "temp_directory": str(out / ".spill")}
    )
    try:
        con.execute(
            f"COPY (SELECT {cols}, {part} AS _part FROM {source}) "
            f"TO '{_sql_text(str(out))}' (FORMAT parquet, PARTITION_BY (_part), OVERWRITE_OR_IGNORE)"
        )
    finally:
        con.close()
    shutil.rmtree(out / ".spill", ignore_errors=True)
    return [sorted((out / f"_part={i}").glob("*.parquet")) for i in range(parts)]


def range_bounds(path: Path, key: str, parts: int) -> list[str]:
    """``parts - 1`` values of ``key`` that cut the parquet file's rows into ``parts`` ranges of about equal size."""
    import duckdb

    if parts < 2:
        return []
    cuts = ", ".join(f"{i / parts!r}" for i in range(1, parts))
    con = duckdb.connect()
    try:
        query = f"SELECT quantile_disc({_quoted(key)}, [{cuts}]) FROM read_parquet('{_sql_text(str(path))}')"
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
    return f"(CASE WHEN {key} < '{_sql_text(bounds[mid])}' THEN {below} ELSE {above} END)"


def read_partition(files: Sequence[Path], schema: pa.Schema) -> pa.Table:
    """A partition's rows in input order, typed as ``schema`` (the split files' own metadata restored)."""
    if not files:
        return schema.empty_table()
    wanted = [name for name in schema.names if name != ORDER]
    table = pa.concat_tables([_read_columns(f, [*wanted, ORDER]) for f in files], promote_options="default")
    if ORDER in table.column_names:  # a split partition; a file read whole is in order already
        table = table.take(pc.sort_indices(table, sort_keys=[(ORDER, "ascending")]))
    columns = [name for name in schema.names if name in table.column_names]
    fields = [schema.field(name) for name in columns]
    typed = pa.table([table.column(f.name).cast(f.type) for f in fields], schema=pa.schema(fields))
    return typed.replace_schema_metadata(schema.metadata)


def _read_columns(path: Path, columns: list[str]) -> pa.Table:
    present = set(pq.read_schema(path).names)
    return pq.read_table(path, columns=[c for c in columns if c in present])


def run(settings: Settings, fn: Callable[..., Any], tasks: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
    """``fn(*task)`` for every task, results in task order: here, or on the Dask cluster when configured.

    On the cluster all tasks run at once on the workers and each result is fetched (and released)
    in turn, so the caller holds one partition's result at a time either way.
    """
    if not settings.dask_scheduler:
        for task in tasks:
            yield fn(*task)
        return
    from distributed import Client

    with Client(settings.dask_scheduler) as client:
        futures = [client.submit(fn, *task, pure=False) for task in tasks]
        for future in futures:
            result = future.result()
            future.release()
            yield result


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_text(text: str) -> str:
    return text.replace("'", "''")
