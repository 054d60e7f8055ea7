"""Fit the LightGBM decision model on a time-ordered training set and measure it."""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from nexttouch.catalog import Catalog
from nexttouch.model import DecisionModel
from nexttouch.schemas import ACTION, CUSTOMER_ID, DECIDED_AT, DECISION_ID, OUTCOME

NOT_FEATURES = {DECISION_ID, CUSTOMER_ID, ACTION, "propensity", OUTCOME, DECIDED_AT}
PARAMS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "num_threads": 2,
    "seed": 7,
}


@dataclass
class TrainResult:
    model: DecisionModel
    metrics: dict[str, float]
    params: dict[str, object]


def fit(train_set: pd.DataFrame, catalog: Catalog, valid_share: float = 0.2, rounds: int = 500) -> TrainResult:
    """Train on the earlier decisions, validate (and early-stop) on the latest ``valid_share``."""
    # Raw timestamps (last-touch times) are not model inputs; their recency features are.
    features = [
        c for c in train_set.columns if c not in NOT_FEATURES and not pd.api.types.is_datetime64_any_dtype(train_set[c])
    ]
    categorical = {
        c: sorted(train_set[c].dropna().astype(str).unique().tolist())
        for c in features
        if not pd.api.types.is_numeric_dtype(train_set[c])
    }
    numeric = [c for c in features if c not in categorical]
    template = DecisionModel(booster=None, numeric=numeric, categorical=categorical, actions=catalog.names)  # type: ignore[arg-type]

    cut = int(len(train_set) * (1 - valid_share))  # rows are sorted by decided_at
    train, valid = train_set.iloc[:cut], train_set.iloc[cut:]
    names = [*template.inputs, ACTION]
    cat_idx = [names.index(c) for c in [*categorical, ACTION]]
    dtrain = lgb.Dataset(
        template.design(train, train[ACTION].to_numpy()),
        train[OUTCOME],
        feature_name=names,
        categorical_feature=cat_idx,
        free_raw_data=False,
    )
    dvalid = lgb.Dataset(template.design(valid, valid[ACTION].to_numpy()), valid[OUTCOME], reference=dtrain)
    booster = lgb.train(
        PARAMS,
        dtrain,
        num_boost_round=rounds,
        valid_sets=[dvalid],
        callbacks=[lgb.early_stopping(30, verbose=False)],
    )
    model = DecisionModel(booster, numeric, categorical, catalog.names)

    p = booster.predict(template.design(valid, valid[ACTION].to_numpy()), num_iteration=booster.best_iteration)
    y = valid[OUTCOME].to_numpy()
    metrics = {
        "valid_auc": float(roc_auc_score(y, p)),
        "valid_logloss": float(log_loss(y, p, labels=[0, 1])),
        "valid_base_rate": float(y.mean()),
        "best_iteration": float(booster.best_iteration),
        "train_rows": float(len(train)),
        "valid_rows": float(len(valid)),
    }
    for action in catalog.names:
        m = valid[ACTION].to_numpy() == action
        if m.sum() and len(np.unique(y[m])) == 2:
            metrics[f"valid_auc_{action}"] = float(roc_auc_score(y[m], p[m]))
    return TrainResult(model, metrics, {**PARAMS, "valid_share": valid_share, "max_rounds": rounds})
