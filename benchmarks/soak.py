"""Load and soak: drive /decide, /events and /feedback of a real `bentoml serve` at a steady rate.

    .venv/bin/python -m benchmarks.soak --minutes 15            # builds a small simulated project
    .venv/bin/python -m benchmarks.soak --minutes 1 --project-dir DIR --rate 30

Requests are sent on a fixed schedule (open loop: a slow answer does not slow the sender), half
/decide, a quarter /events, a quarter /feedback for a decision received earlier. The run prints one
row per window: requests, errors, latency percentiles and the RSS of the service process tree
(server + workers), then checks that every decision id the client received is in the decision log.
The test suite runs the same driver for ~20 s (tests/test_reliability_service.py).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import secrets
import socket
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import psutil

ENDPOINTS = ("decide", "events", "feedback")
TOUCHES = ("app_session", "app_like", "push_opened", "store_visit", "purchase")


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (the server and its workers), MiB."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


@dataclass
class Window:
    """What happened in one reporting window."""

    start_s: float
    requests: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    decide_ms: list[float] = field(default_factory=list)
    all_ms: list[float] = field(default_factory=list)
    rss_mib: float = float("nan")


@dataclass
class SoakResult:
    seconds: float
    rate: float
    windows: list[Window]
    errors: list[str]  # one line per failed request (status and body, or the transport error)
    decision_ids: list[str]  # every decision id the client received
    rss_mib: list[tuple[float, float]]  # (seconds since start, MiB)
    event_ids: list[str] = field(default_factory=list)  # every event the service answered as accepted

    @property
    def requests(self) -> Counter[str]:
        return sum((w.requests for w in self.windows), Counter())

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def percentiles(self, which: str = "decide_ms") -> tuple[float, float, float, float]:
        ms = [x for w in self.windows for x in getattr(w, which)]
        if not ms:
            return (float("nan"),) * 4
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        return float(p50), float(p95), float(p99), float(max(ms))

    def rss_growth(self) -> tuple[float, float]:
        """RSS of the service tree at the end minus after the first window (warm-up), MiB and %."""
        samples = [m for t, m in self.rss_mib if t >= min(self.seconds / 4, 60.0)]
        if len(samples) < 2:
            return float("nan"), float("nan")
        first, last = np.median(samples[:5]), np.median(samples[-5:])
        return float(last - first), float(100 * (last - first) / first)


class _Driver:
    def __init__(self, client: httpx.AsyncClient, customers: Sequence[str], seed: int) -> None:
        self.client = client
        self.customers = list(customers)
        self.rng = random.Random(seed)
        self.unanswered: list[str] = []  # decisions waiting for their feedback
        self.received: list[str] = []
        self.accepted: list[str] = []
        self.errors: list[str] = []
        self.seq = itertools.count()

    def _customer(self) -> str:
        # One call in twenty is for a customer nexttouch has never seen (cold start).
        return f"X{self.rng.randrange(10**7):07d}" if self.rng.random() < 0.05 else self.rng.choice(self.customers)

    def _request(self, kind: str) -> tuple[str, dict]:
        if kind == "decide":
            return "/decide", {"customer_id": self._customer(), "context": {"channel": self.rng.choice(["app", "web"])}}
        if kind == "feedback" and self.unanswered:
            decision = self.unanswered.pop(self.rng.randrange(len(self.unanswered)))
            return "/feedback", {"decision_id": decision, "outcome": self.rng.randint(0, 1)}
        now = datetime.now(UTC)
        events = [
            {
                "event_id": f"soak-{now:%Y%m%d%H%M%S}-{next(self.seq)}-{secrets.token_hex(4)}",
                "occurred_at": (now - timedelta(seconds=self.rng.randint(1, 3600))).isoformat(),
                "customer_id": self.rng.choice(self.customers),
                "touch_type": self.rng.choice(TOUCHES),
            }
            for _ in range(self.rng.randint(1, 3))
        ]
        return "/events", {"events": events}

    async def send(self, kind: str, window: Window) -> None:
        path, body = self._request(kind)
        name = path.strip("/")
        t0 = time.perf_counter()
        try:
            response = await self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            self.errors.append(f"{path}: {type(exc).__name__}: {exc}")
            window.requests[name] += 1
            window.errors += 1
            return
        ms = 1000 * (time.perf_counter() - t0)
        window.requests[name] += 1
        window.all_ms.append(ms)
        if response.status_code != 200:
            window.errors += 1
            self.errors.append(f"{path} {response.status_code}: {response.text[:300]}")
            return
        if name == "events":
            self.accepted += [e["event_id"] for e in body["events"]][: response.json()["accepted"]]
        if name == "decide":
            window.decide_ms.append(ms)
            decision = response.json()["decision_id"]
            self.received.append(decision)
            self.unanswered.append(decision)


async def drive(
    base_url: str,
    seconds: float,
    rate: float,
    customers: Sequence[str],
    *,
    api_key: str | None = None,
    pid: int | None = None,
    window_s: float = 60.0,
    seed: int = 1,
    max_in_flight: int = 200,
    request_timeout_s: float = 30.0,
) -> SoakResult:
    """Send ``rate`` requests/s for ``seconds`` (mix: 2 decide, 1 events, 1 feedback) and collect figures."""
    headers = {"X-API-Key": api_key} if api_key else {}
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=request_timeout_s, limits=limits
    ) as client:
        driver = _Driver(client, customers, seed)
        mix = itertools.cycle(("decide", "events", "decide", "feedback"))
        windows = [Window(0.0)]
        rss: list[tuple[float, float]] = []
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        next_rss = 0.0
        for i in itertools.count():
            due = i / rate
            if due >= seconds:
                break
            await asyncio.sleep(max(0.0, start + due - time.monotonic()))
            elapsed = time.monotonic() - start
            if elapsed >= windows[-1].start_s + window_s:
                windows[-1].rss_mib = rss[-1][1] if rss else float("nan")
                windows.append(Window(windows[-1].start_s + window_s))
            if pid is not None and elapsed >= next_rss:
                rss.append((elapsed, tree_rss_mib(pid)))
                next_rss += 1.0
            if len(tasks) >= max_in_flight:  # the service is far behind: count it, do not pile up
                windows[-1].errors += 1
                driver.errors.append("client: too many requests in flight")
                continue
            task = asyncio.create_task(driver.send(next(mix), windows[-1]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
        if pid is not None:
            rss.append((time.monotonic() - start, tree_rss_mib(pid)))
        windows[-1].rss_mib = rss[-1][1] if rss else float("nan")
    return SoakResult(time.monotonic() - start, rate, windows, driver.errors, driver.received, rss, driver.accepted)


def run(base_url: str, seconds: float, rate: float, customers: Sequence[str], **kw: object) -> SoakResult:
    """:func:`drive` from synchronous code (tests, threads)."""
    return asyncio.run(drive(base_url, seconds, rate, customers, **kw))  # type: ignore[arg-type]


def table(result: SoakResult) -> str:
    """One row per window plus a total row, as plain text."""
    head = (
        f"{'window':>9} {'requests':>8} {'decide':>6} {'events':>6} {'feedbk':>6} {'errors':>6} "
        f"{'req/s':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'RSS MiB':>8}"
    )
    lines = [head, "-" * len(head)]
    for w in result.windows:
        n = sum(w.requests.values())
        ms = w.decide_ms or [float("nan")]
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        span = min(result.seconds - w.start_s, _span(result))
        lines.append(
            f"{w.start_s:>8.0f}s {n:>8} {w.requests['decide']:>6} {w.requests['events']:>6} "
            f"{w.requests['feedback']:>6} {w.errors:>6} {n / max(span, 1e-9):>6.1f} "
            f"{p50:>7.1f} {p95:>7.1f} {p99:>7.1f} {w.rss_mib:>8.0f}"
        )
    p50, p95, p99, worst = result.percentiles()
    r = result.requests
    lines.append("-" * len(head))
    lines.append(
        f"{'total':>9} {result.total:>8} {r['decide']:>6} {r['events']:>6} {r['feedback']:>6} "
        f"{sum(w.errors for w in result.windows):>6} {result.total / result.seconds:>6.1f} "
        f"{p50:>7.1f} {p95:>7.1f} {p99:>7.1f} {result.rss_mib[-1][1] if result.rss_mib else float('nan'):>8.0f}"
    )
    growth, pct = result.rss_growth()
    a50, a95, a99, _ = result.percentiles("all_ms")
    lines.append(
        f"/decide max {worst:.1f} ms; all endpoints p50/p95/p99 {a50:.1f}/{a95:.1f}/{a99:.1f} ms; "
        f"RSS growth after warm-up {growth:+.1f} MiB ({pct:+.1f}%)"
    )
    return "\n".join(lines)


def _span(result: SoakResult) -> float:
    return result.windows[1].start_s - result.windows[0].start_s if len(result.windows) > 1 else result.seconds


def missing_events(decision_log: Path, accepted: Sequence[str]) -> list[str]:
    """Accepted event ids that are not in the event log (the decision log's ``touch_events``)."""
    return _missing(decision_log, "touch_events", "event_id", accepted)


def missing_decisions(decision_log: Path, received: Sequence[str]) -> list[str]:
    """Received decision ids that are not in the SQLite decision log."""
    return _missing(decision_log, "decisions", "decision_id", received)


def _missing(decision_log: Path, table: str, column: str, ids: Sequence[str]) -> list[str]:
    with sqlite3.connect(f"file:{decision_log}?mode=ro", uri=True) as db:
        db.execute(f"CREATE TEMP TABLE got ({column} TEXT PRIMARY KEY)")
        db.executemany("INSERT OR IGNORE INTO got VALUES (?)", [(i,) for i in ids])
        rows = db.execute(f"SELECT {column} FROM got EXCEPT SELECT {column} FROM {table}").fetchall()
    return [r[0] for r in rows]


def build_project(directory: Path, customers: int) -> Path:
    """A small simulated brand with features in Feast and a champion in MLflow (like `make demo`)."""
    from nexttouch.catalog import load_catalog
    from nexttouch.jobs.project import build_project as build
    from nexttouch.settings import load_settings

    settings = load_settings(project_dir=directory, customers=customers, days=120)
    build(
        settings,
        load_catalog(settings.catalog_path),
        datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0),
    )
    return directory


def known_customers(project_dir: Path, limit: int = 5000) -> list[str]:
    import pandas as pd

    ids = pd.read_parquet(project_dir / "data" / "raw" / "customers.parquet", columns=["customer_id"])
    return ids["customer_id"].head(limit).tolist()


def _mib(path: Path) -> float:
    files = [path, path.with_name(path.name + "-wal")]
    return sum(f.stat().st_size for f in files if f.exists()) / 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second (all endpoints)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per table row")
    parser.add_argument("--customers", type=int, default=2000, help="customers of the simulated project")
    parser.add_argument("--project-dir", type=Path, help="an already built project (default: build one)")
    args = parser.parse_args(argv)

    from nexttouch.settings import load_settings
    from serving import server

    with tempfile.TemporaryDirectory(prefix="nexttouch-soak-") as tmp:
        if args.project_dir is None:
            t = time.monotonic()
            print(f"building a simulated project ({args.customers:,} customers) in {tmp} ...", flush=True)
            project = build_project(Path(tmp) / "project", args.customers)
            print(f"built in {time.monotonic() - t:.0f}s", flush=True)
        else:
            project = args.project_dir.resolve()
        api_key = secrets.token_urlsafe(24)
        settings = load_settings(project_dir=project, port=_free_port())
        proc = server.start(settings, Path(tmp) / "serve.log", api_key=api_key)
        try:
            base = f"http://127.0.0.1:{settings.port}"
            print(f"driving {base} at {args.rate:g} req/s for {args.minutes:g} min ...", flush=True)
            result = run(
                base,
                60 * args.minutes,
                args.rate,
                known_customers(project),
                api_key=api_key,
                pid=proc.pid,
                window_s=args.window,
            )
        finally:
            server.stop(proc)
        print(table(result))
        lost = missing_decisions(settings.decision_log, result.decision_ids)
        print(f"decisions received {len(result.decision_ids):,}; missing from the decision log: {len(lost)}")
        gone = missing_events(settings.decision_log, result.event_ids)
        print(f"events accepted {len(result.event_ids):,}; missing from the event log: {len(gone)}")
        print(f"disk after the run: decision log {_mib(settings.decision_log):.1f} MiB (events included)")
        for line in result.errors[:20]:
            print(f"error: {line}")
        return 1 if result.errors or lost or gone else 0


if __name__ == "__main__":
    sys.exit(main())
