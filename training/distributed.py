"""LightGBM on a Dask cluster, for training sets too big for one machine (settings.dask_scheduler).

The training rows are split into one partition per worker, each read and encoded on its worker,
and trained with ``lightgbm.DaskLGBMClassifier`` (LightGBM's own distributed data-parallel learner). Early stopping
is done after training, on the same time-based validation period as the local trainer: the number
of trees with the lowest validation log loss is kept (workers see only their own partitions, so
stopping inside distributed training would let them disagree).
"""

from __future__ import annotations

import logging
import math
import warnings

import lightgbm as lgb
import numpy as np

from nexttouch.model import DecisionModel
from nexttouch.schemas import ACTION
from training.dataset import Rows

log = logging.getLogger(__name__)
# Core parameters LightGBM's scikit-learn API takes under its own names; threads are the workers'.
_SKLEARN_NAMES = {"seed": "random_state"}
_NOT_ON_DASK = {"objective", "num_threads"}


def best_iteration(booster: lgb.Booster, x_valid: np.ndarray, y_valid: np.ndarray) -> int:
    """Number of trees (>= 1) with the lowest validation log loss, from cumulative raw scores."""
    raw = np.zeros(len(x_valid))
    best, best_loss = 1, math.inf
    for i in range(booster.num_trees()):
        raw += booster.predict(x_valid, start_iteration=i, num_iteration=1, raw_score=True)
        # log loss from log-odds, numerically stable: log(1 + e^-z) for y=1, log(1 + e^z) for y=0
        loss = float(np.mean(np.logaddexp(0.0, np.where(y_valid == 1, -raw, raw))))
        if loss < best_loss:
            best, best_loss = i + 1, loss
    return best


def fit_booster_on_dask(
    scheduler: str,
    params: dict[str, object],
    train: Rows,
    template: DecisionModel,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    names: list[str],
    cat_idx: list[int],
    rounds: int,
) -> lgb.Booster:
    """Train on the Dask cluster at ``scheduler``; returns a local booster cut at its best iteration.

    Each worker's partition of the training rows is encoded on that worker: a training set on disk is
    read there (the project directory must be on storage the workers share), never in this process.
    """
    import dask
    import dask.array as da
    from distributed import Client

    with Client(scheduler) as client:
        addresses = sorted(client.scheduler_info()["workers"])
        workers = max(len(addresses), 1)
        n, width = len(train), len(names)
        rows = max(math.ceil(n / workers), 1)
        xs, ys = [], []
        # Partition i is made on worker i, its labels sent there: LightGBM trains each worker on what it holds.
        for lo, where in zip(range(0, n, rows), addresses, strict=False):
            hi = min(lo + rows, n)
            part = client.submit(_design, train.rows(lo, hi), template, workers=[where], pure=False)
            label = client.scatter(y_train[lo:hi], workers=[where])
            xs.append(da.from_delayed(dask.delayed(part), (hi - lo, width), float))
            ys.append(da.from_delayed(dask.delayed(label), (hi - lo,), y_train.dtype))
        x, y = da.concatenate(xs, axis=0), da.concatenate(ys, axis=0)
        kwargs = {_SKLEARN_NAMES.get(k, k): v for k, v in params.items() if k not in _NOT_ON_DASK}
        model = lgb.DaskLGBMClassifier(client=client, n_estimators=rounds, **kwargs)
        with warnings.catch_warnings():  # threads are the workers' (n_jobs is always set by the sklearn API)
            warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
            model.fit(x, y, feature_name=names, categorical_feature=cat_idx)
        booster = model.to_local().booster_
    best = best_iteration(booster, x_valid, y_valid)
    log.info("dask: %d workers, %d trees, best on validation %d", workers, booster.num_trees(), best)
    cut = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    cut.best_iteration = best
    return cut


def _design_rows(rows: Rows, template: DecisionModel) -> np.ndarray:
    """The model input of ``rows`` (on a worker)."""
    frame = rows.read()
    return template.design(frame, frame[ACTION].to_numpy())


_design = _design_rows  # what the tasks run
