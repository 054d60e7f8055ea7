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
    train: pd.DataFrame = field(repr=False)
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


def feature_columns(data: pd.DataFrame) -> tuple[list[str], dict[str, list[str]]]:
    """(numeric, categorical -> levels). Raw timestamps are not inputs: their recency features are."""
    features = [c for c in data.columns if c not in NOT_FEATURES and not pd.api.types.is_datetime64_any_dtype(data[c])]
    categorical = {
        c: sorted(data[c].dropna().astype(str).unique().tolist())
        for c in features
        if not pd.api.types.is_numeric_dtype(data[c])
    }
    return [c for c in features if c not in categorical], categorical


def constant_columns(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """The ``columns`` with a single value in ``frame`` (missing counts as a value).

    A model learns nothing from them, yet would read them in serving and show them among its inputs:
    a brand without touch events has every touch-history feature at zero, and no tenure without sign-up dates.
    """
    return [c for c in columns if frame[c].nunique(dropna=False) <= 1]


def fit(
    train_set: pd.DataFrame,
    catalog: Catalog,
    valid_share: float = 0.15,
    test_share: float = 0.15,
    rounds: int = 500,
    calibration: CalibrationMethod = "sigmoid",
    dask_scheduler: str | None = None,
    params: dict[str, object] | None = None,
) -> TrainResult:
    """Train on the earliest decisions, early-stop and calibrate on the next, keep the latest for tests.

    ``dask_scheduler`` (an address such as ``tcp://127.0.0.1:8786``) trains on that Dask cluster with
    ``lightgbm.DaskLGBMClassifier``; without one LightGBM trains locally on threads.
    """
    params = {**PARAMS, **(params or {})}
    numeric, categorical = feature_columns(train_set)
    train, valid, test = split_by_time(train_set, valid_share, test_share)
    constant = constant_columns(train, [*numeric, *categorical])
    numeric = [c for c in numeric if c not in constant]
    categorical = {c: levels for c, levels in categorical.items() if c not in constant}
    template = DecisionModel(booster=None, numeric=numeric, categorical=categorical, actions=catalog.names)  # type: ignore[arg-type]
    names = [*template.inputs, ACTION]
    cat_idx = [names.index(c) for c in [*categorical, ACTION]]
    params["monotone_constraints"] = [int(c in MONOTONE_INCREASING) for c in names]
    x_train, y_train = template.design(train, train[ACTION].to_numpy()), train[OUTCOME].to_numpy()
    x_valid, y_valid = template.design(valid, valid[ACTION].to_numpy()), valid[OUTCOME].to_numpy()

    curves: dict[str, list[float]] = {}  # filled by the local trainer only
    if dask_scheduler:
        from training.distributed import fit_booster_on_dask

        booster = fit_booster_on_dask(
            dask_scheduler, params, x_train, y_train, x_valid, y_valid, names, cat_idx, rounds
        )
    else:
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
    return TrainResult(model, metrics, run_params, train, valid, test, curves, constant)


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
    x_train: np.ndarray,
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
    """
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
