"""Online read benchmark: Feast's ``get_online_features`` against the bulk ``read_online``, same run.

    .venv/bin/python -m benchmarks.bench_online_read                    # builds a 10,000-customer project
    .venv/bin/python -m benchmarks.bench_online_read --project-dir DIR --redis 127.0.0.1:6379

Both read the stored features of the project's FeatureService for N customers (the first N of
the project's customers) into a pandas frame by name; each is checked to give the same frame.
Feast's full GC passes are frozen after warm-up, as the service does. Best of ``--repeat`` runs.
With ``--redis`` the features are also bulk-loaded into Redis under a project name of their own
(removed afterwards) and read from there.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd


def build_features(base: Path, customers: int) -> Path:
    """Simulated brand -> ingested -> features built, applied and materialized (no training)."""
    from datetime import UTC, datetime

    from nexttouch.catalog import load_catalog
    from nexttouch.jobs.project import build_project
    from nexttouch.settings import load_settings

    settings = load_settings(project_dir=base, customers=customers, days=120, seed=11, decision_rate=0.15)
    build_project(settings, load_catalog(), datetime(2026, 11, 1, tzinfo=UTC), train=False)
    return base


def _best(fn: Callable[[], pd.DataFrame], repeat: int) -> tuple[float, pd.DataFrame]:
    out, best = fn(), float("inf")  # the first call warms caches
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure(settings: object, label: str, sizes: Sequence[int], repeat: int) -> list[str]:
    from features.online_read import OnlineReader
    from nexttouch.feature_store import open_store

    store = open_store(settings)
    reader = OnlineReader(store, store.get_feature_service(settings.feature_service))
    refs = [f"{v}:{f}" for v, f in reader.refs]
    ids = pd.read_parquet(settings.offline_dir / "customer_profile.parquet", columns=["customer_id"])
    ids = ids["customer_id"].tolist()
    gc.collect()
    gc.freeze()
    rows = []
    for n in sizes:
        batch = (ids * (n // len(ids) + 1))[:n] if n > len(ids) else ids[:n]

        def feast(batch: list[str] = batch) -> pd.DataFrame:
            got = store.get_online_features(features=refs, entity_rows=[{"customer_id": c} for c in batch])
            return pd.DataFrame(got.to_dict())

        t_feast, expected = _best(feast, repeat)
        t_bulk, got = _best(lambda batch=batch: reader.read(batch), repeat)
        pd.testing.assert_frame_equal(got[list(expected.columns)], expected, check_exact=True)
        rows.append(
            f"| {label} ({reader.kind}) | {n:,} | {len(refs)} | {t_feast * 1000:,.1f} | {t_bulk * 1000:,.1f} "
            f"| {t_feast / t_bulk:,.1f}x | {n / t_bulk:,.0f} |"
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-dir", type=Path, help="an already built project (default: build one)")
    parser.add_argument("--customers", type=int, default=10_000, help="customers of the project built")
    parser.add_argument("--sizes", default="1,100,1000,10000", help="customers per read, comma-separated")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--redis", help="host:port of a Redis to compare on too")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    from nexttouch.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        project = args.project_dir.resolve() if args.project_dir else build_features(Path(tmp) / "p", args.customers)
        built = time.perf_counter() - t0
        settings = load_settings(project_dir=project)
        lines = measure(settings, "SQLite", sizes, args.repeat)
        if args.redis:
            lines += _on_redis(settings, args.redis, sizes, args.repeat)
    print(f"\nProject: {project} ({'given' if args.project_dir else f'built in {built:,.0f} s'})")
    print(
        "\n| online store | customers per read | features | get_online_features ms | read_online ms "
        "| speed-up | customers/s (read_online) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines))
    return 0


def _on_redis(settings: object, url: str, sizes: Sequence[int], repeat: int) -> list[str]:
    """The same features bulk-loaded into Redis under a fresh project name, read, then removed."""
    import shutil
    from datetime import UTC, datetime

    from features.pipeline import feast_apply, materialize
    from nexttouch.feature_store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "features"
        shutil.copytree(settings.feature_repo, repo)
        (Path(tmp) / "data").mkdir()
        (Path(tmp) / "data" / "offline").symlink_to(settings.offline_dir)
        yaml = repo / "feature_store.redis.yaml"
        yaml.write_text(yaml.read_text().replace("project: nexttouch", f"project: nt_bench_{uuid.uuid4().hex[:10]}"))
        s = settings.model_copy(update={"project_dir": Path(tmp), "online_store": "redis", "redis_url": url})
        feast_apply(s)
        store = open_store(s)
        try:
            materialize(s, datetime(2026, 11, 1, tzinfo=UTC))
            return measure(s, "Redis", sizes, repeat)
        finally:
            store.teardown()


if __name__ == "__main__":
    raise SystemExit(main())
