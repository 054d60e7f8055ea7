"""`nexttouch ingest DIR`: validate a brand's tables and load the good rows; quarantine the rest.

Tables (parquet or CSV, any subset): identity, customers, events, decisions — loaded in that
order because events resolve through the identity map and decisions must name known customers.
Every rejected row goes to ``data/quarantine/<table>-<input hash>.csv`` with its reason; good rows
are merged into ``data/raw/<table>.parquet``. A row that is already loaded unchanged counts as
"already loaded", so running the same input twice changes nothing.

Ids (event, customer, decision ids, source keys) are opaque: one that holds personal data (an e-mail
address, a phone number; nexttouch/personal_data.py) is quarantined with that value removed, one with
other characters than the API allows (``=HYPERLINK(...)``) is quarantined. Quarantine files are CSV
for people: cells that a spreadsheet would run as a formula are written as text (nexttouch/spreadsheet.py).

A file that cannot be used at all (not parquet/CSV, truncated, a required column missing) is
copied to the quarantine with its reason and reported; the other files still load and the CLI
exits non-zero. CSV is UTF-8 (UTF-16 and UTF-8 with a byte-order mark are read as such); a row
that is not valid UTF-8 (e.g. latin-1) is quarantined, never loaded as mojibake. Text columns
stay arrow strings (no Python object per cell) and every check is vectorised: 50M events fit.

A table bigger than the memory budget (``settings.data_memory_gib``) is split by a hash of its key
(``nexttouch.partitions``), the loaded rows too, and each partition is validated and merged whole by
the same code: every check across rows (duplicates, a source key's customers, what is already
loaded) compares rows of one key, so it holds within a partition. Customers are read whole.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import csv

from nexttouch import personal_data
from nexttouch.api import ID_PATTERN
from nexttouch.blanks import BLANKS, edge_blank
from nexttouch.catalog import Catalog
from nexttouch.key_index import KeyIndex, key_hash
from nexttouch.parquet import PartWriter, write_parquet
from nexttouch.partitions import parquet_bytes, partition_count, read_partition, run, split
from nexttouch.schemas import (
    ACTION,
    CLOCK_SKEW,
    CUSTOMER_ID,
    DECIDED_AT,
    DECISION_ID,
    DIRECTIONS,
    OUTCOME,
    PROPENSITY,
    SIGNUP_AT,
    TIERS,
    TOUCH_TYPES,
)
from nexttouch.settings import Settings
from nexttouch.spreadsheet import safe_text
from nexttouch.touches import codes

TABLES = ("identity", "customers", "events", "decisions")
KEYS = {
    "identity": ["source_system", "source_key"],
    "customers": [CUSTOMER_ID],
    "events": ["event_id"],
    "decisions": [DECISION_ID],
}
REQUIRED = {
    "identity": ["source_system", "source_key", CUSTOMER_ID],
    "customers": [CUSTOMER_ID],  # SIGNUP_AT is optional: without it there is no tenure feature
    "events": ["event_id", "occurred_at", "source_system", "source_key", "touch_type"],
    "decisions": [DECISION_ID, CUSTOMER_ID, DECIDED_AT, ACTION, PROPENSITY],
}
TYPE_NAMES = list(TOUCH_TYPES)
# Personal data never enters nexttouch: such columns are refused, loudly, not loaded.
PII_NAMES = re.compile(r"(^|_)(name|first_?name|last_?name|e_?mail|phone|mobile|address|birth_?date)($|_)", re.I)
REMOVED = "[removed: personal data]"  # what the quarantine shows instead of a value that holds personal data
API_SYSTEM = "api"  # source system of events the service was sent by customer id (source key = customer id)
BYTES_PER_INPUT_BYTE = 12  # working memory of validating and merging, per uncompressed byte of input
WHOLE = frozenset({"customers"})  # read whole: which profile columns hold personal data is decided on all rows


@dataclass
class TableReport:
    table: str
    rows: int = 0
    loaded: int = 0
    already_loaded: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    refused_columns: dict[str, str] = field(default_factory=dict)
    quarantine: Path | None = None
    failed_files: dict[Path, str] = field(default_factory=dict)  # unusable file -> why (copied to quarantine)


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
        lines.extend(f"{'':<13}file not loaded: {path.name}: {why}" for path, why in r.failed_files.items())
    return lines


class IngestError(ValueError):
    """An input file (or the whole input) is unusable: unreadable, or a required column is missing."""


def ingest(settings: Settings, catalog: Catalog, source: Path, now: datetime | None = None) -> list[TableReport]:
    """Validate and load every table found in ``source``; returns one report per table."""
    now = now or datetime.now(UTC)
    found = {t: _find(source, t) for t in TABLES}
    if not any(found.values()):
        raise IngestError(f"no tables in {source}: expected any of {', '.join(f'{t}.parquet|csv' for t in TABLES)}")
    settings.raw_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    try:
        for table in TABLES:
            if found[table]:
                reports.append(_ingest_table(settings, catalog, table, found[table], now))
    finally:
        _identity_cached.cache_clear()
        _customers_cached.cache_clear()
    return reports


def _ingest_table(settings: Settings, catalog: Catalog, table: str, paths: list[Path], now: datetime) -> TableReport:
    report = TableReport(table)
    parts = _partitions(settings, table, paths)
    if parts > 1:
        _ingest_partitions(settings, catalog, table, paths, parts, now, report)
        return report
    frames = []
    for path in paths:
        try:
            frames.append(_read(path, table))
        except IngestError as exc:
            report.failed_files[path] = str(exc)
            _quarantine_file(settings, table, path, str(exc))
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True) if frames else None
    if frame is None:
        return report
    del frames
    report.rows = len(frame)
    existing = _load(settings, table)
    validate = _VALIDATORS[table]
    good, rejected = validate(frame, settings, catalog, pd.Timestamp(now) + CLOCK_SKEW, report)
    del frame
    merged, new, same, conflicts = _merge(existing, good, KEYS[table], table)
    rejected = pd.concat([rejected, conflicts], ignore_index=True) if len(conflicts) else rejected
    report.loaded, report.already_loaded = new, same
    _report_rejected(settings, table, paths, report, rejected)
    if new:
        _store(settings, table, merged)
    return report


def _report_rejected(
    settings: Settings, table: str, paths: list[Path], report: TableReport, rejected: pd.DataFrame
) -> None:
    report.rejected = rejected["reason"].value_counts().to_dict() if len(rejected) else {}
    if len(rejected):
        loaded_paths = [p for p in paths if p not in report.failed_files]
        report.quarantine = _quarantine(settings, table, loaded_paths, rejected)


def _partitions(settings: Settings, table: str, paths: list[Path]) -> int:
    """How many key partitions ``table`` is validated in: 1 (all at once) unless it outgrows the budget."""
    if table in WHOLE:
        return 1
    loaded = settings.raw_dir / f"{table}.parquet"
    try:
        size = sum(parquet_bytes([p]) if p.suffix == ".parquet" else 2 * p.stat().st_size for p in paths)
        size += parquet_bytes([loaded]) if loaded.exists() else 0
    except (OSError, pa.ArrowException):  # an unreadable file: reported by the whole-table path
        return 1
    return partition_count(size * BYTES_PER_INPUT_BYTE, settings)


def _ingest_partitions(
    settings: Settings, catalog: Catalog, table: str, paths: list[Path], parts: int, now: datetime, report: TableReport
) -> None:
    """``table`` validated and merged key partition by key partition; the loaded file written as they go."""
    work = settings.data_dir / "tmp" / f"ingest-{table}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    loaded = settings.raw_dir / f"{table}.parquet"
    writer = PartWriter(loaded, KEYS[table])
    try:
        inputs = []
        for i, path in enumerate(paths):
            try:
                inputs.append(_readable(path, table, work / f"input-{i}.parquet"))
            except IngestError as exc:
                report.failed_files[path] = str(exc)
                _quarantine_file(settings, table, path, str(exc))
        if not inputs:
            return
        schema = pa.unify_schemas([pq.read_schema(p) for p in inputs], promote_options="permissive")
        report.rows = sum(pq.read_metadata(p).num_rows for p in inputs)
        memory = settings.data_memory_gib
        at_once = settings.data_workers
        arrived = split(inputs, KEYS[table], parts, work / "input", memory, workers=at_once)
        before = (
            split([loaded], KEYS[table], parts, work / "loaded", memory, workers=at_once) if loaded.exists() else None
        )
        loaded_schema = pq.read_schema(loaded) if before else None
        tasks = [
            (settings, catalog, table, arrived[k], schema, before[k] if before else [], loaded_schema, now)
            for k in range(parts)
        ]
        if not settings.dask_scheduler:
            _build_lookups(settings, table)
        rejected = []
        for rows, bad, new, same in run(settings, ingest_partition, tasks):
            rejected.extend(r for r in bad if len(r))
            report.loaded, report.already_loaded = report.loaded + new, report.already_loaded + same
            if rows.num_rows:
                writer.write(rows)
            del rows
        no_rejects = pd.DataFrame({"reason": pd.Series(dtype=object)})
        _report_rejected(
            settings, table, paths, report, pd.concat(rejected, ignore_index=True) if rejected else no_rejects
        )
        if report.loaded:
            writer.close()
    finally:
        writer.abort()  # nothing new loaded, or stopped: the loaded file stays as it was
        shutil.rmtree(work, ignore_errors=True)


def ingest_partition(
    settings: Settings,
    catalog: Catalog,
    table: str,
    arrived: list[Path],
    schema: pa.Schema,
    loaded: list[Path],
    loaded_schema: pa.Schema | None,
    now: datetime,
) -> tuple[pa.Table, list[pd.DataFrame], int, int]:
    """One key partition validated and merged with its loaded rows: (rows to keep, rejected rows, new, unchanged).

    The one function both engines run on every partition (``nexttouch.partitions.run``).
    """
    frame = _from_arrow(read_partition(arrived, schema))
    existing = _from_arrow(read_partition(loaded, loaded_schema)) if loaded_schema is not None else None
    good, bad = _VALIDATORS[table](frame, settings, catalog, pd.Timestamp(now) + CLOCK_SKEW, TableReport(table))
    del frame
    merged, new, same, conflicts = _merge(existing, good, KEYS[table], table)
    rows = pa.Table.from_pandas(_microseconds(merged), preserve_index=False)
    return rows, [bad, conflicts], new, same


def _readable(path: Path, table: str, converted: Path) -> Path:
    """A parquet file of the input that can be split: ``path`` itself, or a CSV converted (text) to ``converted``."""
    if path.suffix == ".csv":
        frame = _read(path, table)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), converted)
        return converted
    try:
        schema = pq.read_schema(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise IngestError(f"cannot read {path.name}: {exc}") from exc
    _require(schema.empty_table().to_pandas(), REQUIRED[table], table)
    return path


def _microseconds(frame: pd.DataFrame) -> pd.DataFrame:
    stamps = [c for c in frame.columns if isinstance(frame[c].dtype, pd.DatetimeTZDtype)]
    return frame.astype(dict.fromkeys(stamps, "datetime64[us, UTC]"))


def _find(source: Path, table: str) -> list[Path]:
    """``<table>.parquet|csv`` and any ``<table>-*.parquet|csv`` parts (e.g. the service's inbox)."""
    return sorted(
        p
        for pattern in (f"{table}.parquet", f"{table}.csv", f"{table}-*.parquet", f"{table}-*.csv")
        for p in source.glob(pattern)
    )


def _read(path: Path, table: str) -> pd.DataFrame:
    """One input file as a frame with arrow-backed text columns; ``IngestError`` if it is unusable."""
    try:
        frame = _read_csv(path) if path.suffix == ".csv" else _from_arrow(pq.read_table(path))
    except (OSError, ValueError, UnicodeError, pa.ArrowException) as exc:
        raise IngestError(f"cannot read {path.name}: {exc}") from exc
    _require(frame, REQUIRED[table], table)
    return frame


_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
NOT_UTF8 = "not valid UTF-8 text (wrong file encoding?)"
_NOT_UTF8_ROW = "_not_utf8"  # marks such rows from reading to validation (never loaded)


def _read_csv(path: Path) -> pd.DataFrame:
    """Everything as text: types are checked per row later, so a bad cell rejects one row.

    A file that is not valid UTF-8 is read with the bad bytes as surrogate escapes; its rows that
    hold any are marked (``_Reasons`` quarantines them, shown as latin-1) and the rest load.
    """
    with path.open("rb") as f:
        head = f.read(4)
    encoding = next((enc for bom, enc in _BOMS if head.startswith(bom)), "utf-8")
    options = {"keep_default_na": False, "na_values": [""], "encoding": encoding}
    try:
        return _trim_header(pd.read_csv(path, dtype="string[pyarrow]", **options))
    except UnicodeDecodeError:
        if encoding != "utf-8":
            raise
    frame = _trim_header(pd.read_csv(path, dtype=object, encoding_errors="surrogateescape", **options))
    bad = np.zeros(len(frame), bool)
    for col in frame.columns:
        hit = frame[col].str.contains("[\udc80-\udcff]", regex=True, na=False).to_numpy(dtype=bool)
        frame.loc[hit, col] = frame.loc[hit, col].map(_as_latin1)
        bad |= hit
    frame = frame.astype("string[pyarrow]")
    frame[_NOT_UTF8_ROW] = bad
    return frame


def _as_latin1(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def _trim_header(frame: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(frame.index, pd.RangeIndex):  # pandas took extra leading fields as an index
        raise ValueError("rows have more fields than the header")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _from_arrow(table: pa.Table) -> pd.DataFrame:
    """Text as ``string[pyarrow]`` (dictionary text decoded), the rest as pandas makes it.

    Column by column, each dropped from the arrow table once converted: one copy at a time.
    """
    columns = {}
    for name in table.column_names:
        col = table.column(name)
        table = table.drop_columns([name])
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_string_view(col.type):
            columns[name] = pd.Series(pd.arrays.ArrowStringArray(pc.cast(col, pa.large_string())))
        else:
            columns[name] = pa.table({name: col}).to_pandas(ignore_metadata=True)[name]
        del col
    return pd.DataFrame(columns)


def _require(frame: pd.DataFrame, columns: list[str], table: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise IngestError(f"{table}: missing required columns {missing}")


class _Reasons:
    """The first failing reason of each row, as a small code per row (vectorised at 50M rows)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        bad_text = frame.pop(_NOT_UTF8_ROW).fillna(False).to_numpy(bool) if _NOT_UTF8_ROW in frame else None
        self.frame = frame
        # Quarantine keeps each row as it arrived (validators replace columns, never mutate them).
        self.arrived = frame.copy(deep=False)
        self.code = np.zeros(len(frame), np.int16)
        self.reasons = [""]
        if bad_text is not None:
            self.flag(bad_text, NOT_UTF8)

    def flag(self, mask: pd.Series | np.ndarray, reason: str) -> None:
        hit = np.asarray(mask, dtype=bool) & (self.code == 0)
        if hit.any():
            if reason not in self.reasons:
                self.reasons.append(reason)
            self.code[hit] = self.reasons.index(reason)

    def missing(self, columns: list[str]) -> None:
        """Flag empty ``columns`` (already passed through ``_ids``)."""
        for col in columns:
            self.flag(self.frame[col].isna().to_numpy(), f"missing {col}")

    def split(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        bad = self.code > 0
        if not bad.any():  # the usual case: no copy of a 50M-row frame
            return self.frame, self.arrived.iloc[:0].astype("string[pyarrow]").assign(reason=pd.Series(dtype=object))
        rejected = self.arrived.loc[bad].astype("string[pyarrow]")
        rejected["reason"] = np.array(self.reasons, dtype=object)[self.code[bad]]
        return self.frame.loc[~bad], rejected


def _ids(column: pd.Series) -> pd.Series:
    """Identifiers and codes as arrow strings trimmed of blanks; empty means missing. Copies only when it must."""
    text = column if column.dtype == "string[pyarrow]" else column.astype("string[pyarrow]")
    if edge_blank(_arrow(text)):
        text = text.str.strip(BLANKS)
    empty = (text == "").fillna(False).to_numpy(bool)
    return text.where(~empty) if empty.any() else text


def _hash_twins(columns: list[pa.Array]) -> np.ndarray:
    """Rows whose key (its parts ``columns``, none missing) has the 64-bit hash of another such row's key: every
    row of a key given more than once, and (rarely) a row whose distinct key shares its hash.

    Usually none, which sorting the hashes shows at a third of the cost of numbering the text.
    """
    hashes = key_hash(columns)
    present = np.ones(len(hashes), bool)
    for column in columns:
        if column.null_count:
            present &= column.is_valid().to_numpy(zero_copy_only=False)
    ordered = np.sort(hashes[present])
    shared = ordered[1:][ordered[1:] == ordered[:-1]]
    return present & np.isin(hashes, shared) if len(shared) else np.zeros(len(hashes), bool)


def _duplicated(frame: pd.DataFrame, column: str) -> np.ndarray:
    """Later rows whose ``column`` value came before.

    Usually no two values share a hash (``_hash_twins``), and there are none. Otherwise values are numbered
    in order of first appearance, so a row repeats an earlier value exactly when its number is not above
    every number before it: one hash pass and a running maximum.
    """
    if not _hash_twins([_arrow(frame[column])]).any():  # equal values would have equal hashes
        return np.zeros(len(frame), bool)
    codes = pd.factorize(frame[column])[0]
    highest_before = np.maximum.accumulate(np.concatenate([[-1], codes[:-1]]))
    return (codes >= 0) & (codes <= highest_before)


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
    frame = frame[[c for c in (*REQUIRED["identity"], _NOT_UTF8_ROW) if c in frame]].copy(deep=False)
    r = _Reasons(frame)
    for col in REQUIRED["identity"]:
        frame[col] = _ids(frame[col])
    r.missing(REQUIRED["identity"])
    _opaque(frame, REQUIRED["identity"], r)
    # Every row of a key given more than once shares its hash with another: only those rows are grouped
    # (a row with a part of its key missing is already rejected as such).
    repeated = _hash_twins([_arrow(frame[c]) for c in ("source_system", "source_key")])
    several, again = np.zeros(len(frame), bool), np.zeros(len(frame), bool)
    if repeated.any():
        twins = frame.loc[repeated]
        per_key = twins.groupby(["source_system", "source_key"], dropna=False)[CUSTOMER_ID].transform("nunique")
        several[repeated], again[repeated] = per_key.to_numpy() > 1, twins.duplicated().to_numpy()
    r.flag(several, "source key maps to several customers")
    good, rejected = r.split()
    # A row given again is dropped; it and its first are both loaded or both rejected (same checks, same key).
    again = again[r.code == 0]
    return (good.loc[~again] if again.any() else good), rejected


def _validate_customers(frame, settings, catalog, latest, report) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = frame.copy(deep=False)
    for col in list(frame.columns):
        why = _personal_data(frame[col]) if col not in (CUSTOMER_ID, SIGNUP_AT, _NOT_UTF8_ROW) else None
        if why:
            report.refused_columns[col] = why
            frame = frame.drop(columns=col)
    r = _Reasons(frame)
    frame[CUSTOMER_ID] = _ids(frame[CUSTOMER_ID])
    r.missing([CUSTOMER_ID])
    _opaque(frame, [CUSTOMER_ID], r)
    if SIGNUP_AT in frame:  # a brand that has the column gives it for every customer
        _timestamp(frame, SIGNUP_AT, r, latest)
        r.flag(frame[SIGNUP_AT].isna(), f"missing {SIGNUP_AT}")
    r.flag(_duplicated(frame, CUSTOMER_ID), "duplicate customer_id")
    # Profile columns: numbers stay numbers, anything else is a category (text).
    for col in frame.columns.difference([CUSTOMER_ID, SIGNUP_AT]):
        numeric = _all_numbers(frame[col])
        if numeric is not None:
            frame[col] = numeric.astype(float) if (numeric % 1).fillna(0).any() else numeric.astype("Int64")
        else:
            frame[col] = _ids(frame[col])
    return r.split()


def _all_numbers(column: pd.Series, head: int = 1000) -> pd.Series | None:
    """The column as numbers if every value given is one, else None; text that is not is found in its head."""
    start = column.iloc[:head]
    if pd.to_numeric(start, errors="coerce").notna().sum() < start.notna().sum():
        return None
    numeric = pd.to_numeric(column, errors="coerce")
    return numeric if numeric.notna().sum() == column.notna().sum() else None


def _personal_data(column: pd.Series) -> str | None:
    if PII_NAMES.search(str(column.name)):
        return "column name suggests personal data"
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return None
    kinds = column.dropna().head(1000).astype(str).map(personal_data.find)
    if len(kinds) and (kinds == "an e-mail address").mean() > 0.2:
        return "values look like e-mail addresses"
    if len(kinds) and (kinds == "a phone number").mean() > 0.2:
        return "values look like phone numbers"
    return None


def _opaque(frame: pd.DataFrame, columns: list[str], reasons: _Reasons, among: np.ndarray | None = None) -> None:
    """Flag ids that hold personal data (shown removed in the quarantine) or characters an id never has.

    ``among``: the rows to check, when the others are known to be loaded ids (checked as they were loaded).
    """
    rows = slice(None) if among is None else np.flatnonzero(among)
    for col in columns:
        values = frame[col].iloc[rows]
        held, unfit = np.zeros(len(frame), bool), np.zeros(len(frame), bool)
        held[rows] = personal_data.mask(values)
        if held.any():
            reasons.flag(held, f"personal data in {col}")
            reasons.arrived[col] = reasons.arrived[col].astype("string[pyarrow]").mask(held, REMOVED)
        unfit[rows] = ~_fits_id(_arrow(values))
        reasons.flag(unfit, f"{col} is not an opaque id (letters, digits and _ . : @ - only)")


# ID_PATTERN is one character class, repeated: a value fits it exactly when it is not empty and each of its
# bytes is one of the class's (ASCII) characters. Checked on the bytes: a regex per value costs 10x more.
if not re.fullmatch(r"\^\[[^\]]+\]\+\$", ID_PATTERN):
    raise ImportError(f"ID_PATTERN is no longer one character class repeated: {ID_PATTERN}")
_ID_BYTES = np.array([re.fullmatch(ID_PATTERN, chr(b)) is not None for b in range(128)] + [False] * 128)


def _fits_id(text: pa.Array) -> np.ndarray:
    """Whether each value matches ID_PATTERN, from its bytes; a null fits (a missing id has its own reason)."""
    _, offsets, data = text.buffers()
    if data is None or not len(text):  # no text at all: every value is empty or null
        return text.is_null().to_numpy(zero_copy_only=False)
    offsets = np.frombuffer(offsets, np.int64)[text.offset : text.offset + len(text) + 1]
    fits = offsets[1:] > offsets[:-1]
    lo = offsets[0]
    bad = np.flatnonzero(~_ID_BYTES[np.frombuffer(data, np.uint8)[lo : offsets[-1]]]) + lo
    fits[np.searchsorted(offsets, bad, side="right") - 1] = False
    if text.null_count:
        fits |= ~text.is_valid().to_numpy(zero_copy_only=False)
    return fits


def _validate_events(frame, settings, catalog, latest, report) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = frame.copy(deep=False)
    r = _Reasons(frame)
    for col in ("event_id", "source_system", "source_key", "touch_type"):
        frame[col] = _ids(frame[col])
    r.missing(["event_id", "source_system", "source_key", "touch_type"])
    resolved = _resolve(settings, frame)
    _opaque(frame, ["event_id"], r)
    _opaque(frame, ["source_system", "source_key"], r, among=resolved.isna().to_numpy())  # resolved: a loaded key
    code = codes(frame["touch_type"], TYPE_NAMES)
    r.flag(code < 0, "unknown touch type")
    types = [TOUCH_TYPES[t] for t in TYPE_NAMES]
    for col, values in (("tier", TIERS), ("direction", DIRECTIONS)):
        derived = np.array([values.index(getattr(t, col)) for t in types])[np.maximum(code, 0)]
        if col in frame:
            given = _ids(frame[col])
            stated, found = given.notna().to_numpy(), codes(given, values)
            r.flag(stated & (code >= 0) & (found != derived), f"{col} does not match touch type")
            if stated.all() and (found == derived).all():  # complete and right: keep it, no new column
                frame[col] = given
                continue
        frame[col] = _text(list(values), np.where(code >= 0, derived, -1))
    _timestamp(frame, "occurred_at", r, latest)
    r.flag(frame["occurred_at"].isna(), "missing occurred_at")
    _number(frame, "amount", r)
    frame[DECISION_ID] = _ids(frame[DECISION_ID]) if DECISION_ID in frame else _text([], np.full(len(frame), -1))
    _opaque(frame, [DECISION_ID], r)
    frame[CUSTOMER_ID] = resolved
    r.flag(resolved.isna(), "unresolvable source key")
    r.flag(_duplicated(frame, "event_id"), "duplicate event_id")
    good, rejected = r.split()
    columns = ["event_id", "occurred_at", "source_system", "source_key", "touch_type", "tier", "direction"]
    return good[[*columns, "amount", DECISION_ID, CUSTOMER_ID]], rejected


def _text(values: list[str], codes: np.ndarray) -> pd.Series:
    """``values[code]`` as arrow strings, null where the code is -1."""
    taken = pa.array(values, pa.large_string()).take(pa.array(codes, mask=codes < 0))
    return pd.Series(pd.arrays.ArrowStringArray(taken))


def _resolve(settings: Settings, frame: pd.DataFrame) -> pd.Series:
    """Each event's customer through the loaded identity map (null when its key is unknown).

    A lookup in the map's index, built once for all partitions: no joined copy of 50M keys.
    """
    identity = _identity_map(settings)
    position = np.full(len(frame), -1, np.int64)
    customers = pa.array([], pa.large_string())
    if identity is not None:
        index, customers = identity
        position = index.find([_arrow(frame["source_system"]), _arrow(frame["source_key"])])
    taken = customers.take(pa.array(position, mask=position < 0))
    resolved = pd.Series(pd.arrays.ArrowStringArray(taken), index=frame.index)
    by_id = (frame["source_system"] == API_SYSTEM).fillna(False).to_numpy(bool)
    if by_id.any():  # sent to the service by customer id: known customers only, never made up ones
        ids = frame["source_key"].where(by_id)
        resolved = resolved.where(~by_id, ids.where(_known_customer(settings, ids)))
    return resolved


def _build_lookups(settings: Settings, table: str) -> None:
    """The indexes ``table``'s partitions look keys up in, built before any partition is read.

    Built during the first partition instead, their transient hash tables would add to that
    partition's rows and set the step's peak memory.
    """
    if table == "events":
        _identity_map(settings)
    if table == "decisions":
        _customer_index(settings)


def _identity_map(settings: Settings) -> tuple[KeyIndex, pa.Array] | None:
    """The loaded identity map: an index of its (source system, source key) and the customer of each row."""
    path = settings.raw_dir / "identity.parquet"
    if not path.exists():
        return None
    stat = path.stat()
    return _identity_cached(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _identity_cached(path: Path, mtime_ns: int, size: int) -> tuple[KeyIndex, pa.Array]:
    """Built once per version of the file: every partition of the events looks its keys up in it."""
    columns = _string_columns(path, ["source_system", "source_key", CUSTOMER_ID])
    return KeyIndex([columns["source_system"], columns["source_key"]]), columns[CUSTOMER_ID]


def _known_customer(settings: Settings, ids: pd.Series) -> np.ndarray:
    """Whether each id is a loaded customer's (false for a missing id, and before any customer is loaded)."""
    index = _customer_index(settings)
    return np.zeros(len(ids), bool) if index is None else index.contains([_arrow(ids)])


def _customer_index(settings: Settings) -> KeyIndex | None:
    path = settings.raw_dir / "customers.parquet"
    if not path.exists():
        return None
    stat = path.stat()
    return _customers_cached(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _customers_cached(path: Path, mtime_ns: int, size: int) -> KeyIndex:
    """The loaded customers' ids, indexed once per version of the file (each partition of decisions looks them up)."""
    return KeyIndex([_string_columns(path, [CUSTOMER_ID])[CUSTOMER_ID]])


def _string_columns(path: Path, columns: list[str]) -> dict[str, pa.Array]:
    table = pq.read_table(path, columns=columns)
    return {c: pc.cast(table.column(c), pa.large_string()).combine_chunks() for c in columns}


def _arrow(column: pd.Series) -> pa.Array:
    array = pa.array(column, type=pa.large_string(), from_pandas=True)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _validate_decisions(frame, settings, catalog, latest, report) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = frame.copy(deep=False)
    r = _Reasons(frame)
    for col in (DECISION_ID, CUSTOMER_ID, ACTION):
        frame[col] = _ids(frame[col])
    r.missing([DECISION_ID, CUSTOMER_ID, ACTION])
    known = _known_customer(settings, frame[CUSTOMER_ID])
    _opaque(frame, [DECISION_ID], r)
    _opaque(frame, [CUSTOMER_ID], r, among=~known)  # a known customer's id was checked as it was loaded
    r.flag(~known, "unknown customer_id")
    _timestamp(frame, DECIDED_AT, r, latest)
    r.flag(frame[DECIDED_AT].isna(), f"missing {DECIDED_AT}")
    r.flag(codes(frame[ACTION], catalog.names) < 0, "action not in catalog")
    p = _number(frame, PROPENSITY, r)
    r.flag(~((p > 0) & (p <= 1)), "propensity outside (0, 1]")
    y = _number(frame, OUTCOME, r)
    r.flag(y.notna() & ~y.isin([0.0, 1.0]), "outcome not 0 or 1")
    r.flag(_duplicated(frame, DECISION_ID), "duplicate decision_id")
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
    seen = _key_in(good, existing, keys)
    if not seen.any():
        return pd.concat([existing, good], ignore_index=True), len(good), 0, no_rejects
    # Every row given again (a delivery ingested twice): no copies of the frames, a partition can be big.
    fresh, overlap = good.loc[~seen], good if seen.all() else good.loc[seen]
    old = _rows_with_keys(existing, overlap, keys)
    cols = [c for c in overlap.columns if c in old.columns]
    same = _rows_equal(overlap, old, cols)
    changed = overlap.loc[~same]
    if table == "decisions":
        old_changed = old.loc[~same]
        kept_cols = [c for c in cols if c != OUTCOME]
        updatable = old_changed[OUTCOME].isna().to_numpy() & _rows_equal(changed, old_changed, kept_cols)
    elif table == "customers":
        updatable = np.ones(len(changed), dtype=bool)
    else:
        updatable = np.zeros(len(changed), dtype=bool)
    updates, conflicts = changed.loc[updatable], changed.loc[~updatable]
    if updates.empty and fresh.empty:
        merged = existing
    else:
        kept = existing.loc[~_key_in(existing, updates, keys)] if len(updates) else existing
        merged = pd.concat([kept, updates, fresh], ignore_index=True)
    rejected = conflicts.astype("string[pyarrow]").assign(reason=f"{'/'.join(keys)} already loaded with other values")
    return merged, len(fresh) + len(updates), int(same.sum()), rejected


def _key_in(frame: pd.DataFrame, other: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """Whether each row's key is among ``other``'s: an arrow hash lookup for one key (pandas' string
    ``isin`` makes a Python object per value), pandas for several."""
    if len(keys) > 1:
        return frame.set_index(keys).index.isin(other.set_index(keys).index)
    found = pc.is_in(_arrow(frame[keys[0]]), value_set=_arrow(other[keys[0]]))
    return pc.fill_null(found, False).to_numpy(zero_copy_only=False)


def _rows_with_keys(frame: pd.DataFrame, rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The rows of ``frame`` (keys unique) with the keys of ``rows``, in their order, key columns first."""
    if len(keys) > 1:
        return frame.set_index(keys).loc[rows.set_index(keys).index].reset_index()
    at = pc.index_in(_arrow(rows[keys[0]]), value_set=_arrow(frame[keys[0]])).to_numpy(zero_copy_only=False)
    found = frame.iloc[at].reset_index(drop=True)
    return found[[*keys, *found.columns.drop(keys)]]


def _rows_equal(a: pd.DataFrame, b: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Whether row i of ``a`` and row i of ``b`` hold the same ``columns`` (missing equals missing, never a value);
    by position, a column at a time."""
    same = np.ones(len(a), bool)
    for c in columns:
        x, y = a[c].array, b[c].array
        missing_x, missing_y = np.asarray(pd.isna(x), bool), np.asarray(pd.isna(y), bool)
        try:
            equal = np.asarray(pd.array(x == y).fillna(False), bool)  # a value against a missing one: not equal
        except TypeError:  # numbers against text (a column's kind changed): no value is the same
            equal = np.zeros(len(a), bool)
        same &= (equal & ~missing_x & ~missing_y) | (missing_x & missing_y)
    return same


def _load(settings: Settings, table: str) -> pd.DataFrame | None:
    path = settings.raw_dir / f"{table}.parquet"
    if not path.exists():
        return None
    return _from_arrow(pq.read_table(path))


def _store(settings: Settings, table: str, frame: pd.DataFrame) -> None:
    write_parquet(frame, settings.raw_dir / f"{table}.parquet")


def _quarantine(settings: Settings, table: str, sources: list[Path], rejected: pd.DataFrame) -> Path:
    """Rejected rows with their reason; named by the input's content, so a re-run rewrites it."""
    digest = hashlib.sha256()
    for source in sources:
        _hash_file(digest, source)
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    path = settings.quarantine_dir / f"{table}-{digest.hexdigest()[:12]}.csv"
    text = pa.Table.from_pandas(rejected.astype("string[pyarrow]"), preserve_index=False)
    text = pa.table({name: safe_text(text.column(name)) for name in text.column_names})  # no formulas
    csv.write_csv(text, path, csv.WriteOptions(quoting_style="needed"))  # arrow's writer: 1M rows in <1 s
    return path


def _quarantine_file(settings: Settings, table: str, source: Path, reason: str) -> Path:
    """An unusable file as it arrived, beside a note of why, for someone to look at."""
    digest = _hash_file(hashlib.sha256(), source).hexdigest()[:12]
    folder = settings.quarantine_dir / "files"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{table}-{digest}-{source.name}"
    shutil.copyfile(source, path)
    path.with_name(path.name + ".reason.txt").write_text(reason + "\n")
    return path


def _hash_file(digest: hashlib._Hash, path: Path) -> hashlib._Hash:
    """``digest`` updated with the file's bytes, read a MiB at a time (inputs can be gigabytes)."""
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest
