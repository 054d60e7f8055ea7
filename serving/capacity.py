"""Capacity ledger (its one owner): advisor calls and event seats used per action, period and region, durably.

The ledger is a table in the decision-log database, updated inside the transaction that logs the
decision (serving/decision_log.py): the conditional increment and the decision commit together,
so a restart neither forgets what was used nor counts a decision that was never answered.
Concurrent workers are serialised by the database: SQLite's ``BEGIN IMMEDIATE`` write lock,
PostgreSQL's row lock (``SELECT ... FOR UPDATE``) held until commit. Periods and buckets are the
catalog's (``Capacity.period_of``, ``Capacity.bucket``).
"""

from __future__ import annotations

from nexttouch.catalog import Action
from serving.decision_log import Tx


def take(tx: Tx, action: Action, period: str, bucket: str, want: int = 1) -> int:
    """Grant up to ``want`` units of ``action``'s capacity; returns how many were granted (0 = full)."""
    assert action.capacity is not None
    limit = action.capacity.limit
    if want <= 0 or limit <= 0:
        return 0
    key = (action.name, period, bucket)
    tx.execute("INSERT INTO capacity (action, period, bucket, used) VALUES (?,?,?,0) ON CONFLICT DO NOTHING", key)
    (used,) = tx.execute(
        "SELECT used FROM capacity WHERE action = ? AND period = ? AND bucket = ?" + tx.for_update, key
    ).fetchone()
    granted = max(0, min(want, limit - int(used)))
    if granted:
        tx.execute(
            "UPDATE capacity SET used = used + ? WHERE action = ? AND period = ? AND bucket = ?", (granted, *key)
        )
    return granted


def used(tx: Tx, action: str, period: str) -> dict[str, int]:
    """Units of ``action`` taken in ``period``, per bucket."""
    rows = tx.execute("SELECT bucket, used FROM capacity WHERE action = ? AND period = ?", (action, period))
    return {bucket: int(n) for bucket, n in rows.fetchall()}
