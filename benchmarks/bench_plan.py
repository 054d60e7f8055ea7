"""Benchmark `nexttouch plan`: time, peak RSS and value of the global plan vs first come, first served.

    .venv/bin/python benchmarks/bench_plan.py --project-dir /path/to/built/project --sizes 100000 1000000

The project must be built (features + champion). When it has fewer customers than a size asks for,
its real latest feature frame is replicated (new customer ids) up to that size and the plan core is
timed on it: scoring with the champion's raw booster, the global capacity assignment, the reasons
and the parquet file (the feature read is timed at the project's real size). Each size runs in its
own process so that its peak RSS is its own. Plan value is compared with first come, first served
(customers in file order each take their best eligible action while capacity lasts), both without
exploration, on the same scores.
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


def one(project_dir: Path, size: int, at: datetime) -> dict[str, float]:
    import numpy as np

    from nexttouch.catalog import load_catalog
    from nexttouch.plan import first_come_first_served, latest_features, plan_actions, plan_frame, predict, write_plan
    from nexttouch.settings import load_settings
    from serving.champion import load_champion

    settings = load_settings(project_dir=project_dir)
    catalog = load_catalog(settings.catalog_path)
    t = time.perf_counter()
    real = latest_features(settings, at)
    read_s = time.perf_counter() - t
    model = load_champion(settings).model
    replicated = size > len(real)
    frame = real
    if replicated:
        frame = real.iloc[np.resize(np.arange(len(real)), size)].reset_index(drop=True)
        frame["customer_id"] = [f"R{i:08d}" for i in range(size)]
    else:
        frame = real.iloc[:size].reset_index(drop=True)

    t = time.perf_counter()
    p = predict(model, frame, catalog.names)
    score_s = time.perf_counter() - t
    t = time.perf_counter()
    plan = plan_actions(catalog, frame, p, at, epsilon=settings.epsilon, seed=1, default_time_zone="UTC")
    plan_s = time.perf_counter() - t
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_plan(plan_frame(catalog, frame, plan), Path(tmp) / "plan.parquet")
    write_s = time.perf_counter() - t

    exploit = plan_actions(catalog, frame, p, at)
    t = time.perf_counter()
    fcfs = first_come_first_served(catalog, frame, p, at)
    fcfs_s = time.perf_counter() - t
    values = exploit.values
    rows = np.arange(len(frame))
    return {
        "size": size,
        "real_customers": len(real),
        "replicated": replicated,
        "read_s": read_s,
        "score_s": score_s,
        "plan_s": plan_s,
        "write_s": write_s,
        "core_s": score_s + plan_s + write_s,
        "fcfs_s": fcfs_s,
        "plan_value": float(values[rows, exploit.action].sum()),
        "fcfs_value": float(values[rows, fcfs].sum()),
        "fallback_value": float(values[rows, exploit.fallback].sum()),  # no scarce action for anyone
        "scarce_given": int(
            np.isin(exploit.action, [catalog.names.index(a) for a in ("event_invite", "advisor_call")]).sum()
        ),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--at", default="2026-11-01T17:00:00", help="Plan time, UTC (quiet hours).")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    at = datetime.fromisoformat(args.at).replace(tzinfo=UTC)
    if args.one:
        print(json.dumps(one(args.project_dir, args.one, at)))
        return

    cli = Path(sys.executable).with_name("nexttouch")
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(cli), "plan", "--project-dir", str(args.project_dir), "--at", args.at, "--out", f"{tmp}/p.parquet"]
        subprocess.run(cmd, check=True, capture_output=True)
    cli_s = time.perf_counter() - t

    rows = []
    for size in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--project-dir", str(args.project_dir), "--at", args.at, "--one", str(size)],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))

    real = rows[0]["real_customers"]
    print(f"`nexttouch plan` end to end on the real project ({real:,} customers, incl. imports): {cli_s:.1f} s")
    print(f"latest feature read ({real:,} real customers): {rows[0]['read_s']:.1f} s\n")
    print(
        "| customers | data | score (booster) | plan (LP) | reasons + parquet | core total | peak RSS "
        "| plan value | FCFS value | plan / FCFS | value added by scarce capacity: plan / FCFS |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        data = f"real x{r['size'] / r['real_customers']:.0f} (replicated)" if r["replicated"] else "real"
        print(
            f"| {r['size']:,} | {data} | {r['score_s']:.1f} s | {r['plan_s']:.1f} s | {r['write_s']:.1f} s "
            f"| {r['core_s']:.1f} s | {r['peak_rss_gib']:.2f} GiB | {r['plan_value']:,.0f} | {r['fcfs_value']:,.0f} "
            f"| {r['plan_value'] / r['fcfs_value']:.4f} "
            f"| {r['plan_value'] - r['fallback_value']:,.0f} / {r['fcfs_value'] - r['fallback_value']:,.0f} "
            f"= {(r['plan_value'] - r['fallback_value']) / (r['fcfs_value'] - r['fallback_value']):.2f} |"
        )


if __name__ == "__main__":
    main()
