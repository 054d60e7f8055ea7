"""nexttouch.parquet: a large file read a batch at a time holds only what is being read."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nexttouch.parquet import parquet_dataset, parquet_file

GROUPS, ROWS = 120, 20_000


def _many_row_groups(path) -> int:
    """A file of ``GROUPS`` row groups of random text; returns the bytes of one group, uncompressed."""
    rng = np.random.default_rng(0)
    text = pc.cast(pa.array(rng.integers(0, 2**62, GROUPS * ROWS)), pa.string())
    pq.write_table(pa.table({"id": text, "n": np.arange(GROUPS * ROWS)}), path, row_group_size=ROWS)
    return pq.read_metadata(path).row_group(0).total_byte_size


def _most_allocated(batches) -> int:
    start, most = pa.total_allocated_bytes(), 0
    for batch in batches:
        most = max(most, pa.total_allocated_bytes() - start)
        del batch
    return most


def test_reading_every_row_group_holds_a_few_of_them_not_all(tmp_path) -> None:
    path = tmp_path / "many.parquet"
    group = _many_row_groups(path)
    assert _most_allocated(parquet_file(path).iter_batches(batch_size=ROWS)) < 8 * group
    assert _most_allocated(parquet_dataset(path).to_batches(batch_size=ROWS, batch_readahead=1)) < 16 * group
