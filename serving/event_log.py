"""Touch events posted to the service, kept in the decision-log database until the nightly job collects them.

They are rows of ``touch_events`` in the decision log's database (SQLite, or the PostgreSQL that every
replica shares), written in the log's group commit before the answer is sent: not a file per request
(thousands of small files for every nightly ingest to re-read, on the disk of whichever replica took it).

``export`` writes the rows not exported yet as one ``events-log-<first seq>.parquet`` in the ingest
contract, then marks them. A crash between the two exports them again next time, under the same name
(with any newer rows): the file is replaced, nothing is lost or loaded twice. (Should a row with a
lower sequence number commit late in between, PostgreSQL's sequences not being commit-ordered, the
rows land in two files and ingest quarantines the second copies as duplicate event ids, with that reason.)

Event ids are idempotency keys: an id already kept (a client's retry) is not kept again. Rows whose time
no stage can hold (kept before requests were bounded) are not exported: they are reported in the job's
log and marked, so the nightly job goes on and reports them once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from nexttouch.api import EARLIEST, LATEST
from nexttouch.parquet import write_parquet
from nexttouch.schemas import DECISION_ID
from serving.decision_log import DecisionLog, Tx, report_skipped, storable_times

# As they arrived (source key, not customer id): the nightly ingest resolves identity again.
COLUMNS = [
    "event_id",
    "occurred_at",
    "source_system",
    "source_key",
    "touch_type",
    "tier",
    "direction",
    "amount",
    DECISION_ID,
]
_PENDING = "SELECT {} FROM touch_events WHERE exported_to IS NULL"
MARK_CHUNK = 5_000  # rows marked per UPDATE (bound parameters per statement stay well under both limits)
SKIPPED = "skipped: time out of range"  # exported_to of rows no export can hold


def _create(tx: Tx) -> None:
    if tx.postgres:  # workers start together: concurrent CREATE TABLE IF NOT EXISTS can still collide
        tx.execute("SELECT pg_advisory_xact_lock(724002)")
    seq = "BIGSERIAL PRIMARY KEY" if tx.postgres else "INTEGER PRIMARY KEY"
    real = "DOUBLE PRECISION" if tx.postgres else "REAL"
    tx.execute(
        f"""CREATE TABLE IF NOT EXISTS touch_events (
            seq           {seq},
            event_id      TEXT NOT NULL,
            occurred_at   TEXT NOT NULL,
            source_system TEXT NOT NULL,
            source_key    TEXT NOT NULL,
            touch_type    TEXT NOT NULL,
            tier          TEXT NOT NULL,
            direction     TEXT NOT NULL,
            amount        {real},
            decision_id   TEXT,
            received_at   TEXT NOT NULL,
            exported_to   TEXT
        )"""
    )
    tx.execute("CREATE INDEX IF NOT EXISTS touch_events_pending ON touch_events (seq) WHERE exported_to IS NULL")
    tx.execute("CREATE INDEX IF NOT EXISTS touch_events_event_id ON touch_events (event_id)")


class EventLog:
    """Durable storage of posted touch events, sharing the decision log's connection and commits."""

    def __init__(self, log: DecisionLog) -> None:
        self.log = log
        log.run(_create)

    def keep(self, events: pd.DataFrame) -> np.ndarray:
        """Commit ``events`` (the columns of ``COLUMNS``, ``occurred_at`` aware); returns once durable.

        Which rows were kept: False for an event id kept before (by any worker) or earlier in ``events``.
        """
        received = datetime.now(UTC).isoformat()
        rows = [
            (
                r.event_id,
                r.occurred_at.astimezone(UTC).isoformat(),
                r.source_system,
                r.source_key,
                r.touch_type,
                r.tier,
                r.direction,
                None if pd.isna(r.amount) else float(r.amount),
                None if pd.isna(r.decision_id) else r.decision_id,
                received,
            )
            for r in events.itertuples(index=False)
        ]
        sql = f"INSERT INTO touch_events ({', '.join(COLUMNS)}, received_at) VALUES ({', '.join('?' * 10)})"
        first = ~events["event_id"].duplicated().to_numpy()

        def op(tx: Tx) -> np.ndarray:
            if tx.postgres:  # workers of several replicas may keep the same id at once: one at a time
                tx.execute("SELECT pg_advisory_xact_lock(724003)")
            ids = events["event_id"].tolist()
            seen = set()
            for lo in range(0, len(ids), MARK_CHUNK):
                chunk = ids[lo : lo + MARK_CHUNK]
                found = tx.execute(
                    f"SELECT event_id FROM touch_events WHERE event_id IN ({', '.join('?' * len(chunk))})", chunk
                )
                seen.update(r[0] for r in found.fetchall())
            kept = first & ~np.isin(np.array(ids, dtype=object), list(seen))
            new = [row for row, keep in zip(rows, kept, strict=True) if keep]
            if new:
                tx.executemany(sql, new)
            return kept

        return self.log.run(op)

    def latest_touches(self) -> pd.DataFrame:
        """The latest time of every key's touches per tier and direction, over every event ever kept (exported
        or not): what a rebuilt online store folds in.

        Times are ISO text in UTC, so the binary text order is the time order (a time without microseconds
        sorts before the same second with them); times no stage can hold are left out before the maximum.
        """
        bounds = (EARLIEST.astimezone(UTC).isoformat(), LATEST.astimezone(UTC).isoformat())

        def op(tx: Tx) -> list[tuple]:
            at = 'occurred_at COLLATE "C"' if tx.postgres else "occurred_at"
            query = (
                f"SELECT source_system, source_key, tier, direction, max({at}) FROM touch_events "
                f"WHERE {at} >= ? AND {at} < ? GROUP BY source_system, source_key, tier, direction"
            )
            return tx.execute(query, bounds).fetchall()

        frame = pd.DataFrame(
            self.log.run(op), columns=["source_system", "source_key", "tier", "direction", "occurred_at"]
        )
        frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True, format="ISO8601")
        return frame

    def pending(self) -> int:
        return self.log.run(lambda tx: tx.execute(_PENDING.format("count(*)")).fetchone()[0])

    def export(self, directory: Path) -> Path | None:
        """The events not exported yet as one parquet file in ``directory``; None when there are none."""
        query = _PENDING.format(f"seq, {', '.join(COLUMNS)}") + " ORDER BY seq"
        rows = self.log.run(lambda tx: tx.execute(query).fetchall())
        if not rows:
            return None
        frame = pd.DataFrame(rows, columns=["seq", *COLUMNS])
        frame["occurred_at"], bad = storable_times(frame["occurred_at"])
        if bad.any():
            report_skipped("events", "occurred_at", frame.loc[bad, "event_id"].tolist())
            self._mark(frame.loc[bad, "seq"].tolist(), SKIPPED)
            frame = frame.loc[~bad]
            if frame.empty:
                return None
        seqs = frame.pop("seq").tolist()
        frame["amount"] = frame["amount"].astype(float)
        path = directory / f"events-log-{seqs[0]:012d}.parquet"
        write_parquet(frame.reset_index(drop=True), path)  # durable before the rows are marked: a crash here
        self._mark(seqs, path.name)  # exports them again
        return path

    def _mark(self, seqs: list[int], exported_to: str) -> None:
        def mark(tx: Tx) -> None:
            for lo in range(0, len(seqs), MARK_CHUNK):
                chunk = seqs[lo : lo + MARK_CHUNK]
                tx.execute(
                    f"UPDATE touch_events SET exported_to = ? WHERE seq IN ({', '.join('?' * len(chunk))})",
                    (exported_to, *chunk),
                )

        self.log.run(mark)
