"""Load across replicas: two `bentoml serve` replicas (one worker each, directories of their own) on the
production profile, driven at the same rate each for minutes, with the soak's load client.

    .venv/bin/python -m benchmarks.bench_replicas                      # 2 x 150 req/s for 5 minutes
    .venv/bin/python -m benchmarks.bench_replicas --minutes 1 --rate 50

Every store is shared as in production: Redis on 127.0.0.1:6379 (db 15, a Feast project of its own), the
decision and event log, Feast's SQL registry and an `mlflow server` on PostgreSQL at 127.0.0.1:5432 (throwaway
databases). A simulated brand is built, trained on the MLflow server and loaded into Redis first. Each replica
gets its own load process (open loop, the soak's mix: half /decide, a quarter /events, a quarter /feedback).
Printed: each replica's windows (requests, errors, latency, RSS of its process tree), then one table: errors,
p99 per replica, RSS at the start and end, and the decisions received that are missing from the log.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks import soak

REDIS_DB = 15


def _missing(url: str, table: str, column: str, ids: list[str]) -> list[str]:
    import psycopg

    with psycopg.connect(url) as db:
        found = {r[0] for r in db.execute(f"SELECT {column} FROM {table} WHERE {column} = ANY(%s)", [ids])}
    return sorted(set(ids) - found)


def _rss_start_end(result: soak.SoakResult) -> tuple[float, float]:
    """RSS of the replica's tree after the first window (warm-up) and at the end, MiB."""
    after = [m for t, m in result.rss_mib if t >= min(result.seconds / 4, 60.0)] or [m for _, m in result.rss_mib]
    return after[0], after[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the load run")
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second to each replica")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per table row")
    parser.add_argument("--customers", type=int, default=2000, help="customers of the simulated brand")
    args = parser.parse_args(argv)

    from nexttouch.catalog import load_catalog
    from nexttouch.telemetry import switch_off
    from serving import server
    from tests.conftest import free_port
    from tests.production import deployment, replica_host

    switch_off()
    with tempfile.TemporaryDirectory(prefix="nexttouch-replicas-") as tmp:
        base = Path(tmp)
        started = time.monotonic()
        print(f"building a {args.customers:,}-customer brand on the shared stores in {tmp} ...", flush=True)
        with deployment(base, load_catalog(), REDIS_DB, customers=args.customers, days=120) as trainer:
            print(f"built and trained in {time.monotonic() - started:.0f}s", flush=True)
            customers = soak.known_customers(trainer.project_dir)
            hosts = [replica_host(trainer, base / f"host-{n}", port=free_port(), workers=1) for n in "ab"]
            keys = [secrets.token_urlsafe(24) for _ in hosts]
            procs = []
            try:
                for host, key in zip(hosts, keys, strict=True):
                    procs.append(server.start(host, base / f"serve-{host.project_dir.name}.log", api_key=key))
                load_before = os.getloadavg()
                print(
                    f"driving 2 replicas at {args.rate:g} req/s each for {args.minutes:g} min "
                    f"(load average before: {load_before[0]:.2f}) ...",
                    flush=True,
                )
                # One load process per replica: one client process would queue 2 x rate requests behind its GIL.
                spawn = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(2, mp_context=spawn) as pool:
                    futures = [
                        pool.submit(
                            soak.run,
                            f"http://127.0.0.1:{host.port}",
                            60 * args.minutes,
                            args.rate,
                            customers,
                            api_key=key,
                            pid=proc.pid,
                            window_s=args.window,
                            seed=k + 1,
                        )
                        for k, (host, key, proc) in enumerate(zip(hosts, keys, procs, strict=True))
                    ]
                    results = [f.result() for f in futures]
                load_after = os.getloadavg()
            finally:
                for proc in procs:
                    server.stop(proc)
            log = trainer.decision_log_url
            assert log is not None
            rows = []
            for name, result in zip("ab", results, strict=True):
                print(f"\nreplica {name}:\n{soak.table(result)}")
                for line in result.errors[:10]:
                    print(f"error: {line}")
                lost = _missing(log, "decisions", "decision_id", result.decision_ids)
                gone = _missing(log, "touch_events", "event_id", result.event_ids)
                rows.append((name, result, lost, gone))

        print(
            f"\nload average (1 min) before the run {load_before[0]:.2f}, at its end {load_after[0]:.2f} "
            f"(5 min: {load_after[1]:.2f}); {os.cpu_count()} cores"
        )
        head = "| replica | requests | req/s | errors | /decide p50 ms | p99 ms | all p99 ms | RSS start → end MiB "
        head += "| decisions received | missing from the log | events accepted | missing |"
        print("\n" + head)
        print("|" + "---|" * (head.count("|") - 1))
        for name, result, lost, gone in rows:
            p50, _p95, p99, _max = result.percentiles()
            all_p99 = result.percentiles("all_ms")[2]
            start, end = _rss_start_end(result)
            print(
                f"| {name} | {result.total:,} | {result.total / result.seconds:.1f} "
                f"| {sum(w.errors for w in result.windows)} | {p50:.1f} | {p99:.1f} | {all_p99:.1f} "
                f"| {start:,.0f} → {end:,.0f} ({100 * (end - start) / start:+.1f} %) "
                f"| {len(result.decision_ids):,} | {len(lost)} | {len(result.event_ids):,} | {len(gone)} |"
            )
        failed = any(r.errors or lost or gone for _, r, lost, gone in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
