"""Parquet the one way every stage needs it: written atomically with timestamps in microseconds, and
read a batch at a time without pre-buffering.

With pre-buffering (pyarrow's default) a reader keeps what it pre-buffered of every row group it has
read until it is done with the file: streaming the events of 10M customers (10 GB, 500 row groups)
a batch at a time held several GiB. Every reader of a large file a batch at a time opens it here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq

_NOT_PRE_BUFFERED = pads.ParquetFileFormat(
    default_fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=False)
)


def parquet_file(path: Path) -> pq.ParquetFile:
    """``path`` to read a row group or a batch at a time, holding only what is being read."""
    return pq.ParquetFile(path, pre_buffer=False)


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
