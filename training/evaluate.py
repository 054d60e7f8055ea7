"""Evaluate a trained decision model on the out-of-time test period; every training run does this.

Prediction quality per action (AUC, log loss, calibration error and curve), uplift of each action
over ``none`` (Qini coefficient and AUUC as causalml defines them) and the value of several policies
by off-policy estimation (IPS, SNIPS, doubly robust, bootstrap intervals; training/ope.py): the new
model's, the current champion's, the logging policy's, the best single action (the constant policy
of highest estimated value), a rule-based tiering baseline and random. The gate's evidence is
computed here too: the new policy paired with the champion and with the best single action on the
same decisions (training/gate.py).

On simulated data the ground truth (data/simulation/decision_truth.parquet) also gives every
policy's true value and the oracle's, so the estimators themselves are checked, the new policy's
share of the oracle's margin over the best single action, and the feature ceiling: a policy fitted
on the true P(success) with the same features, which separates what the features cannot tell from
what the learner misses. Values are net values per decision in the catalog's units:
P(success) x value_of_success - cost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from nexttouch.catalog import NO_ACTION, Catalog
from nexttouch.columns import from_frame
from nexttouch.engine.choice import net_values
from nexttouch.engine.rules import check
from nexttouch.model import DecisionModel
from nexttouch.registry_io import load_registered
from nexttouch.schemas import ACTION, CUSTOMER_ID, DECISION_ID, OUTCOME, PROPENSITY
from nexttouch.settings import Settings
from training.dataset import FrameRows, Rows, TrainingSet
from training.gate import Paired, compare
from training.ope import LOGGED, PolicyValue, estimate_many, greedy, one_hot, uniform

log = logging.getLogger(__name__)
TRUTH_FILE = Path("simulation") / "decision_truth.parquet"  # under settings.data_dir; simulated brands only
ECE_BINS = 10
UPLIFT_POINTS = 50


class Scorer(Protocol):
    actions: list[str]

    def predict_all(self, frame: pd.DataFrame) -> np.ndarray: ...


@dataclass
class Evaluation:
    """Everything one evaluation measured; ``metrics`` is flat (MLflow), ``artifacts`` are files."""

    policies: dict[str, PolicyValue]
    per_action: pd.DataFrame  # one row per action: rows, base_rate, auc, logloss, ece (+ qini, auuc)
    metrics: dict[str, float]
    curves: dict[str, dict[str, np.ndarray]] = field(repr=False)  # calibration_<a>, uplift_<a>
    choices: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # policy -> (rows, actions) probabilities
    notes: list[str] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)
    # The gate's evidence: "new_vs_best_single", "new_vs_champion", "champion_vs_best_single".
    paired: dict[str, Paired] = field(default_factory=dict)
    single_values: dict[str, float] = field(default_factory=dict)  # action -> its constant DR value
    best_single: str = NO_ACTION  # the action the best single action policy takes where allowed


def eligible(catalog: Catalog, frame: pd.DataFrame) -> np.ndarray:
    """Contact-policy eligibility (rows, actions) of every decision, as the decision engine decides it.

    Without the time of day (each decision has its own), quiet hours are not applied; consent, caps
    and cool-downs are.
    """
    return check(catalog, from_frame(frame), len(frame), None).eligible


def scores(model: Scorer, frame: pd.DataFrame, catalog: Catalog) -> np.ndarray:
    """P(success) of every catalog action (NaN for actions the model does not know)."""
    missing = [c for c in getattr(model, "inputs", []) if c not in frame]
    if missing:
        frame = frame.assign(**dict.fromkeys(missing, np.nan))
    p = model.predict_all(frame)
    out = np.full((len(frame), len(catalog.names)), np.nan)
    for j, name in enumerate(catalog.names):
        if name in model.actions:
            out[:, j] = p[:, model.actions.index(name)]
    return out


def rule_actions(catalog: Catalog, frame: pd.DataFrame, mask: np.ndarray) -> np.ndarray:
    """Rule-based tiering, the usual CRM baseline: the most personal eligible tier a customer earns.

    Read from the touch-count features only, so it applies to any catalog: high touch for customers
    with recent in-person and high-touch contact, low touch for customers active in the app, tech
    touch for everyone else; within a tier the cheapest eligible action. A feature the frame does not
    have earns nothing; ``none`` when nothing is eligible.
    """

    def count(name: str) -> np.ndarray:
        if name not in frame:
            return np.zeros(len(frame))
        return np.nan_to_num(pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan))

    earns = {
        "tech": np.ones(len(frame), bool),
        "low": count("tech_in_30d") >= 10,
        "high": (count("low_in_90d") > 0) & (count("high_in_90d") > 0),
    }
    choice = np.full(len(frame), catalog.names.index(NO_ACTION))
    for tier in ("tech", "low", "high"):  # later tiers override: the most personal wins
        by_cost = sorted((a.cost, j) for j, a in enumerate(catalog.actions) if a.tier == tier)
        for _, j in reversed(by_cost):  # the cheapest of the tier is set last, so it wins
            choice = np.where(earns[tier] & mask[:, j], j, choice)
    return choice


def single_action_values(
    mask: np.ndarray, logged: np.ndarray, propensity: np.ndarray, reward: np.ndarray, q: np.ndarray
) -> np.ndarray:
    """Doubly robust mean net value of each action over the decisions where it is allowed: (actions,).

    The same for every customer, so ranking actions by it is a policy without personalisation.
    """
    n, k = q.shape
    out = np.full(k, -np.inf)
    for j in range(k):
        m = mask[:, j]
        if m.any():
            hit = (logged == j) & m
            correction = np.where(hit, (reward - q[np.arange(n), j]) / propensity, 0.0)
            out[j] = float((q[m, j] + correction[m]).mean())
    return out


def fit_single_values(model: Scorer, fit_data: pd.DataFrame | Rows, catalog: Catalog) -> np.ndarray:
    """``single_action_values`` on ``fit_data``; a training set on disk a batch at a time (sums and counts)."""
    if isinstance(fit_data, pd.DataFrame):
        return single_action_values(*_logged_terms(model, fit_data, catalog)[:5])
    k = len(catalog.names)
    total, count = np.zeros(k), np.zeros(k)
    for batch in fit_data.batches():
        mask, logged, propensity, reward, q = _logged_terms(model, batch, catalog)[:5]
        n = len(batch)
        for j in range(k):
            m = mask[:, j]
            hit = (logged == j) & m
            correction = np.where(hit, (reward - q[np.arange(n), j]) / propensity, 0.0)
            total[j] += float((q[m, j] + correction[m]).sum())
            count[j] += int(m.sum())
    return np.where(count > 0, total / np.maximum(count, 1), -np.inf)


def best_single_policy(values: np.ndarray, mask: np.ndarray, prefer: int) -> np.ndarray:
    """The best single action: the action of highest constant value wherever it is allowed, else the
    next one by the same ranking (``none`` is always allowed)."""
    return greedy(np.broadcast_to(values, mask.shape), mask, prefer=prefer)


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |observed rate - mean predicted| over equal-count bins, weighted by bin size."""
    if len(p) == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    total = 0.0
    for part in np.array_split(order, min(bins, len(p))):
        total += len(part) * abs(y[part].mean() - p[part].mean())
    return total / len(p)


def calibration_points(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    order = np.argsort(p, kind="stable")
    parts = [part for part in np.array_split(order, min(bins, len(p))) if len(part)]
    return {
        "predicted": np.array([p[part].mean() for part in parts]),
        "observed": np.array([y[part].mean() for part in parts]),
    }


def _ranked_sums(score: np.ndarray, treated: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Cumulative (weighted) treated/control counts and successes down the ranking by ``score``,
    with a leading 0 for "nobody targeted": each of length rows + 1."""
    order = np.argsort(-score, kind="stable")
    t = treated[order].astype(bool)
    yy = y[order].astype(float)
    ww = np.ones(len(order)) if w is None else w[order].astype(float)
    zero = np.zeros(1)
    return tuple(np.concatenate([zero, np.cumsum(v)]) for v in (ww * t, ww * ~t, ww * t * yy, ww * ~t * yy))


def qini_curve(score: np.ndarray, treated: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Qini curve (Radcliffe; causalml ``get_qini``): for the top k by score,
    Q(k) = Y_T(k) - Y_C(k) N_T(k) / N_C(k) (0 while no control is ranked), k = 0..rows.

    With inverse-propensity weights ``w`` the counts and successes are weighted, so a non-random
    logging policy does not bias the curve.
    """
    nt, nc, yt, yc = _ranked_sums(score, treated, y, w)
    return yt - np.divide(yc * nt, nc, out=np.zeros_like(nc), where=nc > 0)


def gain_curve(score: np.ndarray, treated: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Cumulative gain curve (causalml ``get_cumgain``): G(k) = k (Y_T(k)/N_T(k) - Y_C(k)/N_C(k)),
    0 while either group is empty, k = 0..rows."""
    nt, nc, yt, yc = _ranked_sums(score, treated, y, w)
    rate_t = np.divide(yt, nt, out=np.zeros_like(nt), where=nt > 0)
    rate_c = np.divide(yc, nc, out=np.zeros_like(nc), where=nc > 0)
    return np.where((nt > 0) & (nc > 0), (rate_t - rate_c) * np.arange(len(nt)), 0.0)


def qini_coefficient(curve: np.ndarray) -> float:
    """causalml ``qini_score``: the mean height of the Qini curve above the random line (its
    expectation: the straight line from 0 to Q(n)), normalised by |Q(n)|; 0 for random ranking."""
    end = curve[-1]
    return float((curve.mean() - end / 2) / abs(end)) if end else float("nan")


def auuc(curve: np.ndarray) -> float:
    """causalml ``auuc_score``: the mean height of the cumulative gain curve normalised by |G(n)|
    (random ranking: ~0.5)."""
    end = curve[-1]
    return float(curve.mean() / abs(end)) if end else float("nan")


def _thin(curve: np.ndarray, points: int = UPLIFT_POINTS) -> dict[str, np.ndarray]:
    """A curve over k = 0..rows as ``points`` + 1 (share of customers, value per customer) pairs, to plot."""
    rows = len(curve) - 1
    k = np.unique(np.linspace(0, rows, points + 1).astype(int))
    return {"share": k / max(rows, 1), "gain": curve[k] / max(rows, 1)}


def per_action_quality(
    p: np.ndarray, data: pd.DataFrame, catalog: Catalog
) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """AUC, log loss, ECE on each action's logged decisions; Qini coefficient and AUUC of each action
    over ``none``, ranked by the predicted uplift, on the decisions that took the one or the other."""
    logged = pd.Index(catalog.names).get_indexer(data[ACTION].astype(object))
    y = data[OUTCOME].to_numpy(dtype=float)
    w = 1.0 / data[PROPENSITY].to_numpy(dtype=float)
    none = catalog.names.index(NO_ACTION)
    rows, curves = [], {}
    for j, name in enumerate(catalog.names):
        m = logged == j
        pj, yj = p[m, j], y[m]
        both = len(np.unique(yj)) == 2
        row = {
            "action": name,
            "rows": int(m.sum()),
            "base_rate": float(yj.mean()) if m.any() else float("nan"),
            "mean_p": float(pj.mean()) if m.any() else float("nan"),
            "auc": float(roc_auc_score(yj, pj)) if both else float("nan"),
            "logloss": float(log_loss(yj, np.clip(pj, 1e-6, 1 - 1e-6), labels=[0, 1])) if m.any() else float("nan"),
            "ece": expected_calibration_error(pj, yj),
        }
        if m.any():
            curves[f"calibration_{name}"] = calibration_points(pj, yj)
        if j != none:
            pair = m | (logged == none)
            if m.any() and (logged == none).any():
                args = (p[pair, j] - p[pair, none], m[pair], y[pair], w[pair])
                gains = gain_curve(*args)
                curves[f"uplift_{name}"] = _thin(gains)
                row |= {"qini": qini_coefficient(qini_curve(*args)), "auuc": auuc(gains)}
        rows.append(row)
    return pd.DataFrame(rows), curves


def load_truth(settings: Settings | None) -> pd.DataFrame | None:
    path = settings.data_dir / TRUTH_FILE if settings else None
    return pd.read_parquet(path) if path and path.exists() else None


def evaluate(
    model: Scorer,
    data: pd.DataFrame,
    catalog: Catalog,
    settings: Settings | None = None,
    champion: Scorer | None = None,
    truth: pd.DataFrame | None = None,
    out_dir: Path | None = None,
    n_boot: int = 200,
    seed: int = 0,
    fit_data: pd.DataFrame | Rows | None = None,
) -> Evaluation:
    """Measure ``model`` on ``data`` (the test period of the training set: features, action,
    propensity, outcome; ``customer_id`` clusters the paired bootstrap when present).

    With ``settings``, the registered champion and (simulated brands) the ground truth are found by
    themselves unless passed. The best single action is chosen on ``fit_data`` (the periods the model
    learnt from): chosen on the decisions it is judged on, the luckiest action's estimate would be
    biased up; a training set on disk is read a batch at a time for it. With the ground truth (a
    simulated brand), ``fit_data`` also gives the feature ceiling, read whole. With ``out_dir``,
    the plots and a one-page report are written there and listed in ``artifacts``.
    """
    notes: list[str] = []
    if champion is None and settings is not None:
        champion = load_registered(settings)
    if truth is None:
        truth = load_truth(settings)
    data = data.reset_index(drop=True)
    names = catalog.names
    mask, logged, propensity, reward, q, p_new = _logged_terms(model, data, catalog)
    none = names.index(NO_ACTION)
    customers = data[CUSTOMER_ID].astype(str).to_numpy() if CUSTOMER_ID in data else np.arange(len(data))
    per_action, curves = per_action_quality(p_new, data, catalog)

    pis = {"new": greedy(q, mask, prefer=none)}
    if champion is not None:
        v = net_values(catalog, scores(champion, data, catalog))
        pis["champion"] = greedy(np.nan_to_num(v, nan=-np.inf), mask, prefer=none)
    if fit_data is not None and len(fit_data):  # chosen on other decisions than it is judged on
        single = fit_single_values(model, fit_data, catalog)
    else:
        single = single_action_values(mask, logged, propensity, reward, q)
        notes.append("best single action chosen on the evaluation decisions: its estimate is optimistic")
    pis["best_single"] = best_single_policy(single, mask, none)
    pis["rules"] = one_hot(rule_actions(catalog, data, mask), len(names))
    pis["random"] = uniform(mask)

    true_nv = None
    if truth is not None:
        cols = [f"p_{a}" for a in names]
        t = data[[DECISION_ID]].merge(truth, on=DECISION_ID, how="left", validate="one_to_one")
        if all(c in t for c in cols) and not t[cols].isna().any().any():
            true_nv = net_values(catalog, t[cols].to_numpy())
            pis["oracle"] = greedy(true_nv, mask, prefer=none)
            whole = fit_data.read() if isinstance(fit_data, TrainingSet | FrameRows) else fit_data
            ceiling = feature_ceiling(model, whole, data, truth, catalog) if whole is not None else None
            if ceiling is not None:
                pis["ceiling"] = greedy(net_values(catalog, ceiling), mask, prefer=none)
        else:
            notes.append("ground truth does not cover the evaluation decisions: no true values")

    policies = estimate_many({**pis, "logging": LOGGED}, logged, propensity, reward, q, n_boot=n_boot, seed=seed)
    if true_nv is not None:
        for name, pi in pis.items():
            policies[name] = replace(policies[name], true=float((pi * true_nv).sum(axis=1).mean()))
        policies["logging"] = replace(policies["logging"], true=float(true_nv[np.arange(len(data)), logged].mean()))

    def pair(a: str, b: str) -> Paired:
        return compare(pis[a], pis[b], logged, propensity, reward, q, customers, seed=seed)

    paired = {"new_vs_best_single": pair("new", "best_single")}
    if "champion" in pis:
        paired["new_vs_champion"] = pair("new", "champion")
        paired["champion_vs_best_single"] = pair("champion", "best_single")
    best = names[int(np.argmax(np.where(np.isfinite(single), single, -np.inf)))]
    singles = {a: float(v) for a, v in zip(names, single, strict=True) if np.isfinite(v)}
    metrics = _flat_metrics(p_new, data, logged, per_action, policies, paired)
    metrics |= {f"single_value_{a}": v for a, v in singles.items()}
    evaluation = Evaluation(policies, per_action, metrics, curves, pis, notes, [], paired, singles, best)
    if out_dir is not None:
        from training.report import write_report

        evaluation.artifacts = write_report(evaluation, model, out_dir)
    return evaluation


def _logged_terms(model: Scorer, data: pd.DataFrame, catalog: Catalog) -> tuple[np.ndarray, ...]:
    """What off-policy estimation reads of a log: eligibility, logged action index, propensity, net
    reward, the model's expected net values (the DR reward model) and its P(success)."""
    logged = pd.Index(catalog.names).get_indexer(data[ACTION].astype(object))
    if (logged < 0).any():
        raise ValueError(f"logged actions outside the catalog: {sorted(set(data[ACTION][logged < 0]))}")
    value = np.array([a.value_of_success for a in catalog.actions])
    cost = np.array([a.cost for a in catalog.actions])
    reward = data[OUTCOME].to_numpy(dtype=float) * value[logged] - cost[logged]
    p = scores(model, data, catalog)
    q = net_values(catalog, p)
    return eligible(catalog, data), logged, data[PROPENSITY].to_numpy(dtype=float), reward, q, p


CEILING_PARAMS = {
    "objective": "regression",
    "learning_rate": 0.1,
    "num_leaves": 31,
    "min_data_in_leaf": 100,
    "verbose": -1,
    "num_threads": 2,
    "seed": 7,
}
CEILING_ROUNDS = 150


def feature_ceiling(
    model: Scorer, fit_data: pd.DataFrame, data: pd.DataFrame, truth: pd.DataFrame, catalog: Catalog
) -> np.ndarray | None:
    """P(success) of every action on ``data`` from a LightGBM regressor per action fitted to the TRUE
    P(success) of ``fit_data`` with the model's own features: what these features could give at
    best, learnt from the same decisions. None without the model's feature lists or the truth."""
    numeric, categorical = getattr(model, "numeric", None), getattr(model, "categorical", None)
    cols = [f"p_{a}" for a in catalog.names]
    fit = fit_data.merge(truth[[DECISION_ID, *cols]], on=DECISION_ID, how="inner")
    if numeric is None or categorical is None or len(fit) < 100:
        return None
    import lightgbm as lgb

    x_fit = DecisionModel.encode_columns(fit, numeric, categorical)
    x = DecisionModel.encode_columns(data, numeric, categorical)
    names = [*numeric, *categorical]
    cat_idx = list(range(len(numeric), len(names)))
    out = np.empty((len(data), len(cols)))
    for j, col in enumerate(cols):
        train = lgb.Dataset(x_fit, fit[col].to_numpy(), feature_name=names, categorical_feature=cat_idx)
        booster = lgb.train(CEILING_PARAMS, train, num_boost_round=CEILING_ROUNDS)
        out[:, j] = np.clip(booster.predict(x), 0.0, 1.0)
    return out


def _flat_metrics(
    p: np.ndarray,
    data: pd.DataFrame,
    logged: np.ndarray,
    per_action: pd.DataFrame,
    policies: dict[str, PolicyValue],
    paired: dict[str, Paired],
) -> dict[str, float]:
    y = data[OUTCOME].to_numpy(dtype=float)
    p_logged = p[np.arange(len(data)), logged]
    m: dict[str, float] = {
        "test_rows": float(len(data)),
        "test_auc": float(roc_auc_score(y, p_logged)) if len(np.unique(y)) == 2 else float("nan"),
        "test_logloss": float(log_loss(y, np.clip(p_logged, 1e-6, 1 - 1e-6), labels=[0, 1])),
        "test_ece": expected_calibration_error(p_logged, y),
    }
    for row in per_action.to_dict("records"):
        for key in ("auc", "logloss", "ece", "qini", "auuc"):
            if key in row and not pd.isna(row[key]):
                m[f"test_{key}_{row['action']}"] = float(row[key])
    for name, pv in policies.items():
        for key, v in pv.as_dict().items():
            if v is not None:
                m[f"policy_{name}_{key}"] = float(v)
        if pv.true is not None:
            m[f"ope_dr_error_{name}"] = pv.dr - pv.true
    for name, pair in paired.items():
        m |= {f"paired_{name}_{k}": v for k, v in (("diff", pair.diff), ("low", pair.low), ("high", pair.high))}
        m[f"paired_{name}_differ"] = pair.differ
    truths = {k: v.true for k, v in policies.items() if v.true is not None}
    if {"oracle", "best_single"} <= set(truths):
        margin = truths["oracle"] - truths["best_single"]
        for name in ("new", "champion", "ceiling"):
            if name in truths and margin:
                m[f"share_of_oracle_margin_{name}"] = (truths[name] - truths["best_single"]) / margin
    if {"oracle", "random", "new"} <= set(truths) and truths["oracle"] != truths["random"]:
        m["new_share_of_oracle_gain"] = (truths["new"] - truths["random"]) / (truths["oracle"] - truths["random"])
    return m


def log_evaluation(evaluation: Evaluation) -> None:
    """Log metrics and artifact files to the active MLflow run (call inside ``mlflow.start_run``)."""
    import mlflow

    from training.registry import grouped

    mlflow.log_metrics(grouped(evaluation.metrics))
    mlflow.set_tag("best_single_action", evaluation.best_single)
    for path in evaluation.artifacts:
        mlflow.log_artifact(str(path), artifact_path="evaluation")
