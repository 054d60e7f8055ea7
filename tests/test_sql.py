"""Names and values put into DuckDB queries are quoted so that none can end them."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from nexttouch.partitions import range_bounds
from nexttouch.sql import identifier, literal


def test_quoted_names_and_values_read_back_as_themselves() -> None:
    name, value = 'a "b" c', "it's; DROP TABLE x; --"
    con = duckdb.connect()
    try:
        row = con.execute(f"SELECT {literal(value)} AS {identifier(name)}").to_arrow_table()
    finally:
        con.close()
    assert row.column_names == [name]
    assert row.column(0).to_pylist() == [value]


def test_range_bounds_of_a_file_under_a_path_with_a_quote(tmp_path: Path) -> None:
    folder = tmp_path / "brand's data"
    folder.mkdir()
    path = folder / "customers.parquet"
    pq.write_table(pa.table({'id "x"': [f"c{i:02d}" for i in range(40)]}), path)
    assert range_bounds(path, 'id "x"', 4) == ["c09", "c19", "c29"]
