"""The decision log: every decision is committed before its answer is sent.

SQLite (``data/decisions.db``, WAL, full sync) by default; PostgreSQL when
``settings.decision_log_url`` is a ``postgresql://`` URL. One writer thread per process owns the
connection and commits in groups: requests that arrive while a commit is being synced share the
next transaction (and its fsync), each waits for the commit that holds its row. The capacity
ledger (serving/capacity.py) lives in the same database and is updated in the same transaction.

Outcomes come back through ``feedback`` (idempotent); ``export`` writes the log as a
``decisions`` table that `nexttouch ingest` loads for the nightly retraining.

No operation commits after its request has given up: each carries a deadline (its request's, from
serving/deadline.py, less ``margin_s``; else ``wait_s`` from now). The log waits for its write lock
(another worker, a backup) only until the latest deadline of a group, and an operation whose deadline
has passed when its transaction starts fails with ``LogTimeout`` (a 503) and leaves no trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from pydantic_core import to_json

from nexttouch.api import EARLIEST, LATEST, DecideResponse
from nexttouch.schemas import ACTION, CUSTOMER_ID, DECIDED_AT, DECISION_ID, OUTCOME, PROPENSITY
from nexttouch.settings import Settings
from serving import deadline

T = TypeVar("T")
log = logging.getLogger("nexttouch.decision_log")

MAX_GROUP = 512  # operations sharing one commit
COLUMNS = (
    "decision_id, customer_id, decided_at, action, propensity, explored, cold_start, fallback, "
    "model_version, net_values, context, send_at"
)
INSERT = f"INSERT INTO decisions ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
# Columns a log written by an earlier version may lack, added when it is opened.
ADDED = {"fallback": "INTEGER NOT NULL DEFAULT 0", "send_at": "TEXT"}


def _schema(real: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS decisions (
            decision_id   TEXT PRIMARY KEY,
            customer_id   TEXT,
            decided_at    TEXT NOT NULL,
            action        TEXT NOT NULL,
            propensity    {real} NOT NULL,
            explored      INTEGER NOT NULL,
            cold_start    INTEGER NOT NULL,
            model_version TEXT NOT NULL,
            net_values    TEXT NOT NULL,
            context       TEXT NOT NULL,
            outcome       {real},
            outcome_at    TEXT,
            fallback      INTEGER NOT NULL DEFAULT 0,
            send_at       TEXT
        )""",
        """CREATE TABLE IF NOT EXISTS capacity (
            action TEXT NOT NULL,
            period TEXT NOT NULL,
            bucket TEXT NOT NULL,
            used   INTEGER NOT NULL,
            PRIMARY KEY (action, period, bucket)
        )""",
        # each customer's posterior affinity per action (serving/affinity.py)
        f"""CREATE TABLE IF NOT EXISTS affinity (
            customer_id TEXT NOT NULL,
            action      TEXT NOT NULL,
            mean        {real} NOT NULL,
            precision   {real} NOT NULL,
            outcomes    INTEGER NOT NULL,
            updated_at  TEXT NOT NULL,
            PRIMARY KEY (customer_id, action)
        )""",
    ]


class Feedback(Enum):
    RECORDED = "recorded"
    UNCHANGED = "unchanged"  # the same outcome again: idempotent
    UNKNOWN = "unknown decision"
    CONFLICT = "a different outcome is already recorded"
    BEFORE_DECISION = "the outcome time is before the decision"


class LogTimeout(TimeoutError):
    """The log's write lock was not free before the operation's deadline: nothing of it was written."""


Item = tuple[Callable[["Tx"], Any], Future, float]  # operation, its result, its deadline (time.monotonic)


class Tx:
    """The open transaction an operation runs in; SQL is written with ``?`` for both databases."""

    def __init__(self, conn: Any, postgres: bool) -> None:
        self.conn = conn
        self.postgres = postgres
        # Rows read to be updated stay locked until commit (SQLite: BEGIN IMMEDIATE locks the database).
        self.for_update = " FOR UPDATE" if postgres else ""
        self._sql: dict[str, str] = {}

    def _q(self, sql: str) -> str:
        if not self.postgres:
            return sql
        if sql not in self._sql:
            self._sql[sql] = sql.replace("?", "%s")
        return self._sql[sql]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self._q(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.postgres:
            with self.conn.cursor() as cur:
                cur.executemany(self._q(sql), rows)
        else:
            self.conn.executemany(sql, rows)


def new_decision_id() -> str:
    """A UUIDv7 (RFC 9562) as 32 hex digits: 48 bits of Unix milliseconds, then random bits.

    Decision ids are the log's primary key. Random ids (UUIDv4) land all over the key's B-tree, so
    a commit of 1,000 decisions dirtied ~1,000 pages of a large log (megabytes per fsync, the
    batch endpoint's bottleneck); time-ordered ids append at its right edge.
    """
    return new_decision_ids(1)[0]


def new_decision_ids(n: int) -> list[str]:
    """``n`` decision ids (``new_decision_id``) with one clock read and one ``urandom`` call."""
    head = (time.time_ns() // 1_000_000 & (2**48 - 1)) << 80 | 0x7 << 76 | 0b10 << 62
    rand = os.urandom(10 * n)
    ids = []
    for k in range(0, 10 * n, 10):
        r = int.from_bytes(rand[k : k + 10], "big")
        ids.append(f"{head | (r >> 68 & 0xFFF) << 64 | r & (2**62 - 1):032x}")
    return ids


def decision_row(answer: DecideResponse, context: dict[str, str]) -> tuple:
    return decision_rows([dict(answer)], context)[0]


def decision_rows(answers: Sequence[Mapping[str, Any]], context: dict[str, str]) -> list[tuple]:
    """Log rows of answers given as ``DecideResponse`` fields by name (the batch keeps them as dicts)."""
    context_json = to_json(context).decode()
    times: dict[datetime, str] = {}  # a batch's answers share one decision time
    rows = []
    for a in answers:
        at = a["decided_at"]
        when = times.get(at)
        if when is None:
            when = times[at] = at.astimezone(UTC).isoformat()
        rows.append(
            (
                a["decision_id"],
                a["customer_id"],
                when,
                a["action"],
                a["propensity"],
                int(a["explored"]),
                int(a["cold_start"]),
                int(a.get("fallback", False)),
                a["model_version"],
                to_json(a["values"]).decode(),  # pydantic's Rust encoder: ~5x json.dumps for 1,000 rows
                context_json,
                None if a.get("send_at") is None else a["send_at"].astimezone(UTC).isoformat(),
            )
        )
    return rows


def insert_decisions(tx: Tx, rows: Sequence[tuple]) -> None:
    if len(rows) == 1:
        tx.execute(INSERT, rows[0])
    else:
        tx.executemany(INSERT, rows)


class DecisionLog:
    """The durable log; ``run``/``arun`` execute an operation inside the next group commit."""

    def __init__(self, target: Path | str, wait_s: float = 10.0, margin_s: float = 1.0) -> None:
        self.target = target
        self.wait_s = wait_s  # an operation outside a request waits this long for the write lock
        self.margin_s = margin_s  # one in a request starts this long before the request's deadline at the latest
        self.postgres = isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))
        if not self.postgres:
            self.target = Path(target)
            self.target.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()  # fail at start, not at the first request
        self._setup(conn)
        self.commits = 0  # transactions committed by the writer (group commit: fewer than operations)
        self._queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, args=(conn,), name="decision-log", daemon=True)
        self._writer.start()

    @classmethod
    def open(cls, settings: Settings) -> DecisionLog:
        return cls(settings.decision_log_url or settings.decision_log, margin_s=settings.log_wait_margin_s)

    # -- operations ------------------------------------------------------------------------------

    def submit(self, op: Callable[[Tx], T], request_deadline: float | None = None) -> Future[T]:
        """``op`` in the next group commit, given up at ``request_deadline`` (default: the current request's)."""
        future: Future[T] = Future()
        request = request_deadline if request_deadline is not None else deadline.current()
        due = request - self.margin_s if request is not None else time.monotonic() + self.wait_s
        self._queue.put((op, future, due))
        return future

    def run(self, op: Callable[[Tx], T]) -> T:
        """Run ``op`` in the next transaction and return once it is committed."""
        return self.submit(op).result()

    async def arun(self, op: Callable[[Tx], T], request_deadline: float | None = None) -> T:
        return await asyncio.wrap_future(self.submit(op, request_deadline))

    def record(self, answer: DecideResponse, context: dict[str, str]) -> None:
        row = decision_row(answer, context)
        self.run(lambda tx: insert_decisions(tx, [row]))

    def feedback(self, decision_id: str, outcome: float, at: datetime | None = None) -> Feedback:
        return self.run(feedback_op(decision_id, outcome, at))

    def export(self, directory: Path) -> Path | None:
        """The log as ``decisions-log.parquet`` in the ingest contract (customers known by id only).

        Rows whose decision time no stage can hold (a log written before requests were bounded) are left
        out and reported in the job's log, by id: the export and the nightly job go on without them.
        """
        conn = self._connect()
        try:
            rows = conn.execute(
                "SELECT decision_id, customer_id, decided_at, action, propensity, outcome FROM decisions "
                "WHERE customer_id IS NOT NULL ORDER BY decided_at, decision_id"
            ).fetchall()
        finally:
            conn.close()
        if not rows:
            return None
        frame = pd.DataFrame(rows, columns=[DECISION_ID, CUSTOMER_ID, DECIDED_AT, ACTION, PROPENSITY, OUTCOME])
        frame[DECIDED_AT], bad = storable_times(frame[DECIDED_AT])
        if bad.any():
            report_skipped("decisions", DECIDED_AT, frame.loc[bad, DECISION_ID].tolist())
            frame = frame.loc[~bad]
        frame[OUTCOME] = frame[OUTCOME].astype(float)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "decisions-log.parquet"
        frame.to_parquet(path, index=False)
        return path

    def close(self) -> None:
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()

    # -- the writer ------------------------------------------------------------------------------

    def _connect(self) -> Any:
        if self.postgres:
            import psycopg

            return psycopg.connect(str(self.target), autocommit=True)
        conn = sqlite3.connect(self.target, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=10000")  # other workers hold the write lock for one commit
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a committed decision survives a crash
        return conn

    def _setup(self, conn: Any) -> None:
        if self.postgres:
            # Several workers may start at once: serialise the DDL.
            conn.execute("SELECT pg_advisory_lock(724001)")
        try:
            for statement in _schema("DOUBLE PRECISION" if self.postgres else "REAL"):
                conn.execute(statement)
            columns = [d[0] for d in conn.execute("SELECT * FROM decisions LIMIT 0").description]
            for name, kind in ADDED.items():
                if name not in columns:
                    conn.execute(f"ALTER TABLE decisions ADD COLUMN {name} {kind}")
        finally:
            if self.postgres:
                conn.execute("SELECT pg_advisory_unlock(724001)")

    def _write_loop(self, conn: Any) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            group = [item]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            conn = self._commit(conn, group)
            if stop:
                break
        if conn is not None:
            conn.close()

    def _commit(self, conn: Any, group: list[Item]) -> Any:
        """Run a group of operations in one transaction; each gets its result only once committed."""
        live = [(op, f, due) for op, f, due in group if f.set_running_or_notify_cancel()]
        if not live:
            return conn
        outcomes: list[tuple[Future, Any, BaseException | None]] = []
        wait_ms = int(1000 * (max(due for _, _, due in live) - time.monotonic()))
        if wait_ms <= 0:  # every request of the group has given up while it queued
            for _, future, _ in live:
                future.set_exception(LogTimeout("the decision log did not get to the operation in time"))
            return conn
        try:
            if conn is None:
                conn = self._connect()
            tx = Tx(conn, self.postgres)
            self._begin(conn, wait_ms)
            for i, (op, future, due) in enumerate(live):
                if time.monotonic() > due:  # its request is about to be answered 504: leave no trace
                    outcomes.append((future, None, LogTimeout("the decision log's write lock was not free in time")))
                    continue
                # A failing operation is rolled back alone; the others still commit.
                conn.execute(f"SAVEPOINT op{i}")
                try:
                    outcomes.append((future, op(tx), None))
                    conn.execute(f"RELEASE SAVEPOINT op{i}")
                except Exception as exc:  # the caller gets the exception
                    conn.execute(f"ROLLBACK TO SAVEPOINT op{i}")
                    conn.execute(f"RELEASE SAVEPOINT op{i}")
                    outcomes.append((future, None, exc))
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # nothing of this group is durable: every caller fails
            log.error("decision log commit failed: %s", type(exc).__name__)
            with contextlib.suppress(Exception):  # the connection is dropped anyway
                conn.close()
            for _, future, _ in live:
                future.set_exception(exc)
            return None  # reconnect for the next group
        for future, result, error in outcomes:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        return conn

    def _begin(self, conn: Any, wait_ms: int) -> None:
        """Start the write transaction, waiting at most ``wait_ms`` for a lock another holds."""
        if self.postgres:
            conn.execute("BEGIN")
            conn.execute(f"SET LOCAL lock_timeout = {wait_ms}")
        else:
            conn.execute(f"PRAGMA busy_timeout={wait_ms}")
            conn.execute("BEGIN IMMEDIATE")


def storable_times(text: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """ISO 8601 times as UTC timestamps, and which of them no stage can hold (unparsable, or outside
    ``EARLIEST``..``LATEST``): those are NaT."""
    parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    bad = (parsed.isna() | (parsed < EARLIEST) | (parsed >= LATEST)).to_numpy()
    return parsed.where(~bad), bad


def report_skipped(table: str, column: str, ids: list[str]) -> None:
    """Say which rows an export left out and why: the job's log is where on-call looks."""
    shown = ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
    log.warning(
        "%s export skipped %d rows whose %s is not between %s and %s (kept in the log, not exported): %s",
        table,
        len(ids),
        column,
        f"{EARLIEST:%Y-%m-%d}",
        f"{LATEST:%Y-%m-%d}",
        shown,
    )


def feedback_op(decision_id: str, outcome: float, at: datetime | None) -> Callable[[Tx], Feedback]:
    def op(tx: Tx) -> Feedback:
        found = tx.execute(
            "SELECT outcome, decided_at FROM decisions WHERE decision_id = ?" + tx.for_update, (decision_id,)
        ).fetchone()
        if found is None:
            return Feedback.UNKNOWN
        if found[0] is not None:
            return Feedback.UNCHANGED if found[0] == outcome else Feedback.CONFLICT
        when = (at or datetime.now(UTC)).astimezone(UTC)
        if when < datetime.fromisoformat(found[1]):
            return Feedback.BEFORE_DECISION
        when = when.isoformat()
        tx.execute(
            "UPDATE decisions SET outcome = ?, outcome_at = ? WHERE decision_id = ?", (outcome, when, decision_id)
        )
        return Feedback.RECORDED

    return op
