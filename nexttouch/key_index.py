"""Rows of a big table found by their key, for the same table looked up again and again.

pyarrow's ``index_in`` hashes its whole value set on every call: ingest looks the keys of every
partition of the events up in the whole identity map (tens of millions of keys at 10M customers),
so each partition would hash the map again and the step would grow with customers x partitions.
Here the key's 64-bit hash (DuckDB's ``hash``) is indexed once, in a pandas hash table of integers
that is built on first use and kept; a lookup hashes only the keys looked up, and every match is
compared with the key itself, so a hash collision never finds a wrong row. Should two of the
indexed keys share a hash, lookups fall back to ``index_in`` on the key text: right, only slower.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

_SEPARATOR = pa.scalar(
    "\x1f", pa.large_string()
)  # joins the parts of a key for the fallback: never in an id (nexttouch.api.ID_PATTERN)


class KeyIndex:
    """The row of each key among ``columns`` (the key's parts, arrow text; keys unique and not null)."""

    def __init__(self, columns: Sequence[pa.Array]) -> None:
        self.columns = [_text(c) for c in columns]
        index = pd.Index(key_hash(self.columns))
        self._index = index if index.is_unique else None  # unique: its hash table is built, and kept

    def find(self, columns: Sequence[pa.Array]) -> np.ndarray:
        """The indexed row of each key given by ``columns`` (its parts), -1 where absent or a part is null."""
        columns = [_text(c) for c in columns]
        if self._index is None:
            return self._exact(columns)
        at = self._index.get_indexer(key_hash(columns)).astype(np.int64)
        hit = np.flatnonzero(at >= 0)
        if len(hit):
            rows, every = pa.array(at[hit]), len(hit) == len(at)  # every key found: the usual case, no copy of them
            asked = None if every else pa.array(hit)
            same = np.ones(len(hit), bool)
            for mine, theirs in zip(self.columns, columns, strict=True):
                equal = pc.equal(mine.take(rows), theirs if every else theirs.take(asked))
                same &= pc.fill_null(equal, False).to_numpy(zero_copy_only=False)
            at[hit[~same]] = -1
        return at

    def contains(self, columns: Sequence[pa.Array]) -> np.ndarray:
        return self.find(columns) >= 0

    def _exact(self, columns: list[pa.Array]) -> np.ndarray:
        found = pc.index_in(_joined(columns), value_set=_joined(self.columns), skip_nulls=True)
        return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def key_hash(columns: Sequence[pa.Array]) -> np.ndarray:
    """A 64-bit hash of each row's key (its parts ``columns``), computed by DuckDB on all cores."""
    import duckdb

    keys = pa.table({f"k{i}": c for i, c in enumerate(columns)})
    con = duckdb.connect(config={"preserve_insertion_order": True})  # one hash per row, in row order
    try:
        con.register("keys", keys)
        return con.execute(f"SELECT hash({', '.join(keys.column_names)}) AS h FROM keys").fetchnumpy()["h"]
    finally:
        con.close()


def _text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    column = pc.cast(column, pa.large_string())  # one type on both sides: the hash is of the value alone
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _joined(columns: list[pa.Array]) -> pa.Array:
    return columns[0] if len(columns) == 1 else pc.binary_join_element_wise(*columns, _SEPARATOR)
