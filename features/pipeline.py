"""Ingested tables -> feature parquet -> Feast registry and online store."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from features.online_load import LatestFileWriter, materialize_bulk
from features.touch_features import (
    MAY_BE_NULL,
    RESPONSES,
    priors_from_counts,
    response_counts,
    snapshot_days,
    touch_feature_columns,
)
from nexttouch.feature_store import open_store, store_yaml
from nexttouch.parquet import PartWriter, parquet_file
from nexttouch.partitions import partition_count, range_bounds, read_partition, run, split
from nexttouch.schemas import (
    CUSTOMER_ID,
    CUSTOMERS_COLUMNS,
    DECIDED_AT,
    DECISION_ID,
    EVENT_TIMESTAMP,
    EVENTS_COLUMNS,
    SIGNUP_AT,
    check_columns,
    utc_times,
)
from nexttouch.settings import Settings
from nexttouch.telemetry import TELEMETRY_OFF
from nexttouch.touches import SECONDS_PER_DAY, TYPE_NAMES

log = logging.getLogger(__name__)
TOUCH_HISTORY = "touch_history"
CUSTOMER_PROFILE = "customer_profile"
EPOCH = datetime(1970, 1, 2, tzinfo=UTC)
EVENT_COLUMNS = ["occurred_at", "touch_type", "amount", DECISION_ID]  # what the features read
_ARROW_STRINGS = {pa.string(): pd.ArrowDtype(pa.string()), pa.large_string(): pd.ArrowDtype(pa.large_string())}


SNAPSHOT_TTL = timedelta(days=30)  # the touch-history views' ttl (features/feature_views.py)
SNAPSHOT_ROWS = 5_000_000  # the most snapshot rows a spacing is chosen for (rows = customers x days / spacing)
MAX_EVERY_DAYS = 7


@dataclass(frozen=True)
class SnapshotWindow:
    """Feature snapshots at every ``every_days``-th day boundary of the ``days`` before ``end``."""

    end: datetime
    days: int
    every_days: int
    chosen: tuple[str, ...] = ()  # which of end, days, every_days were chosen from the data

    @property
    def first(self) -> datetime:
        return _aware(self.snapshots()[0])

    def snapshots(self) -> np.ndarray:
        """The snapshot times, datetime64[us] (UTC, naive), earliest first."""
        t0 = np.datetime64(pd.Timestamp(self.end).tz_convert(None), "us") - np.timedelta64(self.days, "D")
        return t0 + snapshot_days(self.days, self.every_days).astype("timedelta64[D]")


@dataclass(frozen=True)
class Uncovered:
    """Decisions no snapshot covers: none at or before them within ``SNAPSHOT_TTL``."""

    decisions: int
    of: int
    first: datetime | None
    last: datetime | None


def _times(path: Path, column: str) -> Iterator[np.ndarray]:
    """A time column of an ingested table as datetime64[us] (UTC, naive), a batch at a time (none when the
    table is missing): the events' times alone are gigabytes at 10M customers."""
    if not path.exists():
        return
    for batch in parquet_file(path).iter_batches(batch_size=1 << 20, columns=[column]):
        yield (
            pc.cast(batch.column(0), pa.timestamp("us", "UTC")).to_numpy(zero_copy_only=False).astype("datetime64[us]")
        )


def _time_range(path: Path, column: str) -> tuple[np.datetime64, np.datetime64] | None:
    """The earliest and latest time of a column of an ingested table; None when it has no rows."""
    ranges = [(t.min(), t.max()) for t in _times(path, column) if len(t)]
    return (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None


def _aware(t: np.datetime64) -> datetime:
    return pd.Timestamp(t).tz_localize(UTC).to_pydatetime()


def snapshot_window(
    settings: Settings,
    today: datetime,
    end: datetime | None = None,
    days: int | None = None,
    every_days: int | None = None,
) -> SnapshotWindow:
    """The snapshots to build, each part not given chosen from the ingested data.

    ``end``: the day boundary after the latest touch or decision, at most ``today``. ``days``: back to
    the day of the first decision, plus one spacing, so that the first snapshot is not after it (a
    decision sees the latest snapshot before it, within ``SNAPSHOT_TTL``); ``settings.days`` when no
    decision is loaded. ``every_days``: daily, or the smallest spacing that keeps the rows under
    ``SNAPSHOT_ROWS`` (at most weekly, far inside the TTL).
    """
    chosen = []
    decided = _time_range(settings.raw_dir / "decisions.parquet", DECIDED_AT)
    if end is None:
        ranges = (decided, _time_range(settings.raw_dir / "events.parquet", "occurred_at"))
        latest = [r[1] for r in ranges if r is not None]
        end = today
        if latest:
            after = _aware(max(latest)).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
            end = min(after, today)
        chosen.append("end")
    customers = pq.read_metadata(settings.raw_dir / "customers.parquet").num_rows
    every = every_days or 1
    if days is None:
        days = settings.days
        if decided is not None:
            span = (pd.Timestamp(end) - pd.Timestamp(_aware(decided[0]))).total_seconds() / SECONDS_PER_DAY
            days = int(np.ceil(max(span, 0)))
        chosen.append("days")
    if every_days is None:
        while every < MAX_EVERY_DAYS and customers * (days + every) / every > SNAPSHOT_ROWS:
            every += 1
        chosen.append("every_days")
    if "days" in chosen:
        days = max(days + every, 15)  # one spacing more: the first snapshot at or before the first decision
    return SnapshotWindow(end, days, every, tuple(chosen))


def uncovered(settings: Settings, window: SnapshotWindow) -> Uncovered:
    """The ingested decisions that would find no snapshot within ``SNAPSHOT_TTL`` before them."""
    snaps = window.snapshots()
    ttl = np.timedelta64(int(SNAPSHOT_TTL.total_seconds()), "s")
    bad, of, first, last = 0, 0, None, None
    for decided in _times(settings.raw_dir / "decisions.parquet", DECIDED_AT):
        at = np.searchsorted(snaps, decided, side="right") - 1
        missed = decided[(at < 0) | (decided - snaps[np.maximum(at, 0)] > ttl)]
        of += len(decided)
        if len(missed):
            bad += len(missed)
            first = missed.min() if first is None else min(first, missed.min())
            last = missed.max() if last is None else max(last, missed.max())
    if not bad:
        return Uncovered(0, of, None, None)
    return Uncovered(bad, of, _aware(first), _aware(last))


@dataclass(frozen=True)
class FeatureBuild:
    customers: int
    events: int
    rows: int
    end: datetime
    partitions: int = 1


# Working memory of building features, per event and per snapshot row (pandas, numpy bins, output).
BYTES_PER_EVENT = 160
BYTES_PER_SNAPSHOT_ROW = 2_400
_PRIOR_COLUMNS = ["occurred_at", "touch_type", DECISION_ID, CUSTOMER_ID]


def build_offline(settings: Settings, end: datetime, days: int, every_days: int | None = None) -> FeatureBuild:
    """Write the feature parquet files that the Feast sources read, from the ingested tables.

    Events in data/raw/ (none for a brand without touch events) are validated and already carry the
    resolved ``customer_id``. Customers and their events are split by a hash of the customer into
    as many partitions as ``settings.data_memory_gib`` needs (``nexttouch.partitions``); each
    partition becomes pandas for ``build_touch_features`` and its snapshot rows are appended to the
    parquet file, so memory does not grow with the number of customers. The partitions run here
    (``settings.data_workers`` at once) or on the Dask cluster (``settings.dask_scheduler``), through
    the same function.
    Each customer's last snapshot is also kept in a file of its own for the online load
    (``features.online_load.LatestFileWriter``).
    """
    raw = settings.raw_dir
    events_path, customers_path = raw / "events.parquet", raw / "customers.parquet"
    check_columns(pq.read_schema(customers_path).empty_table().to_pandas(), CUSTOMERS_COLUMNS, "customers")
    if events_path.exists():
        check_columns(
            pq.read_schema(events_path).empty_table().to_pandas(), {**EVENTS_COLUMNS, CUSTOMER_ID: "O"}, "touch events"
        )
        event_schema, event_files = _selected(pq.read_schema(events_path), [*EVENT_COLUMNS, CUSTOMER_ID]), [events_path]
        n_events = pq.read_metadata(events_path).num_rows
    else:
        log.info("no touch events ingested: the touch-history features are zero, the profile is all there is")
        event_schema, event_files, n_events = _NO_EVENTS, [], 0
    customer_schema = pq.read_schema(customers_path)
    n_customers = pq.read_metadata(customers_path).num_rows
    every = every_days or settings.snapshot_every_days
    snapshots = len(snapshot_days(days, every))
    need = n_events * BYTES_PER_EVENT + n_customers * snapshots * BYTES_PER_SNAPSHOT_ROW
    parts = partition_count(need, settings)

    out = settings.offline_dir
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".partitions"
    if parts == 1:
        tasks = [(event_files, [customers_path])]
    else:
        # Ranges of customers: the snapshot file comes out in customer order, which point-in-time joins
        # of it read about twice as fast as the same rows in hash-partition order.
        memory, bounds = settings.data_memory_gib, range_bounds(customers_path, CUSTOMER_ID, parts)
        at_once = settings.data_workers
        events_parts = split(
            event_files, [CUSTOMER_ID], parts, work / "events", memory, event_schema.names, False, bounds, at_once
        )
        customer_parts = split(
            [customers_path], [CUSTOMER_ID], parts, work / "customers", memory, None, False, bounds, at_once
        )
        tasks = list(zip(events_parts if event_files else [[]] * parts, customer_parts, strict=True))
    try:
        counts = sum(
            run(settings, partition_counts, [(e, c, event_schema, customer_schema, end, days, every) for e, c in tasks])
        )
        priors = priors_from_counts(counts)
        args = [(e, c, event_schema, customer_schema, end, days, every, priors) for e, c in tasks]
        rows = _write_features(out, run(settings, partition_features, args))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return FeatureBuild(n_customers, n_events, rows, end, parts)


def _write_features(out: Path, results: Iterator[tuple[pa.Table, pa.Table, pa.Table] | None]) -> int:
    """Each partition's snapshot rows, profile rows and latest rows appended to their files."""
    touch_path = out / f"{TOUCH_HISTORY}.parquet"
    touches = PartWriter(touch_path, [CUSTOMER_ID])
    profiles = PartWriter(out / f"{CUSTOMER_PROFILE}.parquet", [CUSTOMER_ID])
    latest = LatestFileWriter(touch_path, [CUSTOMER_ID], EVENT_TIMESTAMP)
    rows = 0
    try:
        for result in results:
            if result is None:  # a partition without customers
                continue
            touch, last, profile = result
            del result
            touches.write(touch)
            profiles.write(profile)
            latest.write(last.cast(touches.schema))
            rows += touch.num_rows
            del touch, last, profile
        touches.close()
        profiles.close()
    except BaseException:
        for writer in (touches, profiles, latest):
            writer.abort()
        raise
    latest.close()  # stamped with the snapshot file just written
    return rows


_NO_EVENTS = pa.schema(
    [
        pa.field("occurred_at", pa.timestamp("us", "UTC")),
        pa.field("touch_type", pa.large_string()),
        pa.field("amount", pa.float64()),
        pa.field(DECISION_ID, pa.large_string()),
        pa.field(CUSTOMER_ID, pa.large_string()),
    ]
)


def _selected(schema: pa.Schema, columns: list[str]) -> pa.Schema:
    return pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)


def partition_counts(
    event_files: list[Path],
    customer_files: list[Path],
    event_schema: pa.Schema,
    customer_schema: pa.Schema,
    end: datetime,
    days: int,
    every_days: int,
) -> np.ndarray:
    """``response_counts`` of one partition's known customers' events (in arrow and numpy: no pandas copy)."""
    counted = pa.array(sorted({t for pair in RESPONSES.values() for t in pair}))  # the rest would only cost memory
    events = read_partition(event_files, _selected(event_schema, _PRIOR_COLUMNS))
    ids = read_partition(customer_files, _selected(customer_schema, [CUSTOMER_ID])).column(CUSTOMER_ID)
    known = pc.is_in(pc.cast(events.column(CUSTOMER_ID), pa.string()), value_set=pc.cast(ids, pa.string()))
    events = events.filter(pc.and_(known, pc.is_in(events.column("touch_type"), counted)))
    touch = pc.fill_null(pc.index_in(events.column("touch_type"), value_set=pa.array(TYPE_NAMES)), -1)
    t0 = np.datetime64(pd.Timestamp(end - timedelta(days=days)).tz_convert(None), "ns")
    occurred = events.column("occurred_at").to_numpy().astype("datetime64[ns]")
    seconds = (occurred - t0) // np.timedelta64(1, "s")
    linked = pc.is_valid(events.column(DECISION_ID)).to_numpy(zero_copy_only=False)
    bounds = snapshot_days(days, every_days) * SECONDS_PER_DAY
    return response_counts(touch.to_numpy(zero_copy_only=False), seconds, linked, bounds)


def partition_features(
    event_files: list[Path],
    customer_files: list[Path],
    event_schema: pa.Schema,
    customer_schema: pa.Schema,
    end: datetime,
    days: int,
    every_days: int,
    priors: np.ndarray,
) -> tuple[pa.Table, pa.Table, pa.Table] | None:
    """One partition's (touch-history snapshots, each customer's latest of them, profile rows); None if empty.

    The one function both engines run on every partition (``nexttouch.partitions.run``).
    """
    people = read_partition(customer_files, customer_schema)
    if people.num_rows == 0:
        return None
    # In customer order (a split partition comes in any): the snapshot file is then sorted by customer.
    people = people.take(pc.sort_indices(people, sort_keys=[(CUSTOMER_ID, "ascending")])).to_pandas()
    events = read_partition(event_files, event_schema).to_pandas(types_mapper=_ARROW_STRINGS.get)
    chunks = touch_feature_columns(events, people, end, days, every_days, priors=priors)
    table = pa.concat_tables([pa.table({name: _arrow(values) for name, values in cols.items()}) for cols in chunks])
    table = table.cast(_required(table.schema))
    del events
    # One row per customer and snapshot, each customer's latest last.
    snapshots = len(snapshot_days(days, every_days))
    latest = table.take(pa.array(np.arange(snapshots - 1, table.num_rows, snapshots)))
    # A profile row is valid from sign-up; without a sign-up date, from always (no decision misses it).
    always = pd.Series(pd.Timestamp(EPOCH), people.index, dtype="datetime64[us, UTC]")
    since = utc_times(people[SIGNUP_AT]).astype(always.dtype).fillna(always) if SIGNUP_AT in people else always
    profile = people.drop(columns=[SIGNUP_AT], errors="ignore").assign(**{EVENT_TIMESTAMP: since})
    return table, latest, pa.Table.from_pandas(_microseconds(profile), preserve_index=False)


def _required(schema: pa.Schema) -> pa.Schema:
    """Columns that always have a value marked so (the cast checks it): parquet then writes no definition
    levels for them, a third less to encode."""
    return pa.schema([f.with_nullable(f.name in MAY_BE_NULL) for f in schema], metadata=schema.metadata)


def _arrow(values: Any) -> pa.Array:
    """A feature column as arrow, times as microseconds in UTC (DuckDB behind Feast cannot cast nanoseconds)."""
    if isinstance(getattr(values, "dtype", None), pd.DatetimeTZDtype):
        return pa.array(values).cast(pa.timestamp("us", "UTC"))
    return pa.array(values)


def _microseconds(frame: pd.DataFrame) -> pd.DataFrame:
    stamps = [c for c in frame.columns if isinstance(frame[c].dtype, pd.DatetimeTZDtype)]
    return frame.astype(dict.fromkeys(stamps, "datetime64[us, UTC]"))


def feast_apply(settings: Settings) -> None:
    """The stock `feast apply`, run in the repo (it changes directory, so not in-process)."""
    _forget_foreign_registry(settings)
    feast = Path(sys.executable).with_name("feast")
    config = store_yaml(settings)
    env = {**os.environ, **TELEMETRY_OFF}
    cmd = [str(feast), "-f", str(config), "apply"]
    result = subprocess.run(cmd, cwd=settings.feature_repo, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"feast apply failed in {settings.feature_repo}:\n{result.stderr[-4000:]}")
    registry = _registry_path(settings)
    if registry is not None:
        registry.with_name(registry.name + ".owner").write_text(str(registry.resolve()))


def _registry_path(settings: Settings) -> Path | None:
    """The registry file of the profile; None for a registry in a database (Feast's SQL registry)."""
    # Read as Feast reads it: with the environment variables it names expanded.
    entry = yaml.safe_load(os.path.expandvars(store_yaml(settings).read_text()))["registry"]
    if isinstance(entry, dict) and entry.get("registry_type", "file") != "file":
        return None
    path = Path(entry["path"] if isinstance(entry, dict) else entry)
    return path if path.is_absolute() else settings.feature_repo / path


def _forget_foreign_registry(settings: Settings) -> None:
    """Drop a registry copied from another project directory before applying.

    The registry records the online tables it created (absolute SQLite paths) as its infra, and
    `feast apply` tears down infra that is no longer wanted: applying a copied registry would drop
    the *original* project's online tables. The registry is derived from the repo, so a fresh one
    loses nothing. The owner file next to it says which directory it was applied in. A registry in a
    database is shared on purpose (replicas, the nightly job) and its online store is Redis: kept.
    """
    registry = _registry_path(settings)
    if registry is None:
        return
    owner = registry.with_name(registry.name + ".owner")
    if registry.exists() and (not owner.exists() or owner.read_text() != str(registry.resolve())):
        registry.unlink()


def materialize(settings: Settings, end: datetime, stock: bool = False) -> dict[str, int]:
    """Load the latest feature row of each customer up to ``end`` into the online store.

    The window starts at the epoch, not at the last load (``materialize_incremental``): profile
    rows are stamped with the signup time and a rebuilt history may be older than the last load.
    The views are written in bulk (``features.online_load``: the same stored bytes, ~20x faster
    than stock at 1M customers); ``stock=True`` runs Feast's own materialize. Returns rows written
    per view (empty for the stock path, which does not say).
    """
    store = open_store(settings)
    if stock:
        store.materialize(start_date=EPOCH, end_date=end)
        return {}
    return materialize_bulk(store, end)
