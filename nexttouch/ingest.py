"""`nexttouch ingest DIR`: validate a brand's tables and load the good rows; quarantine the rest.

Tables (parquet or CSV, any subset): identity, customers, events, decisions — loaded in that
order because events resolve through the identity map and decisions must name known customers.
Every rejected row goes to ``data/quarantine/<table>-<input hash>.csv`` with its reason; good rows
are merged into ``data/raw/<table>.parquet``. A row that is already loaded unchanged counts as
"already loaded", so running the same input twice changes nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from nexttouch.catalog import Catalog
from nexttouch.parquet import write_parquet
from nexttouch.schemas import (
    ACTION,
    CLOCK_SKEW,
    CUSTOMER_ID,
    DECIDED_AT,
    DECISION_ID,
    OUTCOME,
    PROPENSITY,
    TOUCH_TYPES,
)
from nexttouch.settings import Settings

TABLES = ("identity", "customers", "events", "decisions")
KEYS = {
    "identity": ["source_system", "source_key"],
    "customers": [CUSTOMER_ID],
    "events": ["event_id"],
    "decisions": [DECISION_ID],
}
# Personal data never enters nexttouch: such columns are refused, loudly, not loaded.
PII_NAMES = re.compile(r"(^|_)(name|first_?name|last_?name|e_?mail|phone|mobile|address|birth_?date)($|_)", re.I)
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[a-z]{2,}", re.I)
PHONE = re.compile(r"^\+?[\d\s().-]{9,}$")


@dataclass
class TableReport:
    table: str
    rows: int = 0
    loaded: int = 0
    already_loaded: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    refused_columns: dict[str, str] = field(default_factory=dict)
    quarantine: Path | None = None


def summary(reports: list[TableReport]) -> list[str]:
    """Counts per table and per rejection reason, as printed by `ingest` and the demo."""
    lines = []
    for r in reports:
        lines.append(
            f"{r.table:<10} {r.rows:>10,} rows: {r.loaded:,} loaded, {r.already_loaded:,} already loaded, "
            f"{sum(r.rejected.values()):,} rejected"
        )
        lines.extend(f"{'':<13}{n:>10,}  {reason}" for reason, n in sorted(r.rejected.items()))
        lines.extend(f"{'':<13}column {c!r} refused: {why}" for c, why in r.refused_columns.items())
        if r.quarantine:
            lines.append(f"{'':<13}quarantine: {r.quarantine}")
    return lines


class IngestError(ValueError):
    """A whole input file is unusable (unreadable, or a required column is missing)."""


def ingest(settings: Settings, catalog: Catalog, source: Path, now: datetime | None = None) -> list[TableReport]:
    """Validate and load every table found in ``source``; returns one report per table."""
    now = now or datetime.now(UTC)
    found = {t: _find(source, t) for t in TABLES}
    if not any(found.values()):
        raise IngestError(f"no tables in {source}: expected any of {', '.join(f'{t}.parquet|csv' for t in TABLES)}")
    settings.raw_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    for table in TABLES:
        paths = found[table]
        if not paths:
            continue
        frame = pd.concat([_read(p) for p in paths], ignore_index=True)
        report = TableReport(table, rows=len(frame))
        existing = _load(settings, table)
        validate = _VALIDATORS[table]
        good, rejected = validate(frame, settings, catalog, pd.Timestamp(now) + CLOCK_SKEW, report)
        merged, new, same, conflicts = _merge(existing, good, KEYS[table], table)
        rejected = pd.concat([rejected, conflicts], ignore_index=True)
        report.loaded, report.already_loaded = new, same
        report.rejected = rejected["reason"].value_counts().to_dict() if len(rejected) else {}
        if len(rejected):
            report.quarantine = _quarantine(settings, table, paths, rejected)
        if new:
            _store(settings, table, merged)
        reports.append(report)
    return reports


def _find(source: Path, table: str) -> list[Path]:
    """``<table>.parquet|csv`` and any ``<table>-*.parquet|csv`` parts (e.g. the service's inbox)."""
    return sorted(
        p
        for pattern in (f"{table}.parquet", f"{table}.csv", f"{table}-*.parquet", f"{table}-*.csv")
        for p in source.glob(pattern)
    )


def _read(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".csv":
            # Everything as text: types are checked per row below, so a bad cell rejects one row.
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
        return pd.read_parquet(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise IngestError(f"cannot read {path}: {exc}") from exc


def _require(frame: pd.DataFrame, columns: list[str], table: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise IngestError(f"{table}: missing required columns {missing}")


class _Reasons:
    """The first failing reason of each row."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.arrived = frame.copy()  # quarantine keeps each row as it arrived
        self.reason = pd.Series(None, index=frame.index, dtype=object)

    def flag(self, mask: pd.Series | np.ndarray, reason: str) -> None:
        self.reason[np.asarray(mask, dtype=bool) & self.reason.isna().to_numpy()] = reason

    def missing(self, columns: list[str]) -> None:
        for col in columns:
            text = self.frame[col].astype("string").str.strip()
            self.flag(text.isna() | (text == ""), f"missing {col}")

    def split(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        bad = self.reason.notna()
        rejected = self.arrived.loc[bad].astype("string").assign(reason=self.reason[bad])
        return self.frame.loc[~bad], rejected


def _ids(column: pd.Series) -> pd.Series:
    return column.astype("string").str.strip().astype(object)


def _timestamp(frame: pd.DataFrame, col: str, reasons: _Reasons, latest: pd.Timestamp) -> None:
    """Parse to UTC (naive times are taken as UTC); reject unparsable and future times."""
    raw = frame[col]
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        parsed = raw.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(raw):
        parsed = raw.dt.tz_localize("UTC")
    else:
        parsed = pd.to_datetime(raw.astype("string"), utc=True, errors="coerce", format="ISO8601")
    reasons.flag(parsed.isna() & raw.notna(), f"unparsable {col}")
    reasons.flag(parsed > latest, f"{col} in the future")
    frame[col] = parsed.astype("datetime64[us, UTC]")


def _number(frame: pd.DataFrame, col: str, reasons: _Reasons) -> pd.Series:
    raw = frame[col] if col in frame else pd.Series(np.nan, index=frame.index)
    parsed = pd.to_numeric(raw, errors="coerce").astype(float)
    reasons.flag(parsed.isna() & raw.notna(), f"unparsable {col}")
    frame[col] = parsed
    return parsed


def _validate_identity(frame, settings, catalog, latest, report) -> tuple[pd.DataFrame, pd.DataFrame]:
    _require(frame, KEYS["identity"] + [CUSTOMER_ID], "identity")
    frame = frame[["source_system", "source_key", CUSTOMER_ID]].copy()
    r = _Reasons(frame)
    r.missing(["source_system", "source_key", CUSTOMER_ID])
    for col in frame:
        frame[col] = _ids(frame[col])
    per_key = frame.groupby(["source_system", "source_key"], dropna=False)[CUSTOMER_ID].transform("nunique")
    r.flag(per_key > 1, "source key maps to several customers")
    good, rejected = r.split()
    return good.drop_duplicates(), rejected


def _validate_customers(frame, settings, catalog, latest, report) -> tuple[pd.DataFrame, pd.DataFrame]:
    _require(frame, [CUSTOMER_ID, "signup_at"], "customers")
    frame = frame.copy()
    for col in list(frame.columns):
        why = _personal_data(frame[col]) if col not in (CUSTOMER_ID, "signup_at") else None
        if why:
            report.refused_columns[col] = why
            frame = frame.drop(columns=col)
    r = _Reasons(frame)
    r.missing([CUSTOMER_ID])
    frame[CUSTOMER_ID] = _ids(frame[CUSTOMER_ID])
    _timestamp(frame, "signup_at", r, latest)
    r.flag(frame["signup_at"].isna(), "missing signup_at")
    r.flag(frame.duplicated(CUSTOMER_ID, keep="first"), "duplicate customer_id")
    # Profile columns: numbers stay numbers, anything else is a category (text).
    for col in frame.columns.difference([CUSTOMER_ID, "signup_at"]):
        numeric = pd.to_numeric(frame[col], errors="coerce")
        if numeric.notna().sum() == frame[col].notna().sum():
            frame[col] = numeric.astype(float) if (numeric % 1).fillna(0).any() else numeric.astype("Int64")
        else:
            frame[col] = _ids(frame[col])
    return r.split()


def _personal_data(column: pd.Series) -> str | None:
    if PII_NAMES.search(str(column.name)):
        return "column name suggests personal data"
    if pd.api.types.is_numeric_dtype(column):
        return None
    sample = column.dropna().astype(str).head(1000)
    if len(sample) and (sample.str.fullmatch(EMAIL.pattern, case=False).mean() > 0.2):
        return "values look like e-mail addresses"
    if len(sample) and (sample.str.fullmatch(PHONE.pattern).mean() > 0.2):
        return "values look like phone numbers"
    return None


def _validate_events(frame, settings, catalog, latest, report) -> tuple[pd.DataFrame, pd.DataFrame]:
    _require(frame, ["event_id", "occurred_at", "source_system", "source_key", "touch_type"], "events")
    frame = frame.copy()
    r = _Reasons(frame)
    r.missing(["event_id", "source_system", "source_key", "touch_type"])
    for col in ("event_id", "source_system", "source_key", "touch_type"):
        frame[col] = _ids(frame[col])
    known = frame["touch_type"].isin(list(TOUCH_TYPES))
    r.flag(~known, "unknown touch type")
    for col, attr in (("tier", "tier"), ("direction", "direction")):
        derived = frame["touch_type"].map({n: getattr(t, attr) for n, t in TOUCH_TYPES.items()})
        if col in frame:
            given = _ids(frame[col])
            r.flag(given.notna() & known & (given != derived), f"{col} does not match touch type")
        frame[col] = derived
    _timestamp(frame, "occurred_at", r, latest)
    r.flag(frame["occurred_at"].isna(), "missing occurred_at")
    _number(frame, "amount", r)
    frame[DECISION_ID] = _ids(frame[DECISION_ID]) if DECISION_ID in frame else None
    identity = _load(settings, "identity")
    resolved = frame[["source_system", "source_key"]].merge(
        identity if identity is not None else pd.DataFrame(columns=["source_system", "source_key", CUSTOMER_ID]),
        on=["source_system", "source_key"],
        how="left",
    )
    frame[CUSTOMER_ID] = resolved[CUSTOMER_ID].to_numpy()
    r.flag(frame[CUSTOMER_ID].isna(), "unresolvable source key")
    r.flag(frame.duplicated("event_id", keep="first"), "duplicate event_id")
    good, rejected = r.split()
    columns = ["event_id", "occurred_at", "source_system", "source_key", "touch_type", "tier", "direction"]
    return good[[*columns, "amount", DECISION_ID, CUSTOMER_ID]], rejected


def _validate_decisions(frame, settings, catalog, latest, report) -> tuple[pd.DataFrame, pd.DataFrame]:
    _require(frame, [DECISION_ID, CUSTOMER_ID, DECIDED_AT, ACTION, PROPENSITY], "decisions")
    frame = frame.copy()
    r = _Reasons(frame)
    r.missing([DECISION_ID, CUSTOMER_ID, ACTION])
    for col in (DECISION_ID, CUSTOMER_ID, ACTION):
        frame[col] = _ids(frame[col])
    customers = _load(settings, "customers")
    known = set() if customers is None else set(customers[CUSTOMER_ID])
    r.flag(~frame[CUSTOMER_ID].isin(known), "unknown customer_id")
    _timestamp(frame, DECIDED_AT, r, latest)
    r.flag(frame[DECIDED_AT].isna(), f"missing {DECIDED_AT}")
    r.flag(~frame[ACTION].isin(catalog.names), "action not in catalog")
    p = _number(frame, PROPENSITY, r)
    r.flag(~((p > 0) & (p <= 1)), "propensity outside (0, 1]")
    y = _number(frame, OUTCOME, r)
    r.flag(y.notna() & ~y.isin([0.0, 1.0]), "outcome not 0 or 1")
    r.flag(frame.duplicated(DECISION_ID, keep="first"), "duplicate decision_id")
    good, rejected = r.split()
    return good[[DECISION_ID, CUSTOMER_ID, DECIDED_AT, ACTION, PROPENSITY, OUTCOME]], rejected


_VALIDATORS: dict[str, Callable[..., tuple[pd.DataFrame, pd.DataFrame]]] = {
    "identity": _validate_identity,
    "customers": _validate_customers,
    "events": _validate_events,
    "decisions": _validate_decisions,
}


def _merge(
    existing: pd.DataFrame | None, good: pd.DataFrame, keys: list[str], table: str
) -> tuple[pd.DataFrame, int, int, pd.DataFrame]:
    """Existing rows + new rows. Returns (merged, new, unchanged, conflicting rows with reasons).

    A key seen before with the same content is unchanged. With other content: a decision whose
    outcome was unknown takes the new outcome, a customer takes the new profile; any other change
    is a conflict and is quarantined.
    """
    no_rejects = good.iloc[:0].astype("string").assign(reason=pd.Series(dtype=object))
    if existing is None or existing.empty:
        return good.reset_index(drop=True), len(good), 0, no_rejects
    good = good.reset_index(drop=True)
    seen = good.set_index(keys).index.isin(existing.set_index(keys).index)
    fresh, overlap = good.loc[~seen], good.loc[seen]
    if overlap.empty:
        return pd.concat([existing, fresh], ignore_index=True), len(fresh), 0, no_rejects
    old = existing.set_index(keys).loc[overlap.set_index(keys).index].reset_index()
    cols = [c for c in overlap.columns if c in old.columns]
    same = _rows_equal(overlap[cols].reset_index(drop=True), old[cols].reset_index(drop=True))
    changed = overlap.loc[~same.to_numpy()]
    if table == "decisions":
        old_changed = old.loc[~same.to_numpy()]
        updatable = (
            old_changed[OUTCOME].isna().to_numpy()
            & _rows_equal(
                changed.drop(columns=OUTCOME).reset_index(drop=True),
                old_changed.drop(columns=OUTCOME).reset_index(drop=True),
            ).to_numpy()
        )
    elif table == "customers":
        updatable = np.ones(len(changed), dtype=bool)
    else:
        updatable = np.zeros(len(changed), dtype=bool)
    updates, conflicts = changed.loc[updatable], changed.loc[~updatable]
    kept = existing.loc[~existing.set_index(keys).index.isin(updates.set_index(keys).index)]
    merged = pd.concat([kept, updates, fresh], ignore_index=True)
    rejected = conflicts.astype("string").assign(reason=f"{'/'.join(keys)} already loaded with other values")
    return merged, len(fresh) + len(updates), int(same.sum()), rejected


def _rows_equal(a: pd.DataFrame, b: pd.DataFrame) -> pd.Series:
    both_na = a.isna() & b.isna()
    return ((a == b) | both_na).all(axis=1)


def _load(settings: Settings, table: str) -> pd.DataFrame | None:
    path = settings.raw_dir / f"{table}.parquet"
    return pd.read_parquet(path) if path.exists() else None


def _store(settings: Settings, table: str, frame: pd.DataFrame) -> None:
    write_parquet(frame, settings.raw_dir / f"{table}.parquet")


def _quarantine(settings: Settings, table: str, sources: list[Path], rejected: pd.DataFrame) -> Path:
    """Rejected rows with their reason; named by the input's content, so a re-run rewrites it."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.read_bytes())
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    path = settings.quarantine_dir / f"{table}-{digest.hexdigest()[:12]}.csv"
    rejected.to_csv(path, index=False)
    return path
