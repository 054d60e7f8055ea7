"""Fit the LightGBM decision model on a time-ordered training set, calibrate it and measure it.

The decisions are split by time: the earliest ``1 - valid_share - test_share`` train the booster,
the next ``valid_share`` early-stop it and fit the calibration, the latest ``test_share`` are kept
for evaluation (training/evaluate.py), so every reported number is out of time.

One booster with the action as a categorical feature serves all actions (``structure="shared"``).
The alternative, one booster per action (``"per_action"``), is kept for the comparison in
benchmarks/bench_train.py. On the simulated brand (100k decisions) the shared model is as good or
better on every count: test log loss 0.3881 vs 0.3886, its policy's true value 69.0% vs 65.2% of
the oracle's gain over random. The parts of P(success) that do not depend on the action
(engagement, fatigue, recent contact) are learnt from every decision instead of a quarter of them,
and one booster keeps serving and its reasons (pred_contrib) simple.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from nexttouch.catalog import Catalog
from nexttouch.engine.affinity import fit_prior_sd
from nexttouch.logodds import EPS, logit
from nexttouch.model import Calibration, CalibrationMethod, DecisionModel
from nexttouch.schemas import ACTION, CUSTOMER_ID, DECIDED_AT, DECISION_ID, OUTCOME, PROPENSITY
from training import dataset
from training.dataset import FrameRows, Rows, TrainingSet

NOT_FEATURES = {DECISION_ID, CUSTOMER_ID, ACTION, PROPENSITY, OUTCOME, DECIDED_AT}
# Features the score must never decrease in (behavioural guarantee, LightGBM monotone constraints):
# more event attendance / in-person contact must not lower any action's score, the invite's included.
MONOTONE_INCREASING = ("low_in_7d", "low_in_30d", "low_in_90d", "event_attend_rate_90d")
PARAMS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 200,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambda_l2": 10.0,
    "monotone_constraints_method": "intermediate",
    "verbose": -1,
    "num_threads": 2,
    "seed": 7,
}
EARLY_STOPPING = 30
Structure = Literal["shared", "per_action"]


@dataclass
class TrainResult:
    model: DecisionModel
    metrics: dict[str, float]
    params: dict[str, object]
    train: pd.DataFrame | TrainingSet = field(repr=False)  # a training set on disk: the view of its training period
    valid: pd.DataFrame = field(repr=False)
    test: pd.DataFrame = field(repr=False)  # the out-of-time evaluation period
    # log loss per boosting round on the training and the validation period (the learning curve)
    curves: dict[str, list[float]] = field(default_factory=dict, repr=False)
    constant: list[str] = field(default_factory=list)  # features left out: one value in the training period


def split_by_time(
    data: pd.DataFrame, valid_share: float, test_share: float
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train / validation / test periods of a frame sorted by ``decided_at``."""
    data = data.sort_values([DECIDED_AT, DECISION_ID], ignore_index=True)
    n = len(data)
    a, b = int(n * (1 - valid_share - test_share)), int(n * (1 - test_share))
    return data.iloc[:a], data.iloc[a:b], data.iloc[b:]


def feature_columns(data: pd.DataFrame | Rows) -> tuple[list[str], dict[str, list[str]]]:
    """(numeric, categorical -> levels). Raw timestamps are not inputs: their recency features are.

    A training set on disk is read a batch at a time (the levels are those of all its rows)."""
    rows = data if isinstance(data, TrainingSet | FrameRows) else FrameRows(data)
    kinds = rows.read(0, 0)  # the columns' types
    features = [
        c for c in kinds.columns if c not in NOT_FEATURES and not pd.api.types.is_datetime64_any_dtype(kinds[c])
    ]
    text = [c for c in features if not pd.api.types.is_numeric_dtype(kinds[c])]
    levels: dict[str, set[str]] = {c: set() for c in text}
    if text:
        for batch in rows.batches(columns=text):
            for c in text:
                levels[c].update(batch[c].dropna().astype(str).unique().tolist())
    categorical = {c: sorted(levels[c]) for c in text}
    return [c for c in features if c not in categorical], categorical


def constant_columns(frame: pd.DataFrame | Rows, columns: list[str]) -> list[str]:
    """The ``columns`` with a single value in ``frame`` (missing counts as a value).

    A model learns nothing from them, yet would read them in serving and show them among its inputs:
    a brand without touch events has every touch-history feature at zero, and no tenure without sign-up dates.
    A training set on disk is read a batch at a time.
    """
    if isinstance(frame, pd.DataFrame):
        return [c for c in columns if frame[c].nunique(dropna=False) <= 1]
    seen: dict[str, list[object]] = {c: [] for c in columns}  # each batch's one value (None: missing)
    varies: set[str] = set()
    for batch in frame.batches(columns=columns):
        for c in columns:
            if c in varies:
                continue
            if batch[c].nunique(dropna=False) > 1:
                varies.add(c)
                continue
            value = batch[c].iloc[0]
            one = None if pd.isna(value) else value
            if seen[c] and seen[c][0] != one:
                varies.add(c)
            seen[c] = [one]
    return [c for c in columns if c not in varies]


def fit(
    train_set: pd.DataFrame | TrainingSet,
    catalog: Catalog,
    valid_share: float = 0.15,
    test_share: float = 0.15,
    rounds: int = 500,
    calibration: CalibrationMethod = "sigmoid",
    dask_scheduler: str | None = None,
    params: dict[str, object] | None = None,
) -> TrainResult:
    """Train on the earliest decisions, early-stop and calibrate on the next, keep the latest for tests.

    ``train_set`` is a frame, or a ``TrainingSet`` on disk: then the training period streams to
    LightGBM a batch at a time and only the validation and test periods are read into memory.
    ``dask_scheduler`` (an address such as ``tcp://127.0.0.1:8786``) trains on that Dask cluster with
    ``lightgbm.DaskLGBMClassifier``; without one LightGBM trains locally on threads.
    """
    params = {**PARAMS, **(params or {})}
    if isinstance(train_set, TrainingSet):  # written in (decided_at, decision_id) order
        rows: Rows = train_set
    else:
        rows = FrameRows(train_set.sort_values([DECIDED_AT, DECISION_ID], ignore_index=True))
    n = len(rows)
    a, b = int(n * (1 - valid_share - test_share)), int(n * (1 - test_share))
    numeric, categorical = feature_columns(rows)
    train, valid, test = rows.rows(0, a), rows.read(a, b), rows.read(b, n)
    constant = constant_columns(train.frame if isinstance(train, FrameRows) else train, [*numeric, *categorical])
    numeric = [c for c in numeric if c not in constant]
    categorical = {c: levels for c, levels in categorical.items() if c not in constant}
    template = DecisionModel(booster=None, numeric=numeric, categorical=categorical, actions=catalog.names)  # type: ignore[arg-type]
    names = [*template.inputs, ACTION]
    cat_idx = [names.index(c) for c in [*categorical, ACTION]]
    params["monotone_constraints"] = [int(c in MONOTONE_INCREASING) for c in names]
    y_train = np.concatenate([b[OUTCOME].to_numpy() for b in train.batches(columns=[OUTCOME])] or [np.zeros(0)])
    x_valid, y_valid = template.design(valid, valid[ACTION].to_numpy()), valid[OUTCOME].to_numpy()

    curves: dict[str, list[float]] = {}  # filled by the local trainer only
    if dask_scheduler:
        from training.distributed import fit_booster_on_dask

        booster = fit_booster_on_dask(
            dask_scheduler, params, train, template, y_train, x_valid, y_valid, names, cat_idx, rounds
        )
    else:
        x_train = DesignSequence(train, template)
        booster = fit_booster(params, x_train, y_train, x_valid, y_valid, names, cat_idx, rounds, curves)

    raw_valid = booster.predict(x_valid)
    calib = Calibration.fit(calibration, raw_valid, y_valid, valid[ACTION].to_numpy(), catalog.names)
    model = DecisionModel(booster, numeric, categorical, catalog.names, calib)
    p_valid = logged_action_scores(model, valid)
    model.affinity_sd = own_affinity_spread(valid, p_valid, catalog.names)
    metrics = {
        "valid_auc": float(roc_auc_score(y_valid, p_valid)) if len(np.unique(y_valid)) == 2 else float("nan"),
        "valid_logloss": float(log_loss(y_valid, p_valid, labels=[0, 1])),
        "valid_logloss_raw": float(log_loss(y_valid, raw_valid, labels=[0, 1])),
        "valid_base_rate": float(y_valid.mean()),
        "best_iteration": float(booster.best_iteration or booster.current_iteration()),
        "train_rows": float(len(train)),
        "valid_rows": float(len(valid)),
        **{f"valid_own_affinity_sd_{a}": sd for a, sd in model.affinity_sd.items()},
        "test_rows": float(len(test)),
    }
    used = {**params, "monotone_constraints": ",".join(c for c in names if c in MONOTONE_INCREASING)}
    run_params = {
        **used,
        "valid_share": valid_share,
        "test_share": test_share,
        "max_rounds": rounds,
        "calibration": calibration,
        "structure": "shared",
        "trainer": "dask" if dask_scheduler else "local",
    }
    kept = train.frame if isinstance(train, FrameRows) else train
    return TrainResult(model, metrics, run_params, kept, valid, test, curves, constant)


class _SequenceDataset(lgb.Dataset):
    """A Dataset from Sequences that LightGBM builds as it builds one from a matrix.

    From a matrix LightGBM samples the rows for its bins and drops the features that cannot split
    with all the parameters; from Sequences it does both in Python with the Dataset's own parameters
    only (no ``seed``, no ``min_data_in_leaf``), which gives other bins, other features and another
    model. While it is built, this one shows all of them.
    """

    _building = False

    def construct(self) -> lgb.Dataset:
        self._building = True
        try:
            return super().construct()
        finally:
            self._building = False

    def get_params(self) -> dict[str, object]:
        return dict(self.params or {}) if self._building else super().get_params()


class DesignSequence(lgb.Sequence):
    """The model input of a range of training rows for LightGBM, built a batch of rows at a time.

    LightGBM reads it twice: single rows in ascending order to sample bin boundaries, then slices
    of ``batch_size`` rows to fill the Dataset. One batch's design matrix is kept, so either way
    every batch is read and encoded once per pass and the whole matrix never exists.
    """

    def __init__(self, rows: Rows, template: DecisionModel, batch_size: int | None = None) -> None:
        self.rows, self.template = rows, template
        self.batch_size = batch_size or dataset.BATCH_ROWS
        self._block: tuple[int, np.ndarray] | None = None  # (first row, design of its batch)

    def __len__(self) -> int:
        return len(self.rows)

    def design(self, start: int, stop: int) -> np.ndarray:
        frame = self.rows.read(start, stop)
        return self.template.design(frame, frame[ACTION].to_numpy())

    def __getitem__(self, idx: int | slice) -> np.ndarray:
        if isinstance(idx, slice):
            start, stop, _ = idx.indices(len(self))
            return self.design(start, stop)
        lo = idx - idx % self.batch_size
        if self._block is None or self._block[0] != lo:
            self._block = (lo, self.design(lo, min(lo + self.batch_size, len(self))))
        return self._block[1][idx - lo]


def own_affinity_spread(valid: pd.DataFrame, p_logged: np.ndarray, actions: list[str]) -> dict[str, float]:
    """Per action, how far customers' own affinities spread beyond what the model explains, measured on
    the validation period (decisions it did not learn from): the prior of per-customer learning."""
    customer, action, outcome = (valid[c].to_numpy() for c in (CUSTOMER_ID, ACTION, OUTCOME))
    out = {}
    for a in actions:
        m = action == a
        if m.any():
            out[a] = round(fit_prior_sd(customer[m], p_logged[m], outcome[m].astype(float)), 4)
    return out


def fit_booster(
    params: dict[str, object],
    x_train: np.ndarray | lgb.Sequence,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    names: list[str],
    cat_idx: list[int],
    rounds: int,
    curves: dict[str, list[float]] | None = None,
) -> lgb.Booster:
    """Local LightGBM with early stopping on the validation period. ``curves`` receives the log loss of
    every round on both periods (the learning curve); only then is the training period scored each round.
    ``x_train`` is a matrix or a ``DesignSequence`` (read a batch at a time); both make the same Dataset.
    """
    if isinstance(x_train, lgb.Sequence):
        dtrain: lgb.Dataset = _SequenceDataset([x_train], y_train, feature_name=names, categorical_feature=cat_idx)
    else:
        dtrain = lgb.Dataset(x_train, y_train, feature_name=names, categorical_feature=cat_idx, free_raw_data=False)
    dvalid = lgb.Dataset(x_valid, y_valid, reference=dtrain)
    history: dict[str, dict[str, list[float]]] = {}
    # LightGBM's early stopping skips the training set when it is among the validation sets.
    sets, set_names = ([dtrain, dvalid], ["train", "valid"]) if curves is not None else ([dvalid], ["valid"])
    booster = lgb.train(
        {**params, "metric": "binary_logloss"},
        dtrain,
        num_boost_round=rounds,
        valid_sets=sets,
        valid_names=set_names,
        callbacks=[lgb.early_stopping(EARLY_STOPPING, verbose=False), lgb.record_evaluation(history)],
    )
    if curves is not None:
        curves.update({name: list(history.get(name, {}).get("binary_logloss", [])) for name in set_names})
    return booster


def logged_action_scores(model: DecisionModel, frame: pd.DataFrame) -> np.ndarray:
    """Calibrated P(success) of the action each row actually logged."""
    p = model.predict_all(frame)
    idx = pd.Index(model.actions).get_indexer(frame[ACTION].astype(object))
    return p[np.arange(len(frame)), idx]


def constant_model(
    model: DecisionModel, values: dict[str, float], catalog: Catalog, frame: pd.DataFrame
) -> DecisionModel:
    """The best single action as a decision model that serving loads like any other.

    Same inputs as ``model``; a booster that splits on nothing (no feature contributes to a reason);
    per-action calibration to a constant P(success) whose net value is the action's constant value
    (``values``: action -> value per decision, training.evaluate.single_action_values). The engine then
    takes the action of highest constant value wherever it is allowed: the best single action.
    """
    p = {}
    for action in catalog.actions:
        v = values.get(action.name)
        if v is None or action.value_of_success <= 0:  # never allowed in the evaluation, or worth nothing
            p[action.name] = EPS if v is None else 0.5
        else:
            p[action.name] = float(np.clip((v + action.cost) / action.value_of_success, EPS, 1 - EPS))
    sample = frame.head(max(2, min(len(frame), 100)))
    names = [*model.inputs, ACTION]
    cat_idx = [names.index(c) for c in [*model.categorical, ACTION]]
    x = model.design(sample, sample[ACTION].to_numpy())
    y = np.arange(len(sample)) % 2  # both classes, no split allowed: one leaf at the base rate
    params = {"objective": "binary", "min_data_in_leaf": len(sample) + 1, "verbose": -1, "num_threads": 1}
    booster = fit_booster(params, x, y, x, y, names, cat_idx, rounds=1)
    calibration = Calibration("sigmoid", {a: {"a": [0.0], "b": [float(logit(np.array(q)))]} for a, q in p.items()})
    return DecisionModel(booster, list(model.numeric), dict(model.categorical), list(catalog.names), calibration)
