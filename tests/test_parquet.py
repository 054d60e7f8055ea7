"""nexttouch.parquet: big files are read a batch at a time holding only that, and written whole or not at all."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from nexttouch.parquet import PartWriter, parquet_dataset, parquet_file

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


def _part(start: int, rows: int = 1000) -> pa.Table:
    n = np.arange(start, start + rows)
    stamps = pa.array(n * 1_000_000, pa.timestamp("us", "UTC"))
    return pa.table({"id": pc.cast(pa.array(n), pa.string()), "at": stamps, "x": n * 0.5})


def test_a_part_writer_writes_every_table_in_order_and_names_the_file_on_close(tmp_path) -> None:
    path = tmp_path / "parts.parquet"
    writer = PartWriter(path, ["id"])
    for k in range(5):
        writer.write(_part(k * 1000))
        assert not path.exists()  # readers never see a part-written file
    assert writer.close({"note": b"stamped"})
    assert pq.read_table(path).equals(pa.concat_tables([_part(k * 1000) for k in range(5)]))
    meta = pq.read_metadata(path)
    assert meta.metadata[b"note"] == b"stamped"
    columns = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i) for i in range(3)}
    assert columns["x"].compression == "LZ4" and columns["x"].statistics is None  # no statistics to keep
    assert columns["at"].statistics is not None and columns["id"].statistics is not None  # times and keys
    assert list(tmp_path.iterdir()) == [path]


def test_a_part_writer_raises_what_writing_raised_and_leaves_no_file(tmp_path, monkeypatch) -> None:
    write_table, calls = pq.ParquetWriter.write_table, []

    def full_after_one(self, table, *args, **kwargs) -> None:  # the disk fills up after the first table
        calls.append(table.num_rows)
        if len(calls) > 1:
            raise OSError("No space left on device")
        write_table(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full_after_one)
    path = tmp_path / "parts.parquet"
    writer = PartWriter(path)
    writer.write(_part(0))
    writer.write(_part(1000))  # written on the writer's thread: its error comes with the next call
    with pytest.raises(OSError, match="No space"):
        writer.write(_part(2000))
    writer.abort()
    assert list(tmp_path.iterdir()) == []

    calls.clear()
    closing = PartWriter(path)
    closing.write(_part(0))
    closing.write(_part(1000))
    with pytest.raises(OSError, match="No space"):
        closing.close()
    assert list(tmp_path.iterdir()) == []


def test_an_aborted_part_writer_leaves_no_file(tmp_path) -> None:
    path = tmp_path / "parts.parquet"
    aborted = PartWriter(path)
    aborted.write(_part(0))
    aborted.abort()
    assert list(tmp_path.iterdir()) == []
    assert not PartWriter(path).close()  # nothing written: no file
    assert list(tmp_path.iterdir()) == []
