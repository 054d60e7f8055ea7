"""Write parquet the one way every stage needs it: atomically, timestamps in microseconds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


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
