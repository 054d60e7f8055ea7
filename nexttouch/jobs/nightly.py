"""`nexttouch retrain`: the nightly job in one command.

collect (the service's decision log into the inbox) -> ingest -> validate -> features -> materialize ->
label -> training set -> train -> evaluate -> register -> gate -> promote, each step logged with its time
(and the times logged to the run).

- One at a time: a lock every host sees in the production profile (PostgreSQL or Redis), an exclusive
  ``flock`` on ``data/retrain.lock`` in the embedded default; a second run exits at once.
- Idempotent per day: ``data/retrain/<day>.json`` records the input fingerprint (every input file's
  bytes and the catalog) of the day's finished run; the same day with the same inputs does nothing.
- All or nothing for the champion: only the last step moves it. When ingest or validation fails,
  ``data/raw`` is put back as it was (ingest replaces files atomically, so hard links keep the old ones).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import mlflow

from features.pipeline import build_offline, feast_apply
from nexttouch.catalog import Catalog
from nexttouch.ingest import TABLES, TableReport, ingest
from nexttouch.jobs.online import load_online
from nexttouch.locks import Locked, file_lock, postgres_lock, redis_client, redis_lock
from nexttouch.settings import Settings
from training.job import StepTimer, TrainReport, git_commit, train_and_gate
from training.promotion import actor
from training.registry import check_tracking, start_run

log = logging.getLogger(__name__)
INPUT_PATTERNS = [f"{t}{part}.{ext}" for t in TABLES for part in ("", "-*") for ext in ("parquet", "csv")]


class RetrainLocked(RuntimeError):
    """Another retrain holds the lock."""


class RetrainFailed(RuntimeError):
    """A step failed; the champion is unchanged."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"step {step} failed: {cause}")
        self.step, self.cause = step, cause


@dataclass
class RetrainReport:
    day: date
    fingerprint: str
    skipped: bool = False
    run_id: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    ingested: list[TableReport] = field(default_factory=list)
    train: TrainReport | None = None


def lock_path(settings: Settings) -> Path:
    return settings.data_dir / "retrain.lock"


def marker_path(settings: Settings, day: date) -> Path:
    return settings.data_dir / "retrain" / f"{day.isoformat()}.json"


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` or raise RetrainLocked at once (never wait).

    The kernel drops the lock when the process dies, so a killed run never blocks the next one.
    """
    with _refused_when_held(file_lock(path)):
        yield


@contextmanager
def retrain_lock(settings: Settings) -> Iterator[None]:
    """One retrain at a time wherever it runs: in the shared store of the production profile (PostgreSQL when
    the decision log is there, else Redis when the online store is), else an ``flock`` in data/.

    Like the flock, neither outlives its holder: PostgreSQL drops a session's advisory lock when the session
    ends; the Redis lock expires a minute after its holder stopped renewing it.
    """
    if settings.decision_log_url and settings.decision_log_url.startswith(("postgresql://", "postgres://")):
        lock = postgres_lock(settings.decision_log_url, f"retrain {settings.model_name}")
    elif settings.online_store == "redis":
        client = redis_client(settings.redis_url)
        lock = redis_lock(client, f"nexttouch:retrain:{settings.model_name}", ttl_s=60, renew=True)
    else:
        lock = file_lock(lock_path(settings))
    with _refused_when_held(lock):
        yield


@contextmanager
def _refused_when_held(lock: AbstractContextManager[None]) -> Iterator[None]:
    with ExitStack() as held:
        try:
            held.enter_context(lock)
        except Locked as exc:
            raise RetrainLocked(f"another retrain is running ({exc.who}); {exc.what}") from None
        yield


def input_files(sources: list[Path]) -> list[Path]:
    return sorted({p for src in sources if src.is_dir() for pattern in INPUT_PATTERNS for p in src.glob(pattern)})


def fingerprint(files: list[Path], catalog: Catalog) -> str:
    """sha256 over every input file's name and bytes, and the catalog: same inputs, same fingerprint."""
    digest = hashlib.sha256(catalog.model_dump_json().encode())
    for path in files:
        digest.update(f"\0{path.name}\0".encode())
        with path.open("rb") as data:
            for chunk in iter(lambda: data.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def retrain(
    settings: Settings,
    catalog: Catalog,
    day: date,
    sources: list[Path] | None = None,
    by: str | None = None,
    collect: Callable[[], object] | None = None,
) -> RetrainReport:
    """The nightly job for ``day`` (UTC): see the module docstring. Raises RetrainLocked / RetrainFailed.

    ``collect`` runs first, under the lock: the CLI passes the export of the service's decision log to the
    inbox, so decisions and their outcomes become inputs (and part of the fingerprint) like any other file.
    """
    sources = sources if sources is not None else [settings.landing_dir, settings.data_dir / "inbox"]
    as_of = datetime.combine(day, time(), tzinfo=UTC)  # features: snapshots up to the day's midnight
    until = min(datetime.now(UTC), as_of + timedelta(days=1))  # data: nothing later than the day itself
    by = by or actor("nexttouch retrain")
    with retrain_lock(settings):
        if collect is not None:
            try:
                collect()
            except Exception as exc:  # e.g. the PostgreSQL decision log is down: nothing else has run
                raise RetrainFailed("collect", exc) from exc
        files = input_files(sources)
        report = RetrainReport(day, fingerprint(files, catalog))
        done = _read_marker(settings, day)
        if done and done.get("fingerprint") == report.fingerprint and done.get("status") == "done":
            report.skipped, report.run_id = True, done.get("run_id")
            return report
        step = StepTimer()
        tags = {"job": "retrain", "day": day.isoformat(), "input_fingerprint": report.fingerprint}
        try:
            with step("tracking"):
                check_tracking(settings)
            name = f"nightly {day.isoformat()}"
            with start_run(settings, catalog, {**tags, "code_version": git_commit()}, run_name=name) as run:
                report.run_id = run.info.run_id
                try:
                    _steps(settings, catalog, report, sources, files, as_of, until, by, step)
                except BaseException as exc:
                    mlflow.set_tags({"failed_step": step.current, "error": f"{type(exc).__name__}: {exc}"[:5000]})
                    raise
                finally:
                    mlflow.log_metrics(step.metrics())
                    report.seconds = dict(step.seconds)
        except Exception as exc:
            report.seconds = dict(step.seconds)
            _write_marker(settings, day, report, "failed", step.current)
            raise RetrainFailed(step.current or "start", exc) from exc
        _write_marker(settings, day, report, "done", None)
        return report


def _steps(
    settings: Settings,
    catalog: Catalog,
    report: RetrainReport,
    sources: list[Path],
    files: list[Path],
    as_of: datetime,
    until: datetime,
    by: str,
    step: StepTimer,
) -> None:

    with _raw_restored_on_error(settings):
        with step("ingest"):
            for source in sources:  # in order: the landing tables first, then the service's inbox
                if any(f.parent == source for f in files):
                    report.ingested += ingest(settings, catalog, source, now=until)
            if not files:
                log.info("no new input in %s: training on the data already loaded", ", ".join(map(str, sources)))
        with step("validate"):
            validate_ingest(report.ingested, settings.max_rejected_share)
    with step("features"):
        build_offline(settings, as_of, settings.days)
        feast_apply(settings)
    with step("materialize"):
        load_online(settings, until)
    report.train = train_and_gate(settings, catalog, until, by, step)


class InvalidInput(ValueError):
    """Ingest rejected too much of a table: upstream data is broken, nothing is trained on it."""


def validate_ingest(reports: list[TableReport], max_rejected_share: float) -> None:
    problems = []
    for r in reports:
        rejected = sum(r.rejected.values())
        if r.rows and rejected / r.rows > max_rejected_share:
            reasons = ", ".join(f"{n:,} {why}" for why, n in sorted(r.rejected.items(), key=lambda kv: -kv[1])[:3])
            problems.append(
                f"{r.table}: {rejected:,} of {r.rows:,} rows rejected, over {max_rejected_share:.0%} ({reasons}); "
                f"see {r.quarantine}"
            )
        problems += [f"{r.table}: file {path.name} not loaded ({why})" for path, why in r.failed_files.items()]
        if r.refused_columns:  # personal data: refused and reported by ingest, the rest of the table is fine
            log.warning("%s: columns refused %s", r.table, r.refused_columns)
    if problems:
        raise InvalidInput("input rejected: " + "; ".join(problems))


@contextmanager
def _raw_restored_on_error(settings: Settings) -> Iterator[None]:
    """Hard-link data/raw aside; on error put it back, so a failed ingest leaves no half-loaded data."""
    raw, backup = settings.raw_dir, settings.data_dir / "retrain" / "raw-before"
    shutil.rmtree(backup, ignore_errors=True)
    backup.mkdir(parents=True)
    before = [p.name for p in raw.glob("*")] if raw.is_dir() else []
    for name in before:
        os.link(raw / name, backup / name)
    try:
        yield
    except BaseException:
        for path in raw.glob("*") if raw.is_dir() else []:
            if path.name not in before:
                path.unlink()
        for name in before:
            os.replace(backup / name, raw / name)
        log.warning("data/raw restored to its state before this run")
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)


def _read_marker(settings: Settings, day: date) -> dict[str, object] | None:
    path = marker_path(settings, day)
    return json.loads(path.read_text()) if path.exists() else None


def _write_marker(settings: Settings, day: date, report: RetrainReport, status: str, failed: str | None) -> None:
    train = report.train
    record = {
        "day": day.isoformat(),
        "fingerprint": report.fingerprint,
        "status": status,
        "failed_step": failed,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_id": report.run_id,
        "version": train.registered.version if train else None,
        "promoted": train.promoted if train else False,
        "served_version": train.move.champion if train and train.move else None,  # None: the champion was kept
        "verdict": asdict(train.verdict) if train else None,
        "seconds": {k: round(v, 3) for k, v in report.seconds.items()},
    }
    path = marker_path(settings, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
