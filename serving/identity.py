"""Source keys -> customer ids, from the identity map and the customers that `nexttouch ingest` loaded.

A customer named by id directly is looked up as the key of the pseudo-system ``api`` (the event log stores
such events that way): only a customer the service knows resolves. Made-up ids stay unknown; they never
become customers online.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nexttouch.schemas import CUSTOMER_ID

API_SYSTEM = "api"  # source system of events that name the customer by customer id


class IdentityMap:
    def __init__(self, mapping: dict[tuple[str, str], str], customers: set[str] | None = None) -> None:
        self._mapping = mapping
        self._customers = set(mapping.values()) | (customers or set())

    @classmethod
    def load(cls, path: Path, customers: Path | None = None) -> IdentityMap:
        """The map in data/raw/identity.parquet and the customers beside it (customers.parquet); empty when
        nothing was ingested yet."""
        mapping: dict[tuple[str, str], str] = {}
        if path.exists():
            frame = pd.read_parquet(path, columns=["source_system", "source_key", CUSTOMER_ID])
            keys = zip(frame["source_system"], frame["source_key"], strict=True)
            mapping = dict(zip(keys, frame[CUSTOMER_ID], strict=True))
        customers = customers or path.with_name("customers.parquet")
        known = set(pd.read_parquet(customers, columns=[CUSTOMER_ID])[CUSTOMER_ID]) if customers.exists() else set()
        return cls(mapping, known)

    @property
    def systems(self) -> frozenset[str]:
        """The source systems whose keys resolve (the pseudo-system ``api`` included)."""
        return frozenset({API_SYSTEM, *(system for system, _ in self._mapping)})

    def resolve(self, system: str, key: str) -> str | None:
        if system == API_SYSTEM:
            return key if key in self._customers else None
        return self._mapping.get((system, key))
