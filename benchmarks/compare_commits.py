"""Two checkouts side by side in one run: the decision service and the plan, old commit vs new.

    git worktree add /tmp/old <commit> && make -C /tmp/old setup
    .venv/bin/python -m benchmarks.compare_commits --old /tmp/old --rounds 2

Each round runs both checkouts, in alternating order, on the same built project: ``bench_serve``
(no-op baseline, /decide closed loop, /decide/batch) and the real `nexttouch plan` command on a
project replicated to ``--plan-customers``. The table gives the median over rounds and new / old.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(?P<case>[^:|]+): (?P<rate>[\d,]+)/s p50 (?P<p50>[\d.]+) ms p99 (?P<p99>[\d.]+) ms errors (\d+)")


def serve(checkout: Path, project: Path, seconds: float) -> dict[str, float]:
    cmd = [str(checkout / ".venv/bin/python"), "-m", "benchmarks.bench_serve", "--project-dir", str(project)]
    cmd += ["--soak-minutes", "0", "--seconds", str(seconds)]
    out = subprocess.run(cmd, cwd=checkout, check=True, capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            found[m["case"]] = float(m["rate"].replace(",", ""))
            found[m["case"] + " p99"] = float(m["p99"])
    noop = found["no-op BentoML endpoint, closed loop"]
    decide = found["/decide, closed loop"]
    batch = next(v for k, v in found.items() if k.startswith("/decide/batch") and not k.endswith("p99"))
    return {"/decide x no-op": decide / noop, "/decide/s": decide, "/decide/batch customers/s": batch}


def plan(checkout: Path, project: Path, source: Path, at: str) -> dict[str, float]:
    env = {**os.environ, "NEXTTOUCH_TRACKING_URI": f"sqlite:///{source / 'mlruns' / 'mlflow.db'}"}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(checkout / ".venv/bin/nexttouch"), "plan", "--project-dir", str(project), "--at", at]
        t = time.perf_counter()
        subprocess.run([*cmd, "--out", f"{tmp}/plan.parquet"], cwd=checkout, check=True, capture_output=True, env=env)
        return {"`nexttouch plan` s": time.perf_counter() - t}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="checkout of the old commit, with its .venv")
    parser.add_argument("--new", type=Path, default=ROOT, help="checkout of the new commit (default: this one)")
    parser.add_argument("--project-dir", type=Path, help="a built project (default: build 2,000 customers)")
    parser.add_argument("--plan-customers", type=int, default=1_000_000)
    parser.add_argument("--at", default="2026-11-01T17:00:00", help="plan time, UTC")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per serving case")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()

    from benchmarks.bench_plan import replicate
    from benchmarks.bench_serve import build_project

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="compare_"))
    project = args.project_dir.resolve() if args.project_dir else build_project(work / "p", 2000)
    big = work / f"plan_{args.plan_customers}"
    if not big.exists():
        replicate(project, big, args.plan_customers)
    checkouts = {"old": args.old.resolve(), "new": args.new.resolve()}
    results: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    for r in range(args.rounds):
        for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
            measured = serve(checkouts[name], project, args.seconds) | plan(checkouts[name], big, project, args.at)
            for k, v in measured.items():
                results[name].setdefault(k, []).append(v)
            print(f"round {r + 1} {name}: {measured}", file=sys.stderr, flush=True)
    print(f"\nmedian of {args.rounds} rounds, old and new alternating; plan on {args.plan_customers:,} customers\n")
    print("| measure | old | new | new / old |\n|---|---:|---:|---:|")
    for k in results["new"]:
        old, new = statistics.median(results["old"][k]), statistics.median(results["new"][k])
        print(f"| {k} | {old:,.2f} | {new:,.2f} | {new / old:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
