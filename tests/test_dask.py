"""LightGBM on a Dask cluster (settings.dask_scheduler): a real 2-worker LocalCluster on tiny data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nexttouch.catalog import Catalog
from nexttouch.settings import Settings, load_settings
from tests.test_evaluate import synthetic_log
from training.distributed import best_iteration
from training.train import fit


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def test_dask_training_matches_local_quality(scheduler: str, catalog: Catalog) -> None:
    log, _ = synthetic_log(catalog, n=6_000, seed=4)
    settings = load_settings(dask_scheduler=scheduler)
    one = {"num_threads": 1}  # one thread per worker: the 2 workers share 2 cores
    on_dask = fit(log, catalog, rounds=60, dask_scheduler=settings.dask_scheduler, params=one)
    local = fit(log, catalog, rounds=60, params=one)
    assert on_dask.params["trainer"] == "dask" and local.params["trainer"] == "local"
    assert 1 <= on_dask.metrics["best_iteration"] <= 60
    assert on_dask.model.booster.num_trees() == on_dask.metrics["best_iteration"]
    # Same data, same constraints, data-parallel: the validation loss is within 2% of the local one.
    assert on_dask.metrics["valid_logloss_raw"] == pytest.approx(local.metrics["valid_logloss_raw"], rel=0.02)
    p = on_dask.model.predict_all(on_dask.test)
    assert p.shape == (len(on_dask.test), len(catalog.names)) and np.isfinite(p).all()


def test_best_iteration_is_the_lowest_validation_loss() -> None:
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2_000, 3))
    y = (rng.random(2_000) < 1 / (1 + np.exp(-x[:, 0]))).astype(float)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "learning_rate": 0.3, "num_threads": 1},
        lgb.Dataset(x[:1000], y[:1000]),
        80,
    )
    best = best_iteration(booster, x[1000:], y[1000:])
    losses = []
    for k in range(1, 81):
        p = np.clip(booster.predict(x[1000:], num_iteration=k), 1e-12, 1 - 1e-12)
        losses.append(-np.mean(y[1000:] * np.log(p) + (1 - y[1000:]) * np.log(1 - p)))
    assert best == int(np.argmin(losses)) + 1 and best < 80  # overfits after a while: stopped early


READ_ON_WORKERS: list[int] = []  # rows each design task read (the local cluster's workers are threads)


def _counted_design(rows, template):
    from training.distributed import _design_rows

    READ_ON_WORKERS.append(len(rows))
    return _design_rows(rows, template)


@pytest.mark.slow
def test_dask_training_reads_the_training_set_on_disk_on_its_workers(
    built: Settings, catalog: Catalog, dask_scheduler: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker reads and encodes its own range of the training set on disk, in a task of its own;
    the model is as good as the one trained on the same rows sent from a frame."""
    import pandas as pd

    from training import dataset, distributed

    decisions = pd.read_parquet(built.raw_dir / "decisions.parquet")
    on_disk = dataset.write_training_set(built, decisions, tmp_path / "set", catalog)
    frame = on_disk.read()
    READ_ON_WORKERS.clear()
    monkeypatch.setattr(distributed, "_design", _counted_design)  # the workers are threads of this process
    one = {"num_threads": 1}
    streamed = fit(on_disk, catalog, rounds=40, dask_scheduler=dask_scheduler, params=one)
    assert sorted(READ_ON_WORKERS) == [len(streamed.train) // 2, len(streamed.train) - len(streamed.train) // 2]
    assert isinstance(streamed.train, dataset.TrainingSet) and streamed.params["trainer"] == "dask"
    in_memory = fit(frame, catalog, rounds=40, dask_scheduler=dask_scheduler, params=one)
    # Data-parallel LightGBM sums the workers' histograms in whichever order they answer: close, not bit-equal.
    assert streamed.metrics["train_rows"] == in_memory.metrics["train_rows"]
    assert streamed.metrics["valid_logloss_raw"] == pytest.approx(in_memory.metrics["valid_logloss_raw"], rel=0.02)
