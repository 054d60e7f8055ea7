"""The decision log: every decision is committed to SQLite before its answer is sent.

Outcomes come back through ``feedback`` (idempotent); ``export`` writes the log as a
``decisions`` table that `nexttouch ingest` loads for the nightly retraining.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

import pandas as pd

from nexttouch.api import DecideResponse
from nexttouch.schemas import ACTION, CUSTOMER_ID, DECIDED_AT, DECISION_ID, OUTCOME, PROPENSITY

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    decision_id   TEXT PRIMARY KEY,
    customer_id   TEXT,
    decided_at    TEXT NOT NULL,
    action        TEXT NOT NULL,
    propensity    REAL NOT NULL,
    explored      INTEGER NOT NULL,
    cold_start    INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    net_values    TEXT NOT NULL,
    context       TEXT NOT NULL,
    outcome       REAL,
    outcome_at    TEXT
)
"""


class Feedback(Enum):
    RECORDED = "recorded"
    UNCHANGED = "unchanged"  # the same outcome again: idempotent
    UNKNOWN = "unknown decision"
    CONFLICT = "a different outcome is already recorded"


class DecisionLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed decision survives a crash
        self._db.execute(SCHEMA)
        self._lock = threading.Lock()

    def record(self, answer: DecideResponse, context: dict[str, str]) -> None:
        row = (
            answer.decision_id,
            answer.customer_id,
            answer.decided_at.astimezone(UTC).isoformat(),
            answer.action,
            answer.propensity,
            int(answer.explored),
            int(answer.cold_start),
            answer.model_version,
            json.dumps(answer.values),
            json.dumps(context),
        )
        with self._lock:
            self._db.execute("INSERT INTO decisions VALUES (?,?,?,?,?,?,?,?,?,?,NULL,NULL)", row)

    def feedback(self, decision_id: str, outcome: float, at: datetime | None = None) -> Feedback:
        with self._lock:
            found = self._db.execute("SELECT outcome FROM decisions WHERE decision_id = ?", (decision_id,)).fetchone()
            if found is None:
                return Feedback.UNKNOWN
            if found[0] is not None:
                return Feedback.UNCHANGED if found[0] == outcome else Feedback.CONFLICT
            when = (at or datetime.now(UTC)).astimezone(UTC).isoformat()
            self._db.execute(
                "UPDATE decisions SET outcome = ?, outcome_at = ? WHERE decision_id = ?", (outcome, when, decision_id)
            )
            return Feedback.RECORDED

    def export(self, directory: Path) -> Path | None:
        """The log as ``decisions-log.parquet`` in the ingest contract (customers known by id only)."""
        with self._lock:
            frame = pd.read_sql_query(
                "SELECT decision_id, customer_id, decided_at, action, propensity, outcome FROM decisions "
                "WHERE customer_id IS NOT NULL ORDER BY decided_at, decision_id",
                self._db,
            )
        if frame.empty:
            return None
        frame[DECIDED_AT] = pd.to_datetime(frame[DECIDED_AT], utc=True, format="ISO8601")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "decisions-log.parquet"
        frame[[DECISION_ID, CUSTOMER_ID, DECIDED_AT, ACTION, PROPENSITY, OUTCOME]].to_parquet(path, index=False)
        return path

    def close(self) -> None:
        self._db.close()
