"""Capacity ledger: advisor calls and event seats used per action, period and region, durably.

The ledger is a table in the decision-log database, updated inside the transaction that logs the
decision (serving/decision_log.py): the conditional increment and the decision commit together,
so a restart neither forgets what was used nor counts a decision that was never answered.
Concurrent workers are serialised by the database: SQLite's ``BEGIN IMMEDIATE`` write lock,
PostgreSQL's row lock (``SELECT ... FOR UPDATE``) held until commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from nexttouch.catalog import Action
from nexttouch.catalog import Capacity as CapacityRule
from serving.decision_log import Tx

UNKNOWN = "unknown"  # bucket of customers whose `per` column is missing (e.g. cold start)


def period_of(rule: CapacityRule, when: datetime) -> str:
    """The period a decision at ``when`` counts against: ``2026-11-01`` or ``2026-W44`` (UTC)."""
    day = when.astimezone(UTC).date()
    if rule.period == "day":
        return day.isoformat()
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def bucket_of(rule: CapacityRule, features: Mapping[str, Any] | None) -> str:
    """The share of the limit a customer draws from, e.g. ``region=north``; ``all`` with no ``per``."""
    if rule.per is None:
        return "all"
    value = (features or {}).get(rule.per)
    return f"{rule.per}={UNKNOWN if value is None or value != value else value}"


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


def used(tx: Tx, action: str, period: str, bucket: str) -> int:
    row = tx.execute(
        "SELECT used FROM capacity WHERE action = ? AND period = ? AND bucket = ?", (action, period, bucket)
    ).fetchone()
    return 0 if row is None else int(row[0])
