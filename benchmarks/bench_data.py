"""Data-side benchmarks: simulate, ingest + features, online load, point-in-time training set.

Each case runs in a fresh process so its peak RSS is its own; cases share one temporary
project, in order. Usage:

    .venv/bin/python -m benchmarks.bench_data --customers 100000
    .venv/bin/python -m benchmarks.bench_data --customers 20000 --cases simulate,features

The online load is compared, in the same run, with a plain bulk insert of the same rows into
SQLite (the ratio column): stock `materialize` is what nexttouch uses today.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

CASES = ("simulate", "ingest", "features", "online", "bulk_sqlite", "training_set")
END = datetime(2026, 11, 1, tzinfo=UTC)


def _settings(project: Path, customers: int):
    from nexttouch.settings import load_settings

    return load_settings(project_dir=project, customers=customers)


def run_case(case: str, project: Path, customers: int) -> dict[str, object]:
    """One case, in this process; returns what it measured."""
    from nexttouch.catalog import load_catalog

    s = _settings(project, customers)
    catalog = load_catalog()
    t = time.perf_counter()
    size: object
    if case == "simulate":
        from nexttouch.simulate import write_brand

        brand = write_brand(s, catalog, END, s.landing_dir)
        size = f"{customers:,} customers, {len(brand.events):,} events"
    elif case == "ingest":
        from nexttouch.ingest import ingest

        reports = ingest(s, catalog, s.landing_dir, now=END)
        size = f"{sum(r.rows for r in reports):,} rows"
    elif case == "features":
        from features.pipeline import build_offline, feast_apply

        build = build_offline(s, END, s.days)
        feast_apply(s)
        size = f"{build.rows:,} snapshot rows"
    elif case == "online":
        from features.pipeline import materialize

        materialize(s, END)
        size = f"{customers:,} customers (stock materialize)"
    elif case == "bulk_sqlite":
        import pandas as pd

        rows = pd.read_parquet(s.offline_dir / "touch_history.parquet")
        latest = rows[rows["event_timestamp"] == rows["event_timestamp"].max()]
        t = time.perf_counter()  # reading the parquet is not part of the write
        with sqlite3.connect(project / "bulk.db") as db:
            latest.assign(event_timestamp=latest["event_timestamp"].astype(str)).to_sql(
                "bulk", db, if_exists="replace", index=False, chunksize=50_000
            )
        size = f"{len(latest):,} rows (plain SQLite insert, baseline)"
    elif case == "training_set":
        import pandas as pd

        from training.dataset import training_set

        decisions = pd.read_parquet(s.raw_dir / "decisions.parquet")
        data = training_set(s, decisions)
        size = f"{len(data):,} decisions"
    else:
        raise ValueError(case)
    seconds = time.perf_counter() - t
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": case, "size": size, "seconds": round(seconds, 2), "peak_mib": round(peak_mib)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--every-days", type=int, default=1, help="feature snapshot spacing (7: weekly)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one, args.project, args.customers, args.every_days)))
        return

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "FEAST_USAGE": "False", "MLFLOW_DISABLE_TELEMETRY": "true"}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "features").mkdir()
        for item in (root / "features").iterdir():
            if item.suffix in {".py", ".yaml"} or item.name == ".feastignore":
                (project / "features" / item.name).write_bytes(item.read_bytes())
        for case in args.cases.split(","):
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.bench_data",
                "--one",
                case,
                "--project",
                str(project),
                "--customers",
                str(args.customers),
                "--every-days",
                str(args.every_days),
            ]
            out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                results.append(
                    {
                        "case": case,
                        "size": "FAILED: " + out.stderr.strip().splitlines()[-1][:80],
                        "seconds": float("nan"),
                        "peak_mib": float("nan"),
                    }
                )
                break
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = {r["case"]: r["seconds"] for r in results}
    print(
        f"\nnexttouch data benchmarks, {args.customers:,} customers, snapshots every {args.every_days} day(s), "
        f"{os.cpu_count()} cores\n"
    )
    print(f"| {'case':<13} | {'size':<48} | {'seconds':>8} | {'peak RSS MiB':>12} | {'x bulk':>6} |")
    print(f"|{'-' * 15}|{'-' * 50}|{'-' * 10}|{'-' * 14}|{'-' * 8}|")
    for r in results:
        ratio = ""
        if r["case"] == "online" and base.get("bulk_sqlite"):
            ratio = f"{r['seconds'] / base['bulk_sqlite']:.1f}"
        print(f"| {r['case']:<13} | {r['size']:<48} | {r['seconds']:>8} | {r['peak_mib']:>12} | {ratio:>6} |")


if __name__ == "__main__":
    main()
