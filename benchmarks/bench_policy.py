"""Closed-loop policy benchmark: the champion against the baselines and the oracle in the simulated world.

The champion is trained the way the product trains it (simulate a brand's 180-day log, ingest,
features, Feast training set, LightGBM + calibration: training.job's steps) in a temporary
project, or loaded with ``--model-dir``. Then every policy runs closed loop (nexttouch.whatif)
for ``--days`` days on ``--seeds`` worlds of ``--customers`` customers, each world starting from
its own 180-day burn-in, with the same random numbers for every policy on a seed. The table
shows means with 95% intervals over seeds; the last line is the champion's share of the
oracle's margin over the best single action (the best constant policy), averaged over seeds.

    .venv/bin/python -m benchmarks.bench_policy                                   # 30,000 x 180 days
    .venv/bin/python -m benchmarks.bench_policy --customers 5000 --days 60 --seeds 2
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

# LightGBM's idle OpenMP threads sleep instead of spinning (read when LightGBM loads, so before the imports).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from nexttouch.catalog import load_catalog
from nexttouch.jobs.whatif import START, champion_from, run_whatif
from nexttouch.model import DecisionModel
from nexttouch.settings import Settings, load_settings
from nexttouch.telemetry import switch_off

TRAIN_DAYS = 180
TRAIN_SEED = 7  # the product's default seed; the closed-loop worlds use seeds 1..N


def train_champion(project: Path, customers: int) -> DecisionModel:
    """The product's training steps on a simulated brand's log, in a project of its own."""
    from features.pipeline import build_offline, feast_apply
    from nexttouch.ingest import ingest
    from nexttouch.jobs.project import copy_feature_repo
    from nexttouch.simulate import write_brand
    from training.job import build_training_set, labelled_decisions, train_model

    copy_feature_repo(project)
    settings = load_settings(project_dir=project, customers=customers, days=TRAIN_DAYS, seed=TRAIN_SEED)
    catalog = load_catalog()
    write_brand(settings, catalog, START, settings.landing_dir)
    ingest(settings, catalog, settings.landing_dir, now=START)
    build_offline(settings, START, TRAIN_DAYS)
    feast_apply(settings)
    labelled, _ = labelled_decisions(settings, catalog, START)
    data = build_training_set(settings, labelled)
    return train_model(settings, data, catalog).model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=30_000, help="customers in each closed-loop world")
    parser.add_argument("--days", type=int, default=180, help="days each policy runs")
    parser.add_argument("--seeds", type=int, default=3, help="worlds (seeds 1..N), the same for every policy")
    parser.add_argument("--model-dir", type=Path, help="a saved DecisionModel to run as champion (skips training)")
    parser.add_argument("--train-customers", type=int, help="customers of the training brand (default --customers)")
    parser.add_argument("--save-model", type=Path, help="keep the trained champion here (reuse with --model-dir)")
    parser.add_argument("--mlflow", type=Path, help="log the comparison (table, plot) to this project's MLflow store")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    switch_off()

    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nexttouch-bench-policy-") as tmp:
        if args.model_dir:
            model = champion_from(load_settings(), args.model_dir)
            source = f"loaded from {args.model_dir}"
        else:
            model = train_champion(Path(tmp), args.train_customers or args.customers)
            source = f"trained on a {args.train_customers or args.customers:,}-customer, {TRAIN_DAYS}-day log"
            if args.save_model:
                model.save(args.save_model)
    assert model is not None
    trained = time.perf_counter() - t
    settings: Settings = load_settings(project_dir=args.mlflow) if args.mlflow else load_settings()
    t = time.perf_counter()
    result = run_whatif(
        settings,
        load_catalog(settings.catalog_path),  # NEXTTOUCH_CATALOG_PATH: e.g. the same actions with other rules
        args.customers,
        args.days,
        list(range(1, args.seeds + 1)),
        model=model,
        log_to_mlflow=args.mlflow is not None,
        progress=True,
    )
    ran = time.perf_counter() - t
    c = result.comparison
    diff, half = c.paired("champion", c.best_single)
    print(
        f"closed loop: {args.customers:,} customers x {args.days} days x {args.seeds} seeds; champion {source} "
        f"({trained:.0f} s); policies ran in {ran:.0f} s; epsilon {settings.epsilon}"
    )
    print("values: true expected net value (catalog units); ± = 95% interval over seeds")
    print(result.text)
    print(f"champion - best single action ({c.best_single}), paired by seed: {diff:.4f} ± {half:.4f} per customer-day")
    if result.run_id:
        print(f"logged to MLflow run {result.run_id} in {settings.resolved_tracking_uri}")
    for other in sorted(set(c.metrics["policy"]) - {"champion"}):
        if other.startswith("champion"):
            print(
                f"{other}: share of oracle margin over best single action {100 * c.share_of_oracle_margin(other):.1f} %"
            )
    assert result.share is not None
    print(f"closed-loop share of oracle margin over best single action: {100 * result.share:.1f} %")


if __name__ == "__main__":
    main()
