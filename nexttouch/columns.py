"""The engine's input: every feature a 1-D numpy array, one row per customer.

Timestamps become float Unix seconds (NaN when missing) so the contact rules do arithmetic on
plain arrays: the same code decides one customer or a million without pandas on the hot path.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd

Features = dict[str, np.ndarray]
_MISSING = np.array([np.nan])


def from_frame(frame: pd.DataFrame) -> Features:
    """A frame's columns as arrays (timestamps as Unix seconds)."""
    out: Features = {}
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.DatetimeTZDtype) or column.dtype.kind == "M":
            out[name] = seconds(column)
        else:
            out[name] = column.to_numpy()
    return out


def from_row(row: Mapping[str, object], names: Collection[str] | None = None) -> Features:
    """One customer's values by name as a batch of one (numbers and times share one float array);
    only ``names`` when given."""
    floats: list[float] = []
    where: list[tuple[str, int]] = []
    out: Features = {}
    items = row.items() if names is None else ((n, row[n]) for n in names if n in row)
    for name, value in items:
        kind = type(value)
        if kind is float or kind is int:  # most values: checked first, by exact type
            number = float(value)
        elif value is None:
            number = np.nan
        elif isinstance(value, datetime):
            number = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
        elif isinstance(value, (bool, int, float, np.number)):
            number = float(value)
        else:
            out[name] = np.array([value], dtype=object)
            continue
        where.append((name, len(floats)))
        floats.append(number)
    values = np.array(floats)
    for name, i in where:
        out[name] = values[i : i + 1]
    return out


def from_rows(rows: Sequence[Mapping[str, object] | None], names: Collection[str] | None = None) -> Features:
    """Customers' values by name, one row each (None: a customer with no values), converted as ``from_row``
    does; a column with text in any row holds objects."""
    if len(rows) == 1 and rows[0] is not None:
        return from_row(rows[0], names)
    parts = [from_row(row, names) if row is not None else {} for row in rows]
    out: Features = {}
    for name in dict.fromkeys(name for part in parts for name in part):
        cells = [part.get(name) for part in parts]
        if all(c is None or c.dtype.kind == "f" for c in cells):
            out[name] = np.concatenate([_MISSING if c is None else c for c in cells])
        else:  # text in some row: objects, None where missing
            out[name] = np.array(
                [None if c is None or (c.dtype.kind == "f" and c[0] != c[0]) else c[0] for c in cells], object
            )
    return out


def seconds(values: pd.Series) -> np.ndarray:
    """Timestamps (naive ones are UTC) as float Unix seconds, NaN where missing, whatever their unit."""
    times = values if isinstance(values.dtype, pd.DatetimeTZDtype) else pd.to_datetime(values, utc=True)
    ns = times.dt.as_unit("ns").array.asi8
    return np.where(times.isna().to_numpy(), np.nan, ns / 1e9)


def times(seconds: np.ndarray) -> pd.DatetimeIndex:
    """Float Unix seconds (NaN: missing) as UTC times (NaT where missing).

    Only the known values go through ``pd.to_datetime``: given NaN in a float array, pandas 2.x
    rounds uninitialised memory for them and now and then raises FloatingPointError
    (pandas-dev/pandas#58419), which would turn a good read into a store error.
    """
    values = np.asarray(seconds, dtype=np.float64)
    known = ~np.isnan(values)
    out = np.full(values.shape, np.datetime64("NaT"), "datetime64[ns]")
    if known.any():
        out[known] = pd.to_datetime(values[known], unit="s").to_numpy()
    return pd.DatetimeIndex(out).tz_localize(UTC)


def numbers(features: Mapping[str, np.ndarray], name: str, n: int) -> np.ndarray:
    """A feature as floats (NaN where missing or not a number); all NaN when the feature is absent."""
    column = features.get(name)
    if column is None:
        return np.full(n, np.nan)
    if column.dtype.kind in "fiub":
        return column.astype(np.float64, copy=False)
    return pd.to_numeric(pd.Series(column), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def labels(features: Mapping[str, np.ndarray], name: str, n: int) -> np.ndarray:
    """A text feature as objects, None where missing."""
    column = features.get(name)
    if column is None:
        return np.full(n, None, dtype=object)
    if column.dtype.kind == "f":
        return np.where(np.isnan(column), None, column.astype(object))
    out = column.astype(object)  # a copy: callers may fill it
    if n == 1:
        value = out[0]
        out[0] = None if value is None or (not isinstance(value, str) and pd.isna(value)) else value
        return out
    return np.where(pd.isna(out), None, out)


def take_rows(features: Mapping[str, np.ndarray], rows: np.ndarray) -> Features:
    return {name: column[rows] for name, column in features.items()}
