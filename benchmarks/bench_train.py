"""Training-side benchmark on the simulated brand: training set, train, evaluate, at two sizes.

For each size a brand with enough customers to log about that many decisions in 180 days is
simulated, ingested and featurised (``prepare``, the data side: benchmarks/bench_data.py measures
it in detail), then each step runs in its own process so its peak RSS is its own:

    asof          the baseline for training_set: a bare DuckDB ASOF join of the same decisions with
                  the touch-history snapshots (benchmarks.bench_data.asof_baseline, best of 3)
    training_set  labels (feedback / attribution) + Feast get_historical_features (training.dataset)
    shared        fit one booster with the action as a feature (training.train.fit) + evaluate
    per_action    fit one booster per action (training.train.fit_per_action) + evaluate (--compare)

Evaluation (training.evaluate) runs on the latest 15% of decisions, with the simulator's ground
truth, so the table also shows the learned policy's true value as a share of the oracle's gain
over random, and the doubly robust estimate next to the true value.

    .venv/bin/python -m benchmarks.bench_train                         # 100k and 1M decisions
    .venv/bin/python -m benchmarks.bench_train --decisions 100000 --compare
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from nexttouch.catalog import Catalog
from nexttouch.model import Calibration, CalibrationMethod, DecisionModel
from nexttouch.schemas import ACTION, OUTCOME
from nexttouch.telemetry import TELEMETRY_OFF
from training.train import MONOTONE_INCREASING, PARAMS, feature_columns, fit_booster, split_by_time

ROOT = Path(__file__).resolve().parent.parent
END = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 180
DECISION_RATE = 0.08  # the simulator's default daily chance of a decision per customer
TRAINSET = "trainset.parquet"


class PerActionModel:
    """One calibrated booster per action: the alternative structure, measured against the shared one."""

    def __init__(self, boosters: dict[str, lgb.Booster], numeric, categorical, actions, calibration) -> None:
        self.boosters, self.numeric, self.categorical = boosters, numeric, categorical
        self.actions, self.calibration = actions, calibration

    def predict_raw(self, frame: pd.DataFrame) -> np.ndarray:
        x = DecisionModel.encode_columns(frame, self.numeric, self.categorical)
        return np.column_stack([self.boosters[a].predict(x) for a in self.actions])

    def predict_all(self, frame: pd.DataFrame) -> np.ndarray:
        return self.calibration.apply(self.predict_raw(frame), self.actions)


def fit_per_action(
    train_set: pd.DataFrame,
    catalog: Catalog,
    valid_share: float = 0.15,
    test_share: float = 0.15,
    rounds: int = 500,
    calibration: CalibrationMethod = "sigmoid",
) -> PerActionModel:
    """One booster per action on that action's logged decisions, same split, constraints and calibration."""
    params = dict(PARAMS)
    numeric, categorical = feature_columns(train_set)
    train, valid, _ = split_by_time(train_set, valid_share, test_share)
    names = [*numeric, *categorical]
    cat_idx = [names.index(c) for c in categorical]
    params["monotone_constraints"] = [int(c in MONOTONE_INCREASING) for c in names]
    boosters = {}
    for action in catalog.names:
        tr, va = train.loc[train[ACTION] == action], valid.loc[valid[ACTION] == action]
        x_tr = DecisionModel.encode_columns(tr, numeric, categorical)
        x_va = DecisionModel.encode_columns(va, numeric, categorical)
        boosters[action] = fit_booster(
            params, x_tr, tr[OUTCOME].to_numpy(), x_va, va[OUTCOME].to_numpy(), names, cat_idx, rounds
        )
    model = PerActionModel(boosters, numeric, categorical, catalog.names, Calibration())
    raw = model.predict_raw(valid)
    idx = pd.Index(catalog.names).get_indexer(valid[ACTION].astype(object))
    model.calibration = Calibration.fit(
        calibration, raw[np.arange(len(valid)), idx], valid[OUTCOME].to_numpy(), valid[ACTION].to_numpy(), catalog.names
    )
    return model


def _peak_mib() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _settings(project: Path, customers: int, every_days: int):
    from nexttouch.settings import load_settings

    return load_settings(project_dir=project, customers=customers, days=DAYS, snapshot_every_days=every_days)


def case_prepare(project: Path, customers: int, every_days: int) -> dict[str, object]:
    from features.pipeline import build_offline, feast_apply
    from nexttouch.catalog import load_catalog
    from nexttouch.ingest import ingest
    from nexttouch.simulate import write_brand

    s = _settings(project, customers, every_days)
    t = time.perf_counter()
    brand = write_brand(s, load_catalog(), END, s.landing_dir)
    ingest(s, load_catalog(), s.landing_dir, now=END)
    build = build_offline(s, END, DAYS)
    feast_apply(s)
    size = f"{customers:,} customers, {brand.events:,} events, {build.rows:,} snapshot rows (every {every_days} d)"
    return {"seconds": time.perf_counter() - t, "size": size}


def case_training_set(project: Path, customers: int, every_days: int) -> dict[str, object]:
    import pandas as pd

    from nexttouch.catalog import load_catalog
    from nexttouch.feature_store import open_store
    from training.dataset import training_set

    s = _settings(project, customers, every_days)
    decisions = pd.read_parquet(s.raw_dir / "decisions.parquet")
    catalog = load_catalog()
    open_store(s)  # Feast imported before the clock starts
    t = time.perf_counter()
    data = training_set(s, decisions, catalog)
    seconds = time.perf_counter() - t
    data.to_parquet(project / TRAINSET)
    size = f"{len(data):,} labelled decisions x {data.shape[1]} columns"
    return {"seconds": seconds, "size": size}


def case_asof(project: Path, customers: int, every_days: int) -> dict[str, object]:
    import pandas as pd

    from benchmarks.bench_data import asof_baseline

    s = _settings(project, customers, every_days)
    decisions = pd.read_parquet(s.raw_dir / "decisions.parquet", columns=["customer_id", "decided_at"])
    seconds, n = asof_baseline(s, decisions.rename(columns={"decided_at": "event_timestamp"}))
    return {"seconds": seconds, "size": f"{n:,} decisions x touch_history.parquet (best of 3)"}


def _train_and_evaluate(project: Path, customers: int, every_days: int, per_action: bool) -> dict[str, object]:
    import pandas as pd

    from nexttouch.catalog import load_catalog
    from training.evaluate import evaluate, load_truth
    from training.train import fit

    s = _settings(project, customers, every_days)
    catalog = load_catalog()
    data = pd.read_parquet(project / TRAINSET)
    t = time.perf_counter()
    if per_action:
        model = fit_per_action(data, catalog)
        test = split_by_time(data, 0.15, 0.15)[2]
    else:
        result = fit(data, catalog)
        model, test = result.model, result.test
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ev = evaluate(model, test, catalog, truth=load_truth(s), out_dir=Path(tmp))  # no registry here
    eval_s = time.perf_counter() - t
    return {
        "fit_s": fit_s,
        "evaluate_s": eval_s,
        "rows": len(data),
        "test_rows": len(test),
        "metrics": {k: v for k, v in ev.metrics.items() if k.startswith(("test_", "new_share"))},
        "policies": {name: pv.as_dict() for name, pv in ev.policies.items()},
    }


def case_shared(project: Path, customers: int, every_days: int) -> dict[str, object]:
    return _train_and_evaluate(project, customers, every_days, per_action=False)


def case_per_action(project: Path, customers: int, every_days: int) -> dict[str, object]:
    return _train_and_evaluate(project, customers, every_days, per_action=True)


RUNNERS = {
    "prepare": case_prepare,
    "asof": case_asof,
    "training_set": case_training_set,
    "shared": case_shared,
    "per_action": case_per_action,
}


def _one(case: str, project: Path, customers: int, every_days: int, env: dict[str, str]) -> dict[str, object]:
    cmd = [sys.executable, "-m", "benchmarks.bench_train", "--one", case, "--project", str(project)]
    cmd += ["--customers", str(customers), "--every-days", str(every_days)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _policy_lines(label: str, result: dict[str, object]) -> list[str]:
    lines = []
    for name in ("oracle", "new", "champion", "rules", "best_single", "logging", "random"):
        pv = result["policies"].get(name)
        if pv:
            lines.append(
                f"| {label} | {name} | {pv['dr']:.3f} [{pv['dr_low']:.3f}, {pv['dr_high']:.3f}] | {pv['ips']:.3f} "
                f"| {pv['snips']:.3f} | {pv['true']:.3f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", default="100000,1000000", help="comma-separated decision counts")
    parser.add_argument("--compare", action="store_true", help="also one booster per action")
    parser.add_argument("--every-days", type=int, help="snapshot spacing (default: 1 up to 20,000 customers, else 3)")
    parser.add_argument("--workdir", type=Path, help="keep projects here (reruns skip prepare/training_set)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--customers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        out = RUNNERS[args.one](args.project, args.customers, args.every_days)
        print(json.dumps({**out, "peak_mib": _peak_mib()}))
        return

    # OpenMP threads sleep while waiting: spinning ones made fits 5x slower on this busy shared machine.
    env = {**os.environ, **TELEMETRY_OFF, "PYTHONWARNINGS": "ignore"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    timing = ["| decisions | step | size | seconds | peak RSS MiB |", "|---|---|---|---|---|"]
    quality = [
        "| decisions | model | test log loss | test AUC | new policy's share of the oracle's gain over random |",
        "|---|---|---|---|---|",
    ]
    values = ["| decisions | policy | DR [95% CI] | IPS | SNIPS | true |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="nexttouch-bench-train-") as tmp:
        for n in (int(x) for x in args.decisions.split(",")):
            customers = math.ceil(n / (DAYS * DECISION_RATE))
            every = args.every_days or (1 if customers <= 20_000 else 3)
            project = (args.workdir or Path(tmp)) / f"d{n}"
            label = f"{n:,}"
            if not (project / "features").exists():
                sys.path.insert(0, str(ROOT))
                from nexttouch.jobs.project import copy_feature_repo

                project.mkdir(parents=True, exist_ok=True)
                copy_feature_repo(project)
            if not (project / "data" / "raw").exists():
                r = _one("prepare", project, customers, every, env)
                step = "prepare (simulate, ingest, features)"
                timing.append(_row(label, step, r["size"], f"{r['seconds']:.1f}", f"{r['peak_mib']:,}"))
            if not (project / TRAINSET).exists():
                asof = _one("asof", project, customers, every, env)
                step = "training set baseline: bare DuckDB ASOF join of the decisions"
                timing.append(_row(label, step, asof["size"], f"{asof['seconds']:.1f}", f"{asof['peak_mib']:,}"))
                r = _one("training_set", project, customers, every, env)
                step = f"training set (labels + Feast): {r['seconds'] / asof['seconds']:.1f}x the ASOF join"
                timing.append(_row(label, step, r["size"], f"{r['seconds']:.1f}", f"{r['peak_mib']:,}"))
            for case in ("shared", "per_action") if args.compare else ("shared",):
                r = _one(case, project, customers, every, env)
                name = "one booster, action as feature" if case == "shared" else "one booster per action"
                peak = f"{r['peak_mib']:,}"
                timing.append(_row(label, f"train: {name}", f"{r['rows']:,} rows", f"{r['fit_s']:.1f}", peak))
                test = f"{r['test_rows']:,} test rows"
                timing.append(_row(label, "evaluate (+ plots, report)", test, f"{r['evaluate_s']:.1f}", "same process"))
                m = r["metrics"]
                share = f"{m['new_share_of_oracle_gain']:.1%}"
                quality.append(_row(label, name, f"{m['test_logloss']:.4f}", f"{m['test_auc']:.3f}", share))
                if case == "shared":
                    values += _policy_lines(label, r)
            print("\n".join(timing), flush=True)
    print()
    print("\n".join(quality))
    print()
    print("\n".join(values))


if __name__ == "__main__":
    main()
