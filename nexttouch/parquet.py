"""Parquet the one way every stage needs it: written atomically with timestamps in microseconds, and
read a batch at a time without pre-buffering. The big files of the data steps (ingested tables,
feature snapshots) are written a table at a time by ``PartWriter``, while the next one is computed.

With pre-buffering (pyarrow's default) a reader keeps what it pre-buffered of every row group it has
read until it is done with the file: streaming the events of 10M customers (10 GB, 500 row groups)
a batch at a time held several GiB. Every reader of a large file a batch at a time opens it here.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

_NOT_PRE_BUFFERED = pads.ParquetFileFormat(
    default_fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=False)
)


def parquet_file(path: Path, read_dictionary: Sequence[str] | None = None) -> pq.ParquetFile:
    """``path`` to read a row group or a batch at a time, holding only what is being read.

    ``read_dictionary``: columns read as arrow dictionaries (``small_dictionaries``).
    """
    return pq.ParquetFile(path, pre_buffer=False, read_dictionary=read_dictionary)


SMALL_DICTIONARY = 64 * 1024  # bytes of a dictionary page (as stored) of a few thousand values at most


def small_dictionaries(path: Path, columns: Sequence[str]) -> list[str]:
    """The text ``columns`` stored as a small dictionary in every row group (codes, a type, a system).

    Read as arrow dictionaries they are decoded and reordered as integer codes: a fraction of the cost
    of text. A column of many values (ids) has a big dictionary page, or none: it is read as text.
    """
    meta, schema = pq.read_metadata(path), pq.read_schema(path)
    found = [c for c in columns if c in _text_columns(schema)]
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        chunks = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
        found = [c for c in found if c in chunks and _small_dictionary(chunks[c])]
    return found


def _small_dictionary(chunk: pq.ColumnChunkMetaData) -> bool:
    if not chunk.has_dictionary_page or chunk.dictionary_page_offset is None:
        return False
    return chunk.data_page_offset - chunk.dictionary_page_offset <= SMALL_DICTIONARY


def parquet_dataset(path: Path) -> pads.Dataset:
    """``path`` as an arrow dataset (filtered scans), holding only what is being read."""
    return pads.dataset(path, format=_NOT_PRE_BUFFERED)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Readers never see a half-written file (write aside, then rename).

    Timezone-aware timestamps are stored in microseconds: DuckDB, behind Feast's offline store,
    cannot cast nanosecond ones.
    """
    stamps = [c for c in frame.columns if isinstance(frame[c].dtype, pd.DatetimeTZDtype)]
    frame = frame.astype(dict.fromkeys(stamps, "datetime64[us, UTC]"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def big_file_options(schema: pa.Schema, keys: Sequence[str] = ()) -> dict[str, Any]:
    """How a big file of a data step is encoded: LZ4 pages (about as small as snappy, several times
    faster to read); dictionaries for text only (numbers repeat too little for them to pay); min/max
    statistics for ``keys`` and times only, the columns readers filter on.
    """
    stats = [f.name for f in schema if f.name in keys or pa.types.is_timestamp(f.type)]
    return {"compression": "lz4", "use_dictionary": _text_columns(schema), "write_statistics": stats}


def _text_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]


class PartWriter:
    """A big parquet file written a table at a time, each table encoded on a thread of its own.

    Parquet encoding releases the GIL: the caller computes the next table while this one is written,
    on the other core. ``write`` waits for the table before to be written, so one table at most is
    held for writing besides the one the caller computes. The file is written aside and takes its
    name on ``close``; ``abort`` (or an error) leaves no file. ``keys``: see ``big_file_options``.
    """

    def __init__(self, path: Path, keys: Sequence[str] = ()) -> None:
        self.path, self.keys = path, keys
        self.schema: pa.Schema | None = None
        self._tmp = path.with_name(f".{path.name}.tmp")
        self._queue: queue.Queue[pa.Table | None] = queue.Queue()
        self._writer: pq.ParquetWriter | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, table: pa.Table) -> None:
        """Hand ``table`` (cast to the first table's schema) over for writing; raises what writing raised."""
        self._queue.join()
        if self._error is not None:
            raise self._error
        if self.schema is None:
            self.schema = table.schema
            self._writer = pq.ParquetWriter(self._tmp, table.schema, **big_file_options(table.schema, self.keys))
            self._thread = threading.Thread(target=self._drain, name=f"write {self.path.name}", daemon=True)
            self._thread.start()
        self._queue.put(table.cast(self.schema))

    def close(self, metadata: dict[str, bytes] | None = None) -> bool:
        """Finish the file (``metadata``: key-value pairs for its footer) and give it its name.

        False when no table was written: there is no file.
        """
        if self._writer is None:
            return False
        self._finish()
        if self._error is not None:
            self.abort()
            raise self._error
        if metadata:
            self._writer.add_key_value_metadata(metadata)
        self._writer.close()
        self._writer = None
        self._tmp.replace(self.path)
        return True

    def abort(self) -> None:
        """Stop writing and remove the part-written file."""
        self._finish()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._tmp.unlink(missing_ok=True)

    def _finish(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _drain(self) -> None:
        while (table := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write_table(table)
                except BaseException as exc:  # raised in the caller's thread, on its next write or close
                    self._error = exc
            del table
            self._queue.task_done()
