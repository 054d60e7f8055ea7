"""Benchmark `nexttouch plan`: wall time, peak RSS, and the value of the global plan vs first come, first served.

    .venv/bin/python benchmarks/bench_plan.py --project-dir /path/to/built/project --sizes 100000 1000000

The project must be built (features + champion). For each size larger than the project, a project
of that size is made by replicating the project's real offline feature files (customer ids made
unique, weekly snapshots as a million-customer brand keeps them) next to the same champion, and the
real `nexttouch plan` command runs on it end to end: latest-feature read, champion load, scoring
with the raw booster, the global capacity assignment, reasons and the parquet file. Each run is its
own process, so its peak RSS is its own. A second process times the stages of the plan core on the
same rows and compares the value of the plan with first come, first served (customers in file
order each take their best eligible action while capacity lasts), both without exploration.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT_EVERY = 7  # days between the replicated snapshots (1M customers keep weekly ones)


def replicate(source: Path, target: Path, size: int, every: int = SNAPSHOT_EVERY) -> int:
    """Offline feature files of ``size`` customers made of copies of ``source``'s; returns its real customers."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = target / "data" / "offline"
    out.mkdir(parents=True, exist_ok=True)
    profile = pq.read_table(source / "data" / "offline" / "customer_profile.parquet")
    real = profile.num_rows
    history = pq.read_table(source / "data" / "offline" / "touch_history.parquet")
    stamp = history.column("event_timestamp").cast(pa.timestamp("us", "UTC")).cast(pa.int64()).to_numpy()
    history = history.filter(pa.array((stamp.max() - stamp) // 86_400_000_000 % every == 0))
    for name, table in (("customer_profile", profile), ("touch_history", history)):
        column = table.schema.get_field_index("customer_id")
        with pq.ParquetWriter(out / f"{name}.parquet", table.schema) as writer:
            for copy in range(int(np.ceil(size / real))):
                take = min(real, size - copy * real)
                part = table
                if take < real:  # the last copy: only the customers that still fit
                    first = profile.column("customer_id").slice(0, take).combine_chunks()
                    part = table.filter(pc.is_in(table.column("customer_id"), value_set=first))
                ids = pc.binary_join_element_wise(f"R{copy:04d}-", part.column("customer_id"), "")
                writer.write_table(part.set_column(column, "customer_id", ids))
    return real


def core(project_dir: Path, at: datetime) -> dict[str, float]:
    """Stage times of the plan core and plan vs first-come-first-served value, on the project's rows."""
    import numpy as np

    from benchmarks.baselines import first_come_first_served
    from nexttouch.catalog import load_catalog
    from nexttouch.jobs.plan import latest_features, write_plan
    from nexttouch.plan import plan_actions, plan_frame, predict
    from nexttouch.settings import load_settings
    from serving.champion import load_champion

    settings = load_settings(project_dir=project_dir)
    catalog = load_catalog(settings.catalog_path)
    seconds = {}
    t = time.perf_counter()
    frame = latest_features(settings, at)
    seconds["read"] = time.perf_counter() - t
    t = time.perf_counter()
    model = load_champion(settings).model
    seconds["champion"] = time.perf_counter() - t
    t = time.perf_counter()
    p = predict(model, frame, catalog.names)
    seconds["score"] = time.perf_counter() - t
    t = time.perf_counter()
    plan = plan_actions(catalog, frame, p, at, epsilon=settings.epsilon, seed=1)
    seconds["plan"] = time.perf_counter() - t
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_plan(plan_frame(catalog, frame, plan), Path(tmp) / "plan.parquet")
    seconds["write"] = time.perf_counter() - t

    exploit = plan_actions(catalog, frame, p, at)
    fcfs = first_come_first_served(catalog, frame, p, at)
    rows = np.arange(len(frame))
    values = exploit.values
    return {
        "customers": len(frame),
        **{f"{k}_s": v for k, v in seconds.items()},
        "plan_value": float(values[rows, exploit.action].sum()),
        "fcfs_value": float(values[rows, fcfs].sum()),
        "fallback_value": float(values[rows, exploit.fallback].sum()),  # no scarce action for anyone
    }


def cli_run(project_dir: Path, at: str, env: dict[str, str]) -> dict[str, float]:
    """`nexttouch plan` in a child process: wall seconds and the child's peak RSS."""
    import os

    cli = Path(sys.executable).with_name("nexttouch")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(cli), "plan", "--project-dir", str(project_dir), "--at", at, "--out", f"{tmp}/plan.parquet"]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **env})
        wall = time.perf_counter() - t
    return {"wall_s": wall, "peak_rss_gib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", type=Path, required=True, help="A built project (features + champion).")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--at", default="2026-11-01T17:00:00", help="Plan time, UTC (quiet hours).")
    parser.add_argument("--work-dir", type=Path, default=None, help="Where replicated projects go (default: tmp).")
    parser.add_argument("--core", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cli", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    at = datetime.fromisoformat(args.at).replace(tzinfo=UTC)
    source = args.project_dir.resolve()
    env = {"NEXTTOUCH_TRACKING_URI": f"sqlite:///{source / 'mlruns' / 'mlflow.db'}"}  # the source's champion
    if args.core:
        print(json.dumps(core(args.core, at)))
        return
    if args.cli:
        print(json.dumps(cli_run(args.cli, args.at, env)))
        return

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_plan_"))
    rows = []
    for size in args.sizes:
        target = work / f"plan_{size}"
        t = time.perf_counter()
        real = replicate(source, target, size)
        made = time.perf_counter() - t
        me = [sys.executable, __file__, "--project-dir", str(source), "--at", args.at]
        run = json.loads(_last_line([*me, "--cli", str(target)], env))
        stages = json.loads(_last_line([*me, "--core", str(target)], env))
        rows.append({"size": size, "real": real, "made_s": made, **run, **stages})
        print(f"{size:,}: replicated in {made:.0f} s; plan {run['wall_s']:.1f} s", file=sys.stderr)

    print(f"Replicated from {rows[0]['real']:,} simulated customers (weekly snapshots); plan at {args.at} UTC.\n")
    print(
        "| customers | `nexttouch plan` wall | peak RSS | read features | load champion | score | assign (LP) "
        "| reasons + parquet | plan value / FCFS | value added by scarce capacity: plan / FCFS |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        added, fcfs_added = r["plan_value"] - r["fallback_value"], r["fcfs_value"] - r["fallback_value"]
        print(
            f"| {r['customers']:,} | {r['wall_s']:.1f} s | {r['peak_rss_gib']:.2f} GiB | {r['read_s']:.1f} s "
            f"| {r['champion_s']:.1f} s | {r['score_s']:.1f} s | {r['plan_s']:.1f} s | {r['write_s']:.1f} s "
            f"| {r['plan_value']:,.0f} / {r['fcfs_value']:,.0f} = {r['plan_value'] / r['fcfs_value']:.4f} "
            f"| {added:,.0f} / {fcfs_added:,.0f} = {added / fcfs_added:.2f} |"
        )


def _last_line(cmd: list[str], env: dict[str, str]) -> str:
    import os

    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env})
    return out.stdout.strip().splitlines()[-1]


if __name__ == "__main__":
    main()
