"""CSV files written for people are opened in spreadsheets: a cell that starts like a formula is not run.

A text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as a formula by
Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)``, ``+cmd|' /C calc'!A0``, ``@SUM(...)``). Such
cells get a leading apostrophe, which spreadsheets show as text and never evaluate (OWASP's advice for
CSV injection). Numbers are written as numbers, so ``-5`` in a numeric column stays ``-5``.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

FORMULA_START = "^([=+\\-@\\t\\r])"


def safe_text(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A text column with every formula-like cell prefixed by an apostrophe (arrow kernels, no Python loop)."""
    return pc.replace_substring_regex(column, FORMULA_START, "'\\1")


def safe_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its text columns made safe for a spreadsheet (a copy; numbers untouched)."""
    out = frame.copy(deep=False)
    for col in out.columns:
        if pd.api.types.is_string_dtype(out[col]) or pd.api.types.is_object_dtype(out[col]):
            text = pa.array(out[col].astype("string"), type=pa.large_string(), from_pandas=True)
            out[col] = pd.Series(pd.arrays.ArrowStringArray(safe_text(text)), index=out.index)
    return out
