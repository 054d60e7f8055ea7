"""Each customer's posterior affinity per action, kept beside the decisions it learns from.

The posteriors live in the decision-log database (SQLite on one host, PostgreSQL shared by replicas):
an outcome updates its customer's posterior in the same transaction that records it, so each outcome
is learnt exactly once however often it is repeated (an idempotent feedback changes nothing), and
the next decision for that customer, on any replica, reads it. The update itself is the core's
(nexttouch.engine.affinity); this module is its storage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np

from nexttouch.catalog import Catalog
from nexttouch.engine.affinity import Affinity, update
from nexttouch.logodds import EPS, logit
from serving.decision_log import Tx


def read(tx: Tx, catalog: Catalog, customer_ids: Sequence[str | None], prior_sd: np.ndarray) -> Affinity:
    """The posteriors of these customers (rows in order; the prior where nothing was learnt yet)."""
    affinity = Affinity.prior(len(customer_ids), prior_sd)
    rows_of: dict[str, list[int]] = {}
    for r, c in enumerate(customer_ids):
        if c is not None:
            rows_of.setdefault(c, []).append(r)
    if not rows_of:
        return affinity
    column = {a: j for j, a in enumerate(catalog.names)}
    ids = list(rows_of)
    for lo in range(0, len(ids), 500):
        part = ids[lo : lo + 500]
        sql = (
            "SELECT customer_id, action, mean, precision, outcomes FROM affinity "
            f"WHERE customer_id IN ({','.join('?' * len(part))})"
        )
        for cid, action, mean, precision, outcomes in tx.execute(sql, part).fetchall():
            j = column.get(action)
            if j is None:  # an action no longer in the catalog
                continue
            for r in rows_of[cid]:
                affinity.mean[r, j], affinity.precision[r, j], affinity.outcomes[r, j] = mean, precision, outcomes
    return affinity


def learn(tx: Tx, catalog: Catalog, decision_id: str, outcome: float, prior_sd: np.ndarray) -> bool:
    """Update the decision's customer's posterior for its action with this outcome; False when it cannot
    (unknown customer, a rule-based answer without a model score, an action that is not in the catalog)."""
    found = tx.execute(
        "SELECT customer_id, action, net_values, fallback FROM decisions WHERE decision_id = ?", (decision_id,)
    ).fetchone()
    if found is None or found[0] is None or found[3]:
        return False
    customer_id, action, values_json, _ = found
    if action not in catalog.names:
        return False
    a = catalog[action]
    value = json.loads(values_json).get(action)
    if value is None or a.value_of_success <= 0:
        return False
    p = (value + a.cost) / a.value_of_success  # what the decision expected of this customer
    row = tx.execute(
        "SELECT mean, precision, outcomes FROM affinity WHERE customer_id = ? AND action = ?" + tx.for_update,
        (customer_id, action),
    ).fetchone()
    first = (0.0, 1.0 / max(float(prior_sd[catalog.names.index(action)]), EPS) ** 2, 0)
    mean, precision, seen = row if row is not None else first
    # the decision's own estimate already held the posterior mean it had then: step from there
    new_mean, new_precision = update(0.0, precision, float(logit(np.float64(p))), outcome)
    tx.execute(
        "INSERT INTO affinity (customer_id, action, mean, precision, outcomes, updated_at) VALUES (?,?,?,?,?,?) "
        "ON CONFLICT (customer_id, action) DO UPDATE SET mean = excluded.mean, precision = excluded.precision, "
        "outcomes = excluded.outcomes, updated_at = excluded.updated_at",
        (customer_id, action, mean + new_mean, new_precision, seen + 1, datetime.now(UTC).isoformat()),
    )
    return True


def attribute(tx: Tx, catalog: Catalog, events: Sequence[tuple[str, str, str, datetime]], prior_sd: np.ndarray) -> int:
    """Touches that show a decision succeeded (its action's success touch, for the decision's own
    customer), as (decision id, customer id, touch type, time): each records the decision's outcome
    once, as feedback would, and the customer's posterior learns it. Returns how many were new."""
    learnt = 0
    for decision_id, customer_id, touch_type, at in events:
        found = tx.execute(
            "SELECT customer_id, action, outcome FROM decisions WHERE decision_id = ?" + tx.for_update, (decision_id,)
        ).fetchone()
        if found is None or found[0] != customer_id or found[2] is not None or found[1] not in catalog.names:
            continue
        if catalog[found[1]].success_touch != touch_type:
            continue
        tx.execute(
            "UPDATE decisions SET outcome = 1, outcome_at = ? WHERE decision_id = ?",
            (at.astimezone(UTC).isoformat(), decision_id),
        )
        learnt += learn(tx, catalog, decision_id, 1.0, prior_sd)
    return learnt
