"""Point-in-time-correct training set: labelled decisions joined with the FeatureService.

A decision's label is its outcome when feedback came back; otherwise it is attributed from the
touch history: success when the action's ``success_touch`` (catalog) happens within
``attribution_days`` after the decision, failure once that window has closed without it. A
decision whose window is still open carries no label yet and is left out (not counted as 0).
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from nexttouch.catalog import Catalog
from nexttouch.feature_store import open_store
from nexttouch.parquet import parquet_dataset, parquet_file
from nexttouch.partitions import duckdb_memory_mb
from nexttouch.schemas import (
    ACTION,
    CUSTOMER_ID,
    DECIDED_AT,
    DECISION_ID,
    DECISIONS_COLUMNS,
    EVENT_TIMESTAMP,
    OUTCOME,
    PROPENSITY,
    REQUEST_AT,
    check_columns,
)
from nexttouch.settings import Settings
from nexttouch.sql import identifier, literal

log = logging.getLogger(__name__)
DEFAULT_ATTRIBUTION_DAYS = 2  # catalogs without the field: the simulated brand answers within 2 days
TOUCH_TYPE, OCCURRED_AT = "touch_type", "occurred_at"
ENTITY_ROW = "entity_row"  # position in the entity frame, carried through Feast
ENTITY_ROWS_PER_QUERY = 250_000  # bounds the memory of one point-in-time join (see _historical_features)
TRAINING_SET_FILE = "training_set.parquet"
ROW_GROUP_ROWS = 65_536  # rows of one parquet row group of the training set file
BATCH_ROWS = 262_144  # rows a reader of the training set holds at once


class Batched:
    """Reading rows a batch at a time, for anything with ``len`` and ``read(start, stop, columns)``."""

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, start: int = 0, stop: int | None = None, columns: list[str] | None = None) -> pd.DataFrame:
        raise NotImplementedError

    def batches(
        self, start: int = 0, stop: int | None = None, rows: int | None = None, columns: list[str] | None = None
    ) -> Iterator[pd.DataFrame]:
        """Rows ``start`` up to ``stop``, ``rows`` (default ``BATCH_ROWS``) at a time."""
        stop, rows = len(self) if stop is None else min(stop, len(self)), rows or BATCH_ROWS
        for lo in range(start, stop, rows):
            yield self.read(lo, min(lo + rows, stop), columns)


@dataclass(frozen=True)
class TrainingSet(Batched):
    """A training set on disk (``write_training_set``): one parquet file, rows in (decided_at,
    decision_id) order, read a range of rows at a time with the types ``training_set`` returns.
    ``start`` and ``stop`` make it a view of a range of the file's rows (``rows``)."""

    path: Path
    open_window: int = 0  # decisions left out because their attribution window is still open
    start: int = 0
    stop: int | None = None  # None: to the end of the file

    def __len__(self) -> int:
        end = self._offsets[-1] if self.stop is None else min(self.stop, self._offsets[-1])
        return max(end - self.start, 0)

    @cached_property
    def _offsets(self) -> list[int]:
        meta = pq.read_metadata(self.path)
        out = [0]
        for g in range(meta.num_row_groups):
            out.append(out[-1] + meta.row_group(g).num_rows)
        return out

    @property
    def columns(self) -> list[str]:
        return pq.read_schema(self.path).names

    def rows(self, start: int = 0, stop: int | None = None) -> TrainingSet:
        """The view of rows ``start`` up to ``stop`` of this one."""
        stop = len(self) if stop is None else min(stop, len(self))
        return replace(self, start=self.start + start, stop=self.start + max(stop, start))

    def table(self, start: int = 0, stop: int | None = None, columns: list[str] | None = None) -> pa.Table:
        """Rows ``start`` up to ``stop`` as arrow, reading only the row groups they are in."""
        stop = len(self) if stop is None else min(stop, len(self))
        first, last = self.start + min(start, stop), self.start + stop
        file = parquet_file(self.path)
        if first == last:
            return file.schema_arrow.empty_table().select(columns or file.schema_arrow.names)
        offsets = self._offsets
        groups = [g for g in range(len(offsets) - 1) if offsets[g] < last and offsets[g + 1] > first]
        return file.read_row_groups(groups, columns=columns).slice(first - offsets[groups[0]], last - first)

    @cached_property
    def _with_nulls(self) -> set[str]:
        """The integer and boolean columns with a missing value anywhere in the file (parquet statistics)."""
        meta, schema = pq.read_metadata(self.path), pq.read_schema(self.path)
        kinds = {f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_boolean(f.type)}
        out = set()
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                column = group.column(c)
                nulls = column.statistics.null_count if column.statistics is not None else 1
                if column.path_in_schema in kinds and nulls:
                    out.add(column.path_in_schema)
        return out

    def read(self, start: int = 0, stop: int | None = None, columns: list[str] | None = None) -> pd.DataFrame:
        """Rows ``start`` up to ``stop`` as the frame ``training_set`` would hold them, with the types of
        the whole set whatever the range: an integer column missing somewhere is float, a boolean one object."""
        table = self.table(start, stop, columns)
        for name in self._with_nulls & set(table.column_names):
            i = table.column_names.index(name)
            if pa.types.is_integer(table.schema.field(i).type):
                table = table.set_column(i, name, table.column(i).cast(pa.float64()))
        frame = table.to_pandas()
        for name in self._with_nulls & set(table.column_names):
            if pd.api.types.is_bool_dtype(frame[name].dtype):
                frame[name] = frame[name].astype(object)
        return frame


@dataclass(frozen=True)
class FrameRows(Batched):
    """A training set held as a frame, read like a ``TrainingSet`` (rows in the frame's order)."""

    frame: pd.DataFrame

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def columns(self) -> list[str]:
        return list(self.frame.columns)

    def rows(self, start: int = 0, stop: int | None = None) -> FrameRows:
        return FrameRows(self.frame.iloc[start:stop])

    def read(self, start: int = 0, stop: int | None = None, columns: list[str] | None = None) -> pd.DataFrame:
        part = self.frame.iloc[start:stop]
        return part if columns is None else part[columns]


Rows = TrainingSet | FrameRows


def attribute_outcomes(
    decisions: pd.DataFrame, events: pd.DataFrame, catalog: Catalog, as_of: datetime
) -> tuple[pd.DataFrame, int]:
    """Decisions with a label: (labelled decisions, number left out because their window is open).

    ``events`` needs ``customer_id``, ``occurred_at``, ``touch_type`` and may have ``decision_id``:
    a touch that names its decision counts for that decision only (an opened push is the answer to
    that push, not to the next one); an unnamed touch counts for every decision of the customer whose
    window it falls in. ``as_of`` is how far the touch history is known. Feedback outcomes win over
    attribution. An action without a ``success_touch`` can only be labelled by feedback.
    """
    out = decisions.copy()
    missing = out[OUTCOME].isna().to_numpy()
    if not missing.any():
        return out, 0
    todo = out.loc[missing, [DECISION_ID, CUSTOMER_ID, DECIDED_AT, ACTION]].copy()
    touch = {a.name: getattr(a, "success_touch", None) for a in catalog.actions}
    days = {a.name: getattr(a, "attribution_days", DEFAULT_ATTRIBUTION_DAYS) for a in catalog.actions}
    todo[TOUCH_TYPE] = todo[ACTION].astype(object).map(touch)
    todo[DECIDED_AT] = _utc_ns(todo[DECIDED_AT])  # one time unit on both sides of the as-of join
    todo["window_end"] = todo[DECIDED_AT] + pd.to_timedelta(todo[ACTION].astype(object).map(days), unit="D")
    todo[CUSTOMER_ID] = todo[CUSTOMER_ID].astype(object)
    ev = events.loc[events[TOUCH_TYPE].astype(object).isin(set(touch.values()) - {None})]
    linked_to = ev[DECISION_ID].astype(object) if DECISION_ID in ev else pd.Series(None, index=ev.index, dtype=object)
    linked = linked_to.notna().to_numpy()
    ev = pd.DataFrame(
        {
            DECISION_ID: linked_to,
            CUSTOMER_ID: ev[CUSTOMER_ID].astype(object),
            TOUCH_TYPE: ev[TOUCH_TYPE].astype(object),
            "next_success_at": _utc_ns(ev[OCCURRED_AT]),
        }
    )
    known = todo.loc[todo[TOUCH_TYPE].notna()]
    # A touch that names its decision (e.g. the push it opened) counts for that decision only ...
    own = known.merge(ev.loc[linked], on=[DECISION_ID, CUSTOMER_ID, TOUCH_TYPE], how="inner")
    own = own.loc[(own["next_success_at"] > own[DECIDED_AT]) & (own["next_success_at"] <= own["window_end"])]
    # ... an unlinked one for the customer's decisions whose window it falls in (first one after each).
    free = ev.loc[~linked].drop(columns=DECISION_ID).sort_values("next_success_at")
    hit = pd.merge_asof(
        known.sort_values(DECIDED_AT),
        free,
        left_on=DECIDED_AT,
        right_on="next_success_at",
        by=[CUSTOMER_ID, TOUCH_TYPE],
        direction="forward",
        allow_exact_matches=False,
    ).set_index(DECISION_ID)
    success = (hit["next_success_at"] <= hit["window_end"]).to_numpy() | hit.index.isin(own[DECISION_ID])
    closed = (hit["window_end"] <= pd.Timestamp(as_of)).to_numpy()
    label = pd.Series(np.where(success, 1.0, np.where(closed, 0.0, np.nan)), index=hit.index)
    filled = out[DECISION_ID].map(label)
    out[OUTCOME] = out[OUTCOME].where(~missing, filled)
    still = int(out[OUTCOME].isna().sum())
    return out.loc[out[OUTCOME].notna()].reset_index(drop=True), still


def _utc_ns(times: pd.Series) -> pd.Series:
    return pd.to_datetime(times, utc=True).astype("datetime64[ns, UTC]")


def _success_touches(catalog: Catalog, since: datetime) -> pads.Expression:
    touches = sorted({t for a in catalog.actions if (t := getattr(a, "success_touch", None))})
    return (pads.field(TOUCH_TYPE).isin(touches)) & (pads.field(OCCURRED_AT) > pd.Timestamp(since))


def read_success_events(
    settings: Settings, catalog: Catalog, since: datetime, customers: pd.Series | None = None
) -> pd.DataFrame:
    """The success touches after ``since`` (of ``customers`` only, if given) from the ingested events,
    filtered in arrow: the events of 1M customers (50M rows) stay on disk."""
    wanted = _success_touches(catalog, since)
    if customers is not None:
        wanted &= pads.field(CUSTOMER_ID).isin(pa.array(customers.astype(object).unique(), pa.string()))
    table = parquet_dataset(settings.raw_dir / "events.parquet").to_table(
        columns=[CUSTOMER_ID, OCCURRED_AT, TOUCH_TYPE, DECISION_ID], filter=wanted
    )
    return table.to_pandas()


def latest_success_at(settings: Settings, catalog: Catalog, since: datetime) -> datetime | None:
    """The time of the latest success touch after ``since``, of any customer (a batch at a time)."""
    batches = parquet_dataset(settings.raw_dir / "events.parquet").to_batches(
        columns=[OCCURRED_AT], filter=_success_touches(catalog, since)
    )
    latest = [m for b in batches if (m := pc.max(b.column(0)).as_py()) is not None]
    return max(latest, default=None)


def latest_decisions(path: Path, most: int) -> pd.DataFrame:
    """The decision log's latest ``most`` decisions, and any decided at the same time as the last of them.

    A log longer than that is not read whole: DuckDB finds the earliest time to keep (a top-N of one
    column), and parquet's row-group filter reads only the rows from then on.
    """
    rows = pq.read_metadata(path).num_rows
    if rows <= most:
        return pd.read_parquet(path)
    import duckdb

    con = duckdb.connect(config={"memory_limit": "1GB"})
    try:
        query = f"SELECT epoch_us({identifier(DECIDED_AT)}) FROM read_parquet({literal(str(path))}) "
        query += f"ORDER BY 1 DESC LIMIT 1 OFFSET {most - 1}"
        (since,) = con.execute(query).fetchone()
    finally:
        con.close()
    since = pd.Timestamp(since, unit="us", tz="UTC")
    log.info("training reads the latest %d of %d decisions: those decided from %s on", most, rows, since)
    return parquet_dataset(path).to_table(filter=pads.field(DECIDED_AT) >= since).to_pandas()


def label_decisions(
    settings: Settings, decisions: pd.DataFrame, catalog: Catalog | None, as_of: datetime | None = None
) -> tuple[pd.DataFrame, int]:
    """Feedback outcomes plus attributed ones; returns (labelled decisions, open-window count)."""
    open_ = decisions[OUTCOME].isna()
    # Without ingested touch events nothing can be attributed: only feedback outcomes label (an
    # attribution window that closed on no events at all says nothing about success).
    attributable = catalog is not None and (settings.raw_dir / "events.parquet").exists()
    if not attributable or not open_.any():
        if catalog is not None and open_.any():
            log.info("no touch events ingested: %d decisions without an outcome cannot be attributed", open_.sum())
        return decisions.loc[~open_].reset_index(drop=True), int(open_.sum())
    since = decisions.loc[open_, DECIDED_AT].min() - timedelta(seconds=1)
    events = read_success_events(settings, catalog, since, decisions.loc[open_, CUSTOMER_ID])
    if as_of is None:  # the touch history is known up to its latest event
        as_of = latest_success_at(settings, catalog, since) or decisions[DECIDED_AT].max()
    return attribute_outcomes(decisions, events, catalog, as_of)


def training_set(
    settings: Settings, decisions: pd.DataFrame, catalog: Catalog | None = None, as_of: datetime | None = None
) -> pd.DataFrame:
    """Features as they were at each ``decided_at`` (Feast ``get_historical_features``), as one frame.

    With a ``catalog``, decisions without feedback are labelled by attribution (see the module
    docstring); without one only decisions with an outcome are used. Decisions whose label is not
    known yet are not training rows; their count is in ``frame.attrs["open_window"]``. The rows are
    those of ``write_training_set``, read whole: for brands whose training set fits in memory.
    """
    work = settings.data_dir / "tmp" / f"training-set-{uuid.uuid4().hex[:12]}"
    try:
        written = write_training_set(settings, decisions, work, catalog, as_of)
        out = written.read()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.attrs["open_window"] = written.open_window
    return out


def write_training_set(
    settings: Settings,
    decisions: pd.DataFrame,
    out: Path,
    catalog: Catalog | None = None,
    as_of: datetime | None = None,
) -> TrainingSet:
    """The training set written under ``out`` as one parquet file in (decided_at, decision_id) order.

    Labels as ``training_set``. Feast answers ``ENTITY_ROWS_PER_QUERY`` entity rows (a range of
    customers) at a time and each answer, joined with its decisions, is written as a part; DuckDB then
    sorts the parts by time within ``settings.data_memory_gib`` (spilling to disk beyond it), so no
    step holds more than one slice of the rows.
    """
    check_columns(decisions, DECISIONS_COLUMNS, "decisions")
    labelled, open_window = label_decisions(settings, decisions, catalog, as_of)
    if open_window:
        log.info("%d decisions have no outcome yet (attribution window open): left out", open_window)
    if labelled[DECISION_ID].duplicated().any():
        raise ValueError("decisions: decision_id is not unique")
    shutil.rmtree(out, ignore_errors=True)
    (out / "parts").mkdir(parents=True)
    # Feast's features depend only on (customer, decision time): one entity row per distinct pair.
    entity_of, first = _entity_rows(labelled[CUSTOMER_ID], labelled[DECIDED_AT])
    entity_df = pd.DataFrame(
        {
            CUSTOMER_ID: labelled[CUSTOMER_ID].to_numpy()[first],
            EVENT_TIMESTAMP: labelled[DECIDED_AT].iloc[first].reset_index(drop=True),
            ENTITY_ROW: np.arange(len(first), dtype=np.int64),
        }
    )
    entity_df[REQUEST_AT] = entity_df[EVENT_TIMESTAMP]  # recency is measured at decision time
    left = labelled[[DECISION_ID, CUSTOMER_ID, ACTION, PROPENSITY, OUTCOME]]
    left = left.assign(**{DECISION_ID: left[DECISION_ID].astype(object)})  # as the former merge on it left it
    by_entity = np.argsort(entity_of, kind="stable")  # the decisions of a slice of entity rows, together
    starts = np.arange(0, max(len(first), 1) + ENTITY_ROWS_PER_QUERY, ENTITY_ROWS_PER_QUERY)  # and the end
    bounds = np.searchsorted(entity_of[by_entity], starts)
    parts = []
    for i, (lo, features) in enumerate(_historical_features(settings, entity_df)):
        mine = by_entity[bounds[i] : bounds[i + 1]]  # this slice's decisions
        # The offline store does not keep row order: ENTITY_ROW says which entity row each result row is.
        asked = min(ENTITY_ROWS_PER_QUERY, max(len(entity_df) - lo, 0))
        at = np.full(asked, -1, dtype=np.int64)
        if features.num_rows == asked:
            at[features.column(ENTITY_ROW).to_numpy() - lo] = np.arange(features.num_rows)
        if features.num_rows != asked or (at < 0).any():
            raise RuntimeError(f"Feast returned {features.num_rows} rows for {asked} entity rows")
        rows = at[entity_of[mine] - lo]
        features = features.drop_columns([CUSTOMER_ID, REQUEST_AT, ENTITY_ROW]).take(pa.array(rows))
        features = features.rename_columns([DECIDED_AT if c == EVENT_TIMESTAMP else c for c in features.column_names])
        part = pa.Table.from_pandas(left.iloc[mine], preserve_index=False)
        for name in features.column_names:
            part = part.append_column(features.schema.field(name), features.column(name))
        path = out / "parts" / f"part-{i:05d}.parquet"
        pq.write_table(part, path, compression="none")  # read once, by the sort
        parts.append(path)
        del features, part
    written = _sorted_by_time(settings, parts, out / TRAINING_SET_FILE, len(labelled), open_window)
    shutil.rmtree(out / "parts", ignore_errors=True)
    return written


def _sorted_by_time(settings: Settings, parts: list[Path], path: Path, rows: int, open_window: int) -> TrainingSet:
    """The parts' rows by (decided_at, decision_id) into one file, with the parts' own (arrow and pandas) types."""
    import duckdb

    schemas = [pq.read_schema(p) for p in parts]
    schema = pa.unify_schemas(schemas, promote_options="permissive").with_metadata(schemas[0].metadata)
    files = ", ".join(literal(str(p)) for p in parts)
    memory = duckdb_memory_mb(settings.data_memory_gib)
    spill = path.parent / ".spill"
    con = duckdb.connect(config={"memory_limit": f"{memory}MB", "temp_directory": str(spill)})
    try:
        query = (
            f"SELECT * FROM read_parquet([{files}], union_by_name = true) "
            f"ORDER BY {identifier(DECIDED_AT)}, {identifier(DECISION_ID)}"
        )
        reader = con.sql(query).to_arrow_reader(ROW_GROUP_ROWS)
        with pq.ParquetWriter(path, schema) as writer:
            for batch in reader:
                columns = [_typed(batch.column(f.name), f.type) for f in schema]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    written = TrainingSet(path, open_window)
    if len(written) != rows:
        raise RuntimeError(f"training set: {len(written)} rows written for {rows} labelled decisions")
    return written


def _typed(column: pa.Array, kind: pa.DataType) -> pa.Array:
    """A column DuckDB read back, as the parts had it (a column null in every part stays null)."""
    return pa.nulls(len(column), kind) if pa.types.is_null(kind) else column.cast(kind)


def _entity_rows(customer: pd.Series, decided_at: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(entity row of each decision, first decision of each entity row) for the distinct (customer,
    time) pairs, numbered by customer then time so that a slice of entity rows is a customer range."""
    cust = pd.factorize(customer, sort=True)[0]
    when = decided_at.array.asi8
    order = np.lexsort((when, cust))
    c, t = cust[order], when[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (c[1:] != c[:-1]) | (t[1:] != t[:-1])
    entity_of = np.empty(len(order), dtype=np.int64)
    entity_of[order] = np.cumsum(new) - 1
    return entity_of, order[new]


def _historical_features(settings: Settings, entity_df: pd.DataFrame) -> Iterator[tuple[int, pa.Table]]:
    """``get_historical_features`` on the FeatureService, ``ENTITY_ROWS_PER_QUERY`` entity rows at a time:
    (first entity row, its answer) for each slice in turn.

    Feast's point-in-time join is a range join plus a window over every snapshot inside the TTL of
    every entity row; in slices its peak memory stays bounded. It runs on a DuckDB connection of its
    own, closed afterwards: ibis registers each entity frame with the connection until the process
    exits, so the shared default one would keep every frame it was ever given.
    """
    import ibis

    store = open_store(settings)
    service = store.get_feature_service(settings.feature_service)
    previous = ibis.options.default_backend
    # Rows are matched by ENTITY_ROW, not order; DuckDB keeps to the data budget, spilling beyond it.
    spill = settings.data_dir / "tmp" / f"feast-spill-{uuid.uuid4().hex[:12]}"
    memory = duckdb_memory_mb(settings.data_memory_gib)
    spill.mkdir(parents=True)
    con = ibis.duckdb.connect(preserve_insertion_order=False, memory_limit=f"{memory}MB", temp_directory=str(spill))
    ibis.options.default_backend = con
    try:
        for lo in range(0, max(len(entity_df), 1), ENTITY_ROWS_PER_QUERY):  # an empty frame is asked once
            entity = entity_df.iloc[lo : lo + ENTITY_ROWS_PER_QUERY]
            yield lo, store.get_historical_features(entity_df=entity, features=service).to_arrow()
    finally:
        ibis.options.default_backend = previous
        con.disconnect()
        shutil.rmtree(spill, ignore_errors=True)
