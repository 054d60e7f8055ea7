"""Source keys -> customer ids, from the identity map that `nexttouch ingest` loaded."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nexttouch.schemas import CUSTOMER_ID


class IdentityMap:
    def __init__(self, mapping: dict[tuple[str, str], str]) -> None:
        self._mapping = mapping

    @classmethod
    def load(cls, path: Path) -> IdentityMap:
        """The map in data/raw/identity.parquet; empty when nothing was ingested yet."""
        if not path.exists():
            return cls({})
        frame = pd.read_parquet(path, columns=["source_system", "source_key", CUSTOMER_ID])
        keys = zip(frame["source_system"], frame["source_key"], strict=True)
        return cls(dict(zip(keys, frame[CUSTOMER_ID], strict=True)))

    def resolve(self, system: str, key: str) -> str | None:
        return self._mapping.get((system, key))
