"""Data-side benchmarks at brand scale, through the real commands' code paths.

Each case runs in a fresh process, so its peak RSS (reported by the child itself) is its own;
the cases share one project (a copy of the Feast repo, as tests/conftest.py makes it) and run
in order, each reading what the one before wrote:

    simulate   simulate N customers for 180 days and write the landing parquet (write_brand)
    ingest     nexttouch.ingest.ingest: validation, identity resolution, quarantine, data/raw
    features   the snapshot window and its coverage of the decisions (as `nexttouch features` checks
               them), features.pipeline.build_offline (snapshots every --every-days), `feast apply`
    online     SQLite: a plain bulk insert of the latest rows (the baseline) and the bulk load
               (features.pipeline.materialize), into an empty store and again over the full one
               (the nightly case); then the bulk load into Redis (127.0.0.1:6379, db 15; above
               --redis-customers, default 1M, measured on the first ones and scaled linearly, as
               Redis holds it all in RAM). Every load is read back through `get_online_features`.
    readers    the SQLite load over a full store again, while another process reads one customer
               at a time as `/decide` does: the readers' latencies during the load
    stock      stock Feast `materialize` into SQLite. Above --stock-customers (default 100,000)
               it is measured on the first --stock-customers customers and scaled linearly:
               the table says so.
    label      the training job's labelled decisions (training.job.labelled_decisions): the latest
               NEXTTOUCH_TRAINING_DECISIONS (default 5M) of the decision log, labelled by feedback
               or attribution from the touch events
    asof       the baseline for `training`: a bare DuckDB ASOF join of the same decisions with
               the snapshots of their customers, best of 3 (its own process: it holds several GiB,
               which would hide the training set's own peak)
    training   a point-in-time training set for (up to) 1M decisions: Feast
               `get_historical_features` on the DuckDB offline store, a slice of entity rows at
               a time, written as parquet and sorted by time (training.dataset.write_training_set)
    fit        LightGBM (training.train.fit) on that training set, its training period streamed
               from the file a batch at a time, as the training job does
    fit_frame  the same fit from the whole training set read into one frame first (the
               in-memory path, for comparison; not among the default cases)

Usage:

    .venv/bin/python -m benchmarks.bench_data --customers 20000            # ~2 min
    .venv/bin/python -m benchmarks.bench_data --customers 1000000          # weekly snapshots
    .venv/bin/python -m benchmarks.bench_data --customers 10000000         # every step, within the budget
    .venv/bin/python -m benchmarks.bench_data --customers 200000 --memory-gib 0.8 --dask-workers 2

The data steps keep to ``--memory-gib`` (``settings.data_memory_gib``); each row shows the case's CPU
seconds, its time per customer and, beside it, the step's figures at 1M customers from before the
steps were partitioned.

Daily snapshots of 1M customers (180M rows) do not fit in 24 GiB, so above 100,000 customers
snapshots are weekly unless ``--every-days`` says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from nexttouch.parquet import parquet_file
from nexttouch.sql import literal
from nexttouch.telemetry import TELEMETRY_OFF

CASES = (
    "simulate",
    "ingest",
    "features",
    "online",
    "readers",
    "stock",
    "label",
    "asof",
    "training",
    "fit",
    "fit_frame",
)
END = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 180
TRAINING_ROWS = 1_000_000
TRAINING_SET_DIR = "bench-training-set"  # the training case's set, which the fit cases read
REDIS_URL = "127.0.0.1:6379,db=15"  # a database of its own, emptied after the case
ROOT = Path(__file__).resolve().parent.parent


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _peak_mib() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _trace_peaks(path: Path, case: str, step_mib: int = 256) -> None:
    """Append the main thread's stack to ``path`` each time this process's RSS passes its highest yet by
    ``step_mib``: where a case's peak memory is held (written as it goes, so a stopped case keeps it)."""
    import threading
    import traceback

    import psutil

    main_thread, proc = threading.main_thread().ident, psutil.Process()

    def watch() -> None:
        recorded = 0
        while True:
            rss = proc.memory_info().rss >> 20
            if rss >= recorded + step_mib:
                recorded = rss
                stack = "".join(traceback.format_stack(sys._current_frames()[main_thread]))
                with path.open("a") as f:
                    f.write(f"--- {case}: {rss:,} MiB at {time.strftime('%H:%M:%S')}\n{stack}")
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


BASELINE = "online: plain bulk insert (baseline)"


ASOF = "training: bare DuckDB ASOF join (baseline)"
# The steps at 1M customers when they held every customer in memory (docs/benchmarks.md, "Data steps
# at 1M customers"): (seconds, peak RSS MiB), printed beside each run's own figures.
BEFORE_1M = {
    "simulate": (66.9, 8_898),
    "ingest": (97.9, 12_797),
    "features": (128.9, 9_053),
    ASOF: (5.81, 8_932),
    "training set": (13.3, 4_911),
}


def _row(case: str, size: str, seconds: float, vs_bulk: bool = False, vs_asof: bool = False) -> dict[str, object]:
    """One table row; ``vs_bulk`` / ``vs_asof`` rows get their time as a multiple of that baseline's."""
    row = {"case": case, "size": size, "seconds": round(seconds, 2), "peak_mib": _peak_mib(), "vs_bulk": vs_bulk}
    row["cpu_s"] = round(_cpu_seconds(), 1)  # the process's CPU time so far: what a busy machine does not change
    return {**row, "vs_asof": vs_asof}


def _settings(project: Path, args: argparse.Namespace, **extra: object):
    from nexttouch.settings import load_settings

    return load_settings(
        project_dir=project,
        customers=args.customers,
        days=DAYS,
        snapshot_every_days=args.every_days,
        data_memory_gib=args.memory_gib,
        **extra,
    )


def case_simulate(project: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    from nexttouch.catalog import load_catalog
    from nexttouch.simulate import write_brand

    s = _settings(project, args)
    t = time.perf_counter()
    brand = write_brand(s, load_catalog(), END, s.landing_dir)
    size = f"{args.customers:,} cust., {brand.events:,} events, {brand.decisions:,} decisions"
    return [_row("simulate (+ landing parquet)", size, time.perf_counter() - t)]


def case_ingest(project: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    from nexttouch.catalog import load_catalog
    from nexttouch.ingest import ingest

    s = _settings(project, args)
    t = time.perf_counter()
    reports = ingest(s, load_catalog(), s.landing_dir, now=END)
    seconds = time.perf_counter() - t
    rows, loaded = sum(r.rows for r in reports), sum(r.loaded for r in reports)
    return [_row("ingest (validate, resolve ids, load)", f"{rows:,} rows, {loaded:,} loaded", seconds)]


def case_features(project: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    from features.pipeline import build_offline, feast_apply, snapshot_window, uncovered

    s = _settings(project, args)
    t = time.perf_counter()
    window = snapshot_window(s, END, None, DAYS, args.every_days)  # as `nexttouch features` checks first
    gap = uncovered(s, window)
    checked = _row("snapshot window, decisions covered (features)", f"{gap.of:,} decisions", time.perf_counter() - t)
    t = time.perf_counter()
    build = build_offline(s, END, DAYS)
    built = time.perf_counter() - t
    t = time.perf_counter()
    feast_apply(s)
    size = f"{build.rows:,} snapshot rows (every {args.every_days} d) from {build.events:,} events"
    return [checked, _row("features (build_offline)", size, built), _row("feast apply", "", time.perf_counter() - t)]


LATEST_COLUMNS = ["customer_id", "event_timestamp"]  # then the touch features and the contact state


def _latest_file(s):
    """The file of each customer's latest touch-history row (the rows an online load writes), which the
    features case wrote; read a batch at a time: at 10M customers it is ~10M rows of ~70 columns."""

    from features.online_load import latest_path

    return parquet_file(latest_path(s.offline_dir / "touch_history.parquet"))


def _latest_columns() -> list[str]:
    from features.touch_features import TOUCH_FEATURES
    from nexttouch.touches import CONTACT_STATE

    return [*LATEST_COLUMNS, *TOUCH_FEATURES, *CONTACT_STATE]


def _sample_ids(s, n: int = 200, among: int | None = None) -> list[str]:
    """``n`` customers at random (among the first ``among`` of the profile file)."""
    import numpy as np
    import pyarrow.parquet as pq

    ids = pq.read_table(s.offline_dir / "customer_profile.parquet", columns=["customer_id"]).column(0)[:among]
    picked = np.random.RandomState(0).choice(len(ids), min(n, len(ids)), replace=False)
    return ids.take(picked).to_pylist()


def _check_online(store, s, ids: list[str]) -> None:
    """Read ``ids`` back through Feast and compare with their latest rows in the offline files."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from features.touch_features import TOUCH_FEATURES

    wanted = pa.array(ids)
    parts = [b.filter(pc.is_in(b.column("customer_id"), value_set=wanted)) for b in _latest_file(s).iter_batches()]
    sample = pa.Table.from_batches(parts).to_pandas().set_index("customer_id").loc[ids]
    refs = [f"touch_history:{f}" for f in TOUCH_FEATURES]
    got = store.get_online_features(features=refs, entity_rows=[{"customer_id": c} for c in ids]).to_df()
    for f in TOUCH_FEATURES:
        if not np.allclose(got[f].to_numpy(float), sample[f].to_numpy(float), rtol=1e-6, equal_nan=True):
            raise AssertionError(f"online value of {f} differs from the loaded row")


def _bulk_insert(db: Path, s) -> int:
    """The baseline: the latest rows, one wide row per customer, plain executemany into a plain table,
    a record batch at a time; returns the rows inserted."""
    columns, rows = _latest_columns(), 0
    db.unlink(missing_ok=True)
    with sqlite3.connect(db) as con:
        names = ", ".join(f'"{c}"' for c in columns)
        con.execute(f"CREATE TABLE bulk ({names}, PRIMARY KEY(customer_id))")
        insert = f"INSERT INTO bulk VALUES ({', '.join('?' * len(columns))})"
        for batch in _latest_file(s).iter_batches(batch_size=1 << 18, columns=columns):
            plain = batch.to_pandas()
            for col in plain.columns:  # times as epoch seconds, as Feast stores them
                if isinstance(plain[col].dtype, pd.DatetimeTZDtype):
                    seconds = plain[col].dt.tz_localize(None).to_numpy().astype("datetime64[s]").astype("int64")
                    plain[col] = pd.Series(seconds, index=plain.index).where(plain[col].notna())
            con.executemany(insert, plain.astype(object).where(plain.notna(), None).itertuples(index=False, name=None))
            rows += len(plain)
    return rows


def _empty_sqlite(s) -> None:
    db = s.data_dir / "feast" / "online.db"
    if db.exists():
        with sqlite3.connect(db) as con:
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                con.execute(f'DELETE FROM "{table}"')


def _subset_project(project: Path, args: argparse.Namespace, n: int):
    """The settings of a project of its own holding the offline files of the first ``n`` customers
    (made once, filtered a record batch at a time: the snapshot file of 10M customers is ~260M rows)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from features.pipeline import feast_apply
    from nexttouch.jobs.project import copy_feature_repo

    sub = project / f"subset-{n}"
    s, small = _settings(project, args), _settings(sub, args)
    done = small.offline_dir / ".complete"
    if not done.exists():
        copy_feature_repo(sub)
        small.offline_dir.mkdir(parents=True, exist_ok=True)
        ids = pq.read_table(s.offline_dir / "customer_profile.parquet", columns=["customer_id"]).column(0)[:n]
        for name in ("touch_history", "customer_profile"):
            source = parquet_file(s.offline_dir / f"{name}.parquet")
            with pq.ParquetWriter(small.offline_dir / f"{name}.parquet", source.schema_arrow) as writer:
                for batch in source.iter_batches(batch_size=1 << 20):
                    writer.write_batch(batch.filter(pc.is_in(batch.column("customer_id"), value_set=ids)))
        feast_apply(small)
        done.touch()
    return small


def _stock_materialize(project: Path, args: argparse.Namespace, n: int) -> float:
    """Seconds of stock `materialize` (all views) for the first ``n`` customers, in a project of its own."""
    from features.pipeline import materialize
    from nexttouch.feature_store import open_store

    small = _subset_project(project, args, n)
    _empty_sqlite(small)
    open_store(small)  # Feast imported before the clock starts
    t = time.perf_counter()
    materialize(small, END, stock=True)
    return time.perf_counter() - t


def case_online(project: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    from features.pipeline import feast_apply, materialize
    from features.touch_features import TOUCH_FEATURES
    from nexttouch.feature_store import open_store

    s = _settings(project, args)
    ids = _sample_ids(s)
    t = time.perf_counter()
    n = _bulk_insert(project / "bulk.db", s)
    rows = [_row(BASELINE, f"{n:,} wide rows, plain SQLite table", time.perf_counter() - t)]

    _empty_sqlite(s)  # a first load (reruns start empty too)
    open_store(s)  # Feast imported and its registry read before the clock starts, as for the baseline
    t = time.perf_counter()
    written = materialize(s, END)
    load_s = time.perf_counter() - t
    _check_online(open_store(s), s, ids)
    n_rows = sum(written.values())
    rows.append(
        _row(
            "online: nexttouch bulk load, SQLite",
            f"3 views, {n_rows:,} entity rows (touch_history: {len(TOUCH_FEATURES)} features), read back ok",
            load_s,
            vs_bulk=True,
        )
    )
    t = time.perf_counter()
    materialize(s, END)  # the nightly case: the same load over a full store
    rows.append(
        _row(
            "online: nexttouch bulk load, SQLite, over a full store",
            "read back ok",
            time.perf_counter() - t,
            vs_bulk=True,
        )
    )
    _check_online(open_store(s), s, ids)

    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=15, socket_connect_timeout=2)
        if client.dbsize():
            raise RuntimeError("redis db 15 is not empty; not touching it")
    except Exception as exc:  # no Redis here: the SQLite numbers stand alone
        rows.append(_row("online: nexttouch bulk load, Redis", f"skipped: {exc}"[:60], float("nan")))
        return rows
    # Redis holds its data in RAM (~1 KiB per customer): above --redis-customers the load is measured
    # on the first ones and scaled linearly, as stock materialize is.
    n = min(args.customers, args.redis_customers)
    base = _subset_project(project, args, n) if n < args.customers else s
    r = base.model_copy(update={"online_store": "redis", "redis_url": REDIS_URL})
    feast_apply(r)
    open_store(r)
    try:
        t = time.perf_counter()
        written = materialize(r, END)
        load_s = time.perf_counter() - t
        _check_online(open_store(r), s, _sample_ids(s, among=n))
    finally:
        client.flushdb()
    size = f"{written['touch_history']:,} customers, 3 views, read back ok"
    if n < args.customers:
        size = f"{n:,} cust. measured ({load_s:.0f} s, this RSS), x{args.customers / n:g} linear; " + size
        load_s *= args.customers / n
    rows.append(_row("online: nexttouch bulk load, Redis", size, load_s, vs_bulk=True))
    return rows


def _read_one_by_one(project: Path, args: argparse.Namespace, stop, out) -> None:
    """In its own process: read one customer at a time (as `/decide` does) until ``stop``; report latencies."""
    import numpy as np

    from features.online_read import OnlineReader
    from nexttouch.feature_store import open_store

    s = _settings(project, args)
    store = open_store(s)
    reader = OnlineReader(store, store.get_feature_service(s.feature_service))
    ids = pd.read_parquet(s.offline_dir / "customer_profile.parquet", columns=["customer_id"])["customer_id"]
    ids = ids.to_numpy()[:100_000]
    latencies, errors = [], 0
    out.put("ready")
    while not stop.is_set():
        t = time.perf_counter()
        try:
            reader.row(ids[len(latencies) % len(ids)])
        except Exception:  # counted: a read the service would answer with a fallback
            errors += 1
        latencies.append(time.perf_counter() - t)
        time.sleep(0.002)
    ms = np.array(latencies) * 1000
    out.put((len(ms), float(np.median(ms)), float(np.percentile(ms, 99)), float(ms.max()), errors))


def case_readers(project: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    """A bulk SQLite load over a full store while another process reads one customer at a time."""
    import multiprocessing

    from features.pipeline import materialize
    from nexttouch.feature_store import open_store

    s = _settings(project, args)
    open_store(s)
    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    child = context.Process(target=_read_one_by_one, args=(project, args, stop, out))
    child.start()
    out.get(timeout=300)
    t = time.perf_counter()
    materialize(s, END)
    seconds = time.perf_counter() - t
    stop.set()
    reads, p50, p99, worst, errors = out.get(timeout=60)
    child.join()
    size = f"{reads:,} reads meanwhile: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {worst:.0f} ms, {errors} errors"
    return [_row("online: SQLite load over a full store, one reader", size, seconds, vs_bulk=True)]


def case_stock(project: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    n = min(args.customers, args.stock_customers)
    seconds = _stock_materialize(project, args, n)
    if n == args.customers:
        return [_row("online: stock Feast materialize, SQLite", "3 views, measured", seconds, vs_bulk=True)]
    size = f"3 views, {n:,} cust. measured ({seconds:.0f} s, this RSS), x{args.customers / n:g} linear"
    return [_row("online: stock Feast materialize, SQLite", size, seconds * args.customers / n, vs_bulk=True)]


def asof_baseline(s, entity: pd.DataFrame, repeat: int = 3) -> tuple[float, int]:
    """Seconds for a bare DuckDB ASOF join of ``entity`` (customer_id, event_timestamp) with the
    touch-history snapshots, into arrow: the floor for a point-in-time join of these rows. The best
    of ``repeat`` runs: a 2-second query on a shared machine is easily doubled by a neighbour."""
    import duckdb
    import pyarrow as pa

    path = s.offline_dir / "touch_history.parquet"
    # Not DuckDB's default of 80 % of RAM: the cases may share the machine (it spills beyond the limit).
    con = duckdb.connect(config={"memory_limit": "10GB", "temp_directory": str(s.data_dir / "tmp" / "asof-spill")})
    con.register("rows", pa.Table.from_pandas(entity[["customer_id", "event_timestamp"]], preserve_index=False))
    # Only the decisions' customers' snapshots: a bare ASOF join sorts its whole right side (~15 GiB
    # for the 26M snapshot rows of 1M customers), which 10M customers' would not fit.
    query = (
        f"SELECT e.*, t.* EXCLUDE (customer_id, event_timestamp) FROM rows AS e ASOF LEFT JOIN "
        f"(SELECT * FROM read_parquet({literal(str(path))}) WHERE customer_id IN (SELECT customer_id FROM rows)) AS t "
        "ON e.customer_id = t.customer_id AND e.event_timestamp >= t.event_timestamp"
    )
    best, n = float("inf"), 0
    for _ in range(repeat):
        t = time.perf_counter()
        n = con.sql(query).to_arrow_table().num_rows
        best = min(best, time.perf_counter() - t)
    con.close()
    return best, n


def _training_decisions(s) -> pd.DataFrame:
    """(Up to) ``TRAINING_ROWS`` decisions, the rows ``DataFrame.sample(random_state=0)`` picks, taken a
    record batch at a time: the whole decision log (14M rows at 1M customers) would set the case's peak."""
    import numpy as np
    import pyarrow as pa

    file = parquet_file(s.raw_dir / "decisions.parquet")
    total = file.metadata.num_rows
    if total <= TRAINING_ROWS:
        return file.read().to_pandas()
    picked = np.random.RandomState(0).choice(total, TRAINING_ROWS, replace=False)
    order = np.argsort(picked)
    at, parts, offset = picked[order], [], 0
    for batch in file.iter_batches(batch_size=1 << 20):
        lo, hi = np.searchsorted(at, [offset, offset + batch.num_rows])
        parts.append(batch.take(pa.array(at[lo:hi] - offset)))
        offset += batch.num_rows
    rows = pa.Table.from_batches(parts, schema=file.schema_arrow)
    return rows.take(pa.array(np.argsort(order))).to_pandas()  # in the order they were picked


def case_asof(project: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    s = _settings(project, args)
    seconds, n = asof_baseline(s, _training_decisions(s).rename(columns={"decided_at": "event_timestamp"}))
    return [_row(ASOF, f"{n:,} decisions x touch_history.parquet (best of 3)", seconds)]


def case_label(project: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    from nexttouch.catalog import load_catalog
    from training.job import labelled_decisions

    s = _settings(project, args)
    t = time.perf_counter()
    labelled, open_window = labelled_decisions(s, load_catalog())
    size = f"latest {s.training_decisions:,} decisions: {len(labelled):,} labelled, {open_window:,} open"
    return [_row("label: the training job's labelled decisions", size, time.perf_counter() - t)]


def case_training(project: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    from nexttouch.feature_store import open_store
    from training.dataset import write_training_set

    s = _settings(project, args)
    decisions = _training_decisions(s)
    open_store(s)  # Feast imported before the clock starts, as DuckDB is for the baseline
    t = time.perf_counter()
    data = write_training_set(s, decisions, project / TRAINING_SET_DIR)
    seconds = time.perf_counter() - t
    missing = sum(int(b["spend_90d"].isna().sum()) for b in data.batches(columns=["spend_90d"]))
    size = f"{len(data):,} decisions, {missing:,} before their first snapshot, parquet on disk"
    return [_row("training set (get_historical_features, DuckDB)", size, seconds, vs_asof=True)]


def _fit(project: Path, args: argparse.Namespace, streamed: bool) -> list[dict[str, object]]:
    """LightGBM on the training set the ``training`` case wrote: streamed from disk, or read whole first."""
    from nexttouch.catalog import load_catalog
    from training.dataset import TRAINING_SET_FILE, TrainingSet
    from training.train import fit

    data = TrainingSet(project / TRAINING_SET_DIR / TRAINING_SET_FILE)
    t = time.perf_counter()
    result = fit(data if streamed else data.read(), load_catalog())
    seconds = time.perf_counter() - t
    m = result.metrics
    size = f"{int(m['train_rows']):,} training rows, {int(m['best_iteration'])} trees, valid AUC {m['valid_auc']:.3f}"
    how = "streamed from the parquet file" if streamed else "from the whole frame in memory"
    return [_row(f"train: LightGBM {how}", size, seconds)]


def case_fit(project: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    return _fit(project, args, streamed=True)


def case_fit_frame(project: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    return _fit(project, args, streamed=False)


RUNNERS = {
    "simulate": case_simulate,
    "ingest": case_ingest,
    "features": case_features,
    "online": case_online,
    "readers": case_readers,
    "stock": case_stock,
    "label": case_label,
    "asof": case_asof,
    "training": case_training,
    "fit": case_fit,
    "fit_frame": case_fit_frame,
}


def _run(cmd: list[str], env: dict[str, str], max_rss_gib: float) -> tuple[int, str, str]:
    """Run one case; stop it if its RSS passes ``max_rss_gib`` (the machine is shared: no OOM killer)."""
    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        proc = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                if proc.memory_info().rss > max_rss_gib * 2**30:
                    child.kill()
                    child.wait()
                    return 1, "", f"stopped: RSS above {max_rss_gib} GiB"
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.5)
        out.seek(0)
        err.seek(0)
        return child.returncode, out.read(), err.read()


@contextlib.contextmanager
def _cluster(workers: int) -> Iterator[str | None]:
    """A local Dask cluster of ``workers`` processes (one thread each) for the cases, or None."""
    if not workers:
        yield None
        return
    from distributed import LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    default = ",".join(c for c in CASES if c != "fit_frame")
    parser.add_argument("--cases", default=default, help=f"comma-separated, from {','.join(CASES)}")
    parser.add_argument("--every-days", type=int, help="snapshot spacing (default: 1 up to 100,000 customers, else 7)")
    parser.add_argument("--stock-customers", type=int, default=100_000, help="customers for stock materialize")
    parser.add_argument("--redis-customers", type=int, default=1_000_000, help="customers for the Redis load")
    parser.add_argument(
        "--workdir", type=Path, help="keep the project here (default: a temporary one); reruns can skip cases"
    )
    parser.add_argument("--max-rss-gib", type=float, default=18.0, help="stop a case whose RSS passes this")
    parser.add_argument(
        "--memory-gib", type=float, default=4.0, help="the data steps' memory budget (settings.data_memory_gib)"
    )
    parser.add_argument(
        "--dask-workers",
        type=int,
        default=0,
        help="run the data steps' partitions on a local Dask cluster of this many worker processes "
        "(peak RSS is then the driver's; the workers' is not counted)",
    )
    parser.add_argument(
        "--trace-peaks", type=Path, help="append the stack to this file each time a case's RSS passes its peak"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.every_days = args.every_days or (1 if args.customers <= 100_000 else 7)
    if args.one:
        if args.trace_peaks:
            _trace_peaks(args.trace_peaks, args.one)
        print(json.dumps(RUNNERS[args.one](args.project, args)))
        return

    env = {**os.environ, **TELEMETRY_OFF, "NEXTTOUCH_REDIS_URL": REDIS_URL}
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="nexttouch-bench-") as tmp, _cluster(args.dask_workers) as scheduler:
        if scheduler:
            env["NEXTTOUCH_DASK_SCHEDULER"] = scheduler
        project = args.workdir or Path(tmp)
        sys.path.insert(0, str(ROOT))
        from nexttouch.jobs.project import copy_feature_repo

        copy_feature_repo(project)  # a kept workdir gets the current repo files
        for case in args.cases.split(","):
            cmd = [sys.executable, "-m", "benchmarks.bench_data", "--one", case, "--project", str(project)]
            cmd += ["--customers", str(args.customers), "--every-days", str(args.every_days)]
            cmd += ["--stock-customers", str(args.stock_customers), "--memory-gib", str(args.memory_gib)]
            cmd += ["--redis-customers", str(args.redis_customers)]
            cmd += ["--trace-peaks", str(args.trace_peaks.resolve())] if args.trace_peaks else []
            t = time.perf_counter()
            code, stdout, stderr = _run(cmd, env, args.max_rss_gib)
            if code != 0:
                reason = (stderr.strip().splitlines() or [f"exit {code}"])[-1][:90]
                results.append({"case": case, "size": f"FAILED: {reason}", "seconds": "", "peak_mib": ""})
                break
            rows = json.loads(stdout.strip().splitlines()[-1])
            results.extend(rows)
            print(f"{case} done in {time.perf_counter() - t:.0f} s: {json.dumps(rows)}", file=sys.stderr, flush=True)

    engine = f"a local Dask cluster of {args.dask_workers} workers" if args.dask_workers else "in process"
    print(
        f"\nnexttouch data benchmarks: {args.customers:,} customers, {DAYS} days, snapshots every "
        f"{args.every_days} day(s), {os.cpu_count()} cores, memory budget {args.memory_gib:g} GiB, "
        f"partitions {engine}\n"
    )
    print(
        "| case | size | seconds | CPU s (process) | peak RSS MiB | µs per customer | 1M before: s | 1M before: MiB "
        "| vs bulk insert | vs ASOF join |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    bulk = next((r["seconds"] for r in results if r["case"] == BASELINE), None)
    asof = next((r["seconds"] for r in results if r["case"] == ASOF), None)
    for r in results:
        ratio = f"{r['seconds'] / bulk:.1f}x" if r.get("vs_bulk") and bulk else ""
        vs_asof = f"{r['seconds'] / asof:.1f}x" if r.get("vs_asof") and asof else ""
        per = f"{r['seconds'] * 1e6 / args.customers:.1f}" if isinstance(r["seconds"], float) else ""
        before = next((ref for name, ref in BEFORE_1M.items() if r["case"].startswith(name)), ("", ""))
        print(
            f"| {r['case']} | {r['size']} | {r['seconds']} | {r.get('cpu_s', '')} | {r['peak_mib']} | {per} "
            f"| {before[0]} | {before[1]} | {ratio} | {vs_asof} |"
        )


if __name__ == "__main__":
    main()
