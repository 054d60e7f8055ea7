"""Baseline policies the plan is measured against (benchmarks and tests), not used in production."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from nexttouch.catalog import NO_ACTION, Catalog
from nexttouch.columns import from_frame
from nexttouch.engine.choice import best, net_values
from nexttouch.engine.rules import check
from nexttouch.plan import capacity_slots


def first_come_first_served(
    catalog: Catalog, frame: pd.DataFrame, p_success: np.ndarray, now: datetime | None, default_time_zone: str = "UTC"
) -> np.ndarray:
    """Customers in row order each take their best eligible action while capacity lasts.

    A customer whose best scarce action is full falls back to the next best eligible one.
    """
    eligible = check(catalog, from_frame(frame), len(frame), now, default_time_zone).eligible
    values = np.where(eligible, net_values(catalog, p_success), -np.inf)
    slots = {s.action: s for s in capacity_slots(catalog, frame)}
    left = {j: s.limit.copy() for j, s in slots.items()}
    none = catalog.names.index(NO_ACTION)
    chosen = best(values, eligible, none)
    for i in np.flatnonzero(np.isin(chosen, list(slots))):
        order = sorted(range(values.shape[1]), key=lambda j: (-values[i, j], j != none))
        for j in order:
            if j in slots:
                g = slots[j].group[i]
                if left[j][g] <= 0:
                    continue
                left[j][g] -= 1
            chosen[i] = j
            break
    return chosen
