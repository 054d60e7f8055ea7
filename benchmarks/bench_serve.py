"""Serving benchmark: the real service against a no-op BentoML baseline, in the same run.

    .venv/bin/python -m benchmarks.bench_serve                       # builds a 2,000-customer project
    .venv/bin/python -m benchmarks.bench_serve --project-dir DIR --workers 2 --soak-minutes 5

Both services run as real `bentoml serve` processes on 127.0.0.1 with the same worker count and
API key middleware; the client is a lean asyncio HTTP/1.1 keep-alive client in this process (it
shares the machine's cores with the server, as any same-host benchmark does). Cases:

- closed loop: C connections send back to back for S seconds -> requests/s, p50, p99;
- open loop at a fixed rate (default 300/s): latency measured from the scheduled send time;
- /decide/batch of B customers, closed loop on 2 connections per worker -> customers/s, with and
  without the reasons (`"explain": false`);

Connections are spread evenly over the workers (see ``connect``), as a load balancer would.
- soak: open loop for M minutes; RSS of the service process tree before and after;
- per-customer learning on (``--learning-sd``): /decide closed loop, and /decide and /feedback
  alternating in an open loop, so posteriors are read and written.

Prints one table (ratios against the no-op baseline) and the in-process profile of the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

DAY = "2026-11-02T12:00:00Z"


@dataclass
class Result:
    case: str
    requests: int
    errors: int
    seconds: float
    latencies: np.ndarray  # seconds
    rows_per_request: int = 1
    cpu_s: float = float("nan")  # the server tree's CPU seconds during the case

    @property
    def rate(self) -> float:
        return self.requests * self.rows_per_request / self.seconds

    @property
    def cpu_ms(self) -> float:
        """Server CPU milliseconds per request."""
        return 1000 * self.cpu_s / self.requests if self.requests else float("nan")

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if len(self.latencies) else float("nan")


def _request(path: str, body: dict, key: str, port: int) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def connect(port: int, n: int, server_pid: int | None = None) -> list[tuple]:
    """``n`` keep-alive connections, spread evenly over the server's worker processes.

    BentoML's workers accept from one shared socket and the kernel may hand most of a few
    long-lived connections to one worker, leaving the other idle (a load balancer in front of
    replicas spreads them). Surplus connections on a busy worker are replaced until each worker
    holds its share. Without ``server_pid`` the connections are taken as they come.
    """
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
    if server_pid is None:
        return conns
    workers = [p for p in psutil.Process(server_pid).children(recursive=True) if _listens(p, port)]
    share = -(-n // max(len(workers), 1))
    for _ in range(20 * n):
        owner = _owners(workers, port)
        counts: dict[int, int] = {}
        for _, writer in conns:
            pid = owner.get(writer.get_extra_info("sockname")[1])
            counts[pid] = counts.get(pid, 0) + 1
        over = next((c for c in conns if counts.get(owner.get(c[1].get_extra_info("sockname")[1]), 0) > share), None)
        if over is None:
            break
        conns.remove(over)
        over[1].close()
        conns.append(await asyncio.open_connection("127.0.0.1", port))
        await asyncio.sleep(0.01)  # let the new connection be accepted before counting again
    return conns


def _listens(proc: psutil.Process, port: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return any(c.laddr and c.laddr.port == port and c.status == "LISTEN" for c in proc.net_connections("tcp"))
    return False


def _owners(workers: list[psutil.Process], port: int) -> dict[int, int]:
    """Client port -> pid of the worker that accepted the connection."""
    owner = {}
    for w in workers:
        with contextlib.suppress(psutil.Error):
            for c in w.net_connections("tcp"):
                if c.laddr and c.laddr.port == port and c.raddr:
                    owner[c.raddr.port] = w.pid
    return owner


async def closed_loop(
    port: int, requests: Sequence[bytes], connections: int, seconds: float, server_pid: int | None = None
) -> tuple:
    latencies: list[float] = []
    errors = 0
    pool = await connect(port, connections, server_pid)
    end = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal errors
        reader, writer = pool[offset]
        i = offset
        while time.perf_counter() < end:
            t = time.perf_counter()
            status = await _exchange(reader, writer, requests[i % len(requests)])
            latencies.append(time.perf_counter() - t)
            errors += status != 200
            i += connections
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(connections)))
    return len(latencies), errors, time.perf_counter() - start, np.array(latencies)


async def open_loop(
    port: int, requests: Sequence[bytes], rate: float, seconds: float, pool: int = 32, server_pid: int | None = None
) -> tuple:
    """Send at a fixed rate; latency counts from the scheduled time (a slow server cannot hide queueing)."""
    conns: asyncio.Queue = asyncio.Queue()
    for conn in await connect(port, pool, server_pid):
        conns.put_nowait(conn)
    latencies: list[float] = []
    errors = 0

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        reader, writer = await conns.get()
        try:
            status = await _exchange(reader, writer, requests[i % len(requests)])
        finally:
            conns.put_nowait((reader, writer))
        latencies.append(time.perf_counter() - scheduled)
        errors += status != 200

    start = time.perf_counter()
    tasks = []
    n = int(rate * seconds)
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not conns.empty():
        conns.get_nowait()[1].close()
    return n, errors, elapsed, np.array(latencies)


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far: what the server spent, whatever
    else the (shared) machine was doing."""
    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def tree_rss_mib(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


def build_project(base: Path, customers: int) -> Path:
    from datetime import UTC, datetime

    from nexttouch.catalog import load_catalog
    from nexttouch.jobs.project import build_project as build
    from nexttouch.settings import load_settings

    settings = load_settings(project_dir=base, customers=customers, days=120, seed=11, decision_rate=0.15)
    build(settings, load_catalog(), datetime(2026, 11, 1, tzinfo=UTC))
    return base


def profile_hot_path(project: Path, n: int = 2000) -> list[str]:
    """In-process timing of one decision's steps (the service's own code, no HTTP), microseconds."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from datetime import UTC, datetime

    import pandas as pd

    from nexttouch.catalog import load_catalog
    from nexttouch.engine import DecisionEngine, from_row
    from nexttouch.settings import load_settings
    from serving import capacity
    from serving.champion import load_champion
    from serving.decision_log import DecisionLog, decision_rows, insert_decisions, new_decision_ids
    from serving.online_features import OnlineFeatures

    settings = load_settings(project_dir=project)
    catalog = load_catalog()
    online = OnlineFeatures(settings)
    champion = load_champion(settings)
    engine = DecisionEngine(catalog, champion.model, champion.version, settings.epsilon)
    ids = pd.read_parquet(settings.raw_dir / "customers.parquet", columns=["customer_id"])["customer_id"].tolist()
    now = datetime(2026, 11, 2, 12, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        log = DecisionLog(Path(tmp) / "d.db")
        steps = {
            "online read (Feast store, by name)": 0.0,
            "model + policy + reasons": 0.0,
            "durable log (1 commit each)": 0.0,
        }
        for i in range(n):
            cid = ids[i % len(ids)]
            t0 = time.perf_counter()
            features = online.read(cid, now)
            t1 = time.perf_counter()
            draft = engine.draft([cid], from_row(features), now)
            t2 = time.perf_counter()

            def op(tx, draft=draft):
                def take(a, bucket, at, want):
                    return capacity.take(tx, a, a.capacity.period_of(at), bucket, want)

                engine.allocate(draft, take)
                answers = engine.answers(draft, new_decision_ids(1))
                insert_decisions(tx, decision_rows(answers, {}))

            log.run(op)
            t3 = time.perf_counter()
            steps["online read (Feast store, by name)"] += t1 - t0
            steps["model + policy + reasons"] += t2 - t1
            steps["durable log (1 commit each)"] += t3 - t2
        log.close()
    return [f"| {k} | {v / n * 1e6:,.0f} |" for k, v in steps.items()]


def learning_cases(args: argparse.Namespace, project: Path, ids: list[str], key: str, tmp: str, run: Callable) -> None:
    """The service with per-customer learning on: /decide reads each customer's posteriors in its log
    transaction, and /feedback updates one before it answers. The mixed case sends a decision and an
    outcome of an earlier decision alternately, so posteriors are read and written throughout."""
    import httpx

    from nexttouch.settings import load_settings
    from serving import server
    from tests.conftest import free_port

    settings = load_settings(
        project_dir=project,
        port=free_port(),
        workers=args.workers,
        at_window_hours=24 * 365,
        affinity_prior_sd=args.learning_sd,
    )
    proc = server.start(settings, Path(tmp) / "learning" / "serve.log", api_key=key)
    try:
        decide = [_request("/decide", {"customer_id": c, "at": DAY}, key, settings.port) for c in ids]
        asyncio.run(closed_loop(settings.port, decide, args.connections, 3))  # warm-up
        run(
            "/decide, closed loop, per-customer learning on",
            closed_loop(settings.port, decide, args.connections, args.seconds, proc.pid),
            proc.pid,
        )
        # One outcome per earlier decision: a repeated outcome would change nothing (idempotent).
        outcomes = int(args.rate * args.seconds / 2) + 1
        with httpx.Client(base_url=f"http://127.0.0.1:{settings.port}", headers={"X-API-Key": key}) as client:
            made = [
                client.post("/decide", json={"customer_id": ids[i % len(ids)], "at": DAY}).json()
                for i in range(outcomes)
            ]
        feedback = [
            _request("/feedback", {"decision_id": d["decision_id"], "outcome": int(i % 3 == 0)}, key, settings.port)
            for i, d in enumerate(made)
        ]
        mixed = [r for i, f in enumerate(feedback) for r in (decide[(outcomes + i) % len(decide)], f)]
        run(
            f"/decide + /feedback, open loop {args.rate:g}/s, per-customer learning on",
            open_loop(settings.port, mixed, args.rate, args.seconds, 32, proc.pid),
            proc.pid,
        )
    finally:
        server.stop(proc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project-dir", type=Path, help="an already built project (default: build one)")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=300.0, help="open-loop requests per second")
    parser.add_argument("--batch", type=int, default=1000, help="customers per /decide/batch call")
    parser.add_argument("--soak-minutes", type=float, default=5.0)
    parser.add_argument(
        "--learning-sd", type=float, default=0.3, help="prior sd of the per-customer learning cases (0: skip them)"
    )
    args = parser.parse_args(argv)

    import pandas as pd

    from nexttouch.settings import load_settings
    from serving import server
    from tests.conftest import free_port

    with tempfile.TemporaryDirectory(prefix="nexttouch-bench-") as tmp:
        project = args.project_dir.resolve() if args.project_dir else build_project(Path(tmp) / "p", args.customers)
        ids = pd.read_parquet(project / "data" / "raw" / "customers.parquet", columns=["customer_id"])
        ids = ids["customer_id"].tolist()
        key = secrets.token_urlsafe(24)
        results: dict[str, Result] = {}
        # This client process imported Feast and MLflow (to build the project): its full GC passes
        # would add ~100 ms pauses to the latencies it measures.
        gc.collect()
        gc.freeze()

        def run(case: str, coro: object, pid: int, per: int = 1) -> Result:
            cpu = tree_cpu_s(pid)
            n, errors, seconds, lat = asyncio.run(coro)  # type: ignore[arg-type]
            results[case] = r = Result(case, n, errors, seconds, lat, per, tree_cpu_s(pid) - cpu)
            print(
                f"{case}: {r.rate:,.0f}/s p50 {r.pct(50):.2f} ms p99 {r.pct(99):.2f} ms errors {errors} "
                f"server CPU {r.cpu_ms:.2f} ms/request",
                flush=True,
            )
            return r

        # The no-op baseline first, then the real service, each alone on the machine.
        settings = load_settings(project_dir=project, port=free_port(), workers=args.workers)
        proc = server.start(settings, Path(tmp) / "noop.log", api_key=key, service="benchmarks.noop_service:Noop")
        try:
            noop = [_request("/noop", {"customer_id": c}, key, settings.port) for c in ids]
            asyncio.run(closed_loop(settings.port, noop, args.connections, 2))  # warm-up
            run(
                "no-op BentoML endpoint, closed loop",
                closed_loop(settings.port, noop, args.connections, args.seconds, proc.pid),
                proc.pid,
            )
            run(
                f"no-op, open loop {args.rate:g}/s",
                open_loop(settings.port, noop, args.rate, args.seconds, 32, proc.pid),
                proc.pid,
            )
        finally:
            server.stop(proc)

        log_dir = Path(tmp) / "service-project"
        # DAY is a fixed date: the window around the clock for `at` must hold it.
        settings = load_settings(project_dir=project, port=free_port(), workers=args.workers, at_window_hours=24 * 365)
        proc = server.start(settings, log_dir / "serve.log", api_key=key)
        try:
            decide = [_request("/decide", {"customer_id": c, "at": DAY}, key, settings.port) for c in ids]
            chunks = [ids[i : i + args.batch] for i in range(0, len(ids) - args.batch + 1, args.batch)] or [
                ids[: args.batch]
            ]

            def batches(**extra: object) -> list[bytes]:
                return [
                    _request(
                        "/decide/batch",
                        {"customers": [{"customer_id": c} for c in chunk], "at": DAY, **extra},
                        key,
                        settings.port,
                    )
                    for chunk in chunks
                ]

            asyncio.run(closed_loop(settings.port, decide, args.connections, 3))  # warm-up
            rss_before = tree_rss_mib(proc.pid)
            closed = closed_loop(settings.port, decide, args.connections, args.seconds, proc.pid)
            run("/decide, closed loop", closed, proc.pid)
            run(
                f"/decide, open loop {args.rate:g}/s",
                open_loop(settings.port, decide, args.rate, args.seconds, 32, proc.pid),
                proc.pid,
            )
            for label, extra in (("", {}), (", without reasons", {"explain": False})):
                run(
                    f"/decide/batch ({args.batch} customers{label}), closed loop",
                    # two per worker: one is decided while the other's read and commit wait
                    closed_loop(settings.port, batches(**extra), 2 * args.workers, args.seconds, proc.pid),
                    proc.pid,
                    per=args.batch,
                )
            soak = None
            if args.soak_minutes > 0:
                rss_start = tree_rss_mib(proc.pid)
                soak = run(
                    f"soak: /decide open loop {args.rate:g}/s for {args.soak_minutes:g} min",
                    open_loop(settings.port, decide, args.rate, args.soak_minutes * 60, 32, proc.pid),
                    proc.pid,
                )
                rss_end = tree_rss_mib(proc.pid)
        finally:
            server.stop(proc)

        if args.learning_sd > 0:
            learning_cases(args, project, ids, key, tmp, run)

        base_closed = results["no-op BentoML endpoint, closed loop"]
        print(
            f"\nworkers={args.workers}, connections={args.connections}, {args.seconds:g} s per case, "
            f"{len(ids):,} customers"
        )
        print("\n| case | decisions/s | x no-op | p50 ms | p99 ms | errors |")
        print("|---|---|---|---|---|---|")
        for r in results.values():
            ratio = f"{r.rate / base_closed.rate:.2f}" if "closed" in r.case else ""
            print(f"| {r.case} | {r.rate:,.0f} | {ratio} | {r.pct(50):.2f} | {r.pct(99):.2f} | {r.errors} |")
        print(f"\nRSS of the service (server + {args.workers} workers): {rss_before:,.0f} MiB after warm-up", end="")
        if soak is not None:
            print(
                f"; {rss_start:,.0f} MiB before and {rss_end:,.0f} MiB after the soak ({rss_end - rss_start:+,.0f} MiB)"
            )
        else:
            print()
        print("\nIn-process profile of one /decide (no HTTP), microseconds per decision:\n")
        print("| step | µs |\n|---|---|")
        for line in profile_hot_path(project):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
