"""Evaluate a trained decision model on the out-of-time test period; every training run does this.

Prediction quality per action (AUC, log loss, calibration error and curve), uplift of each action
over ``none`` (Qini / AUUC) and the value of several policies by off-policy estimation (IPS, SNIPS,
doubly robust, bootstrap intervals; training/ope.py): the new model's, the current champion's, the
logging policy's, "always push", a rule-based tiering baseline and random. On simulated data the
ground truth (data/simulation/decision_truth.parquet) also gives every policy's true value and the
oracle's, so the estimators themselves are checked. Values are net values per decision in the
catalog's units: P(success) x value_of_success - cost.

How the run logger (training/registry.py, B2) uses it, inside the MLflow run::

    from training.evaluate import evaluate, log_evaluation
    ev = evaluate(result.model, result.test, catalog, settings, out_dir=tmp / "evaluation")
    log_evaluation(ev)        # metrics + plots + report.md as artifacts of the active run
    gate: ev.policies["new"].dr_low >= ev.policies["champion"].dr  (no "champion" key: no champion)
"""

from __future__ import annotations

import logging
import tempfile
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
from nexttouch.schemas import ACTION, DECISION_ID, OUTCOME, PROPENSITY
from nexttouch.settings import Settings
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

    High touch for premium customers with recent in-person contact, low touch for customers active
    in the app, tech touch for everyone else; ``none`` when nothing is eligible.
    """
    col = lambda name: pd.to_numeric(frame.get(name, pd.Series(np.nan, frame.index)), errors="coerce").to_numpy()  # noqa: E731
    premium = frame.get("segment", pd.Series("", frame.index)).astype(str).to_numpy() == "premium"
    earns = {
        "tech": np.ones(len(frame), bool),
        "low": np.nan_to_num(col("tech_in_30d")) >= 10,
        "high": premium & (np.nan_to_num(col("low_in_90d")) > 0),
    }
    choice = np.full(len(frame), catalog.names.index(NO_ACTION))
    for tier in ("tech", "low", "high"):  # later tiers override: the most personal wins
        for j, action in enumerate(catalog.actions):
            if action.tier == tier:
                choice = np.where(earns[tier] & mask[:, j], j, choice)
    return choice


def cheapest_contact(catalog: Catalog) -> int:
    """The cheapest action that contacts the customer (push in the default catalog)."""
    contacts = [(a.cost, j) for j, a in enumerate(catalog.actions) if a.name != NO_ACTION]
    return min(contacts)[1]


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


def uplift_curve(
    score: np.ndarray, treated: np.ndarray, y: np.ndarray, w: np.ndarray, points: int = UPLIFT_POINTS
) -> dict[str, np.ndarray]:
    """Cumulative uplift gain when treating the top share of customers ranked by predicted uplift.

    gain(phi) = phi x (weighted success rate of treated - of control, among the top phi), with
    inverse-propensity weights ``w`` so a non-random logging policy does not bias the rates.
    """
    order = np.argsort(-score, kind="stable")
    t, y, w = treated[order], y[order], w[order]
    wt, wc = np.cumsum(w * t), np.cumsum(w * ~t)
    yt, yc = np.cumsum(w * t * y), np.cumsum(w * ~t * y)
    n = len(order)
    phi = np.linspace(0, 1, points + 1)
    k = np.maximum((phi * n).astype(int) - 1, 0)
    rate_t = np.divide(yt[k], wt[k], out=np.zeros(len(k)), where=wt[k] > 0)
    rate_c = np.divide(yc[k], wc[k], out=np.zeros(len(k)), where=wc[k] > 0)
    gain = phi * (rate_t - rate_c)
    gain[0] = 0.0
    return {"share": phi, "gain": gain}


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def per_action_quality(
    p: np.ndarray, data: pd.DataFrame, catalog: Catalog
) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """AUC, log loss, ECE on each action's logged decisions; Qini/AUUC of each action over ``none``."""
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
                curve = uplift_curve(p[pair, j] - p[pair, none], m[pair], y[pair], w[pair])
                curves[f"uplift_{name}"] = curve
                auuc = _trapezoid(curve["gain"], curve["share"])
                row |= {"auuc": auuc, "qini": auuc - curve["gain"][-1] / 2}  # area above the random line
        rows.append(row)
    return pd.DataFrame(rows), curves


def load_registered(settings: Settings, alias: str | None = None) -> DecisionModel | None:
    """The decision model behind ``models:/<name>@<alias>`` (champion by default); None if there is none."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from nexttouch.tracking import configure_mlflow

    configure_mlflow(settings)
    try:
        version = MlflowClient().get_model_version_by_alias(settings.model_name, alias or settings.champion_alias)
    except MlflowException:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.artifacts.download_artifacts(f"models:/{settings.model_name}/{version.version}", dst_path=tmp)
        found = sorted(Path(tmp).glob("**/decision_model/meta.json"))
        return DecisionModel.load(found[0].parent) if found else None


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
) -> Evaluation:
    """Measure ``model`` on ``data`` (the test period of the training set: features, action,
    propensity, outcome).

    With ``settings``, the registered champion and (simulated brands) the ground truth are found by
    themselves unless passed. With ``out_dir``, the plots and a one-page report are written there
    and listed in ``artifacts``.
    """
    notes: list[str] = []
    if champion is None and settings is not None:
        champion = load_registered(settings)
    if truth is None:
        truth = load_truth(settings)
    data = data.reset_index(drop=True)
    names = catalog.names
    logged = pd.Index(names).get_indexer(data[ACTION].astype(object))
    if (logged < 0).any():
        raise ValueError(f"logged actions outside the catalog: {sorted(set(data[ACTION][logged < 0]))}")
    value = np.array([a.value_of_success for a in catalog.actions])
    cost = np.array([a.cost for a in catalog.actions])
    y = data[OUTCOME].to_numpy(dtype=float)
    reward = y * value[logged] - cost[logged]
    propensity = data[PROPENSITY].to_numpy(dtype=float)
    mask = eligible(catalog, data)
    none = names.index(NO_ACTION)

    p_new = scores(model, data, catalog)
    q = net_values(catalog, p_new)  # the reward model of DR: the new model's expected net values
    per_action, curves = per_action_quality(p_new, data, catalog)

    pis = {"new": greedy(q, mask, prefer=none)}
    if champion is not None:
        v = net_values(catalog, scores(champion, data, catalog))
        pis["champion"] = greedy(np.nan_to_num(v, nan=-np.inf), mask, prefer=none)
    contact = cheapest_contact(catalog)
    pis["always_push"] = one_hot(np.where(mask[:, contact], contact, none), len(names))
    pis["rules"] = one_hot(rule_actions(catalog, data, mask), len(names))
    pis["random"] = uniform(mask)

    true_nv = None
    if truth is not None:
        t = data[[DECISION_ID]].merge(truth, on=DECISION_ID, how="left", validate="one_to_one")
        cols = [f"p_{a}" for a in names]
        if all(c in t for c in cols) and not t[cols].isna().any().any():
            true_nv = net_values(catalog, t[cols].to_numpy())
            pis["oracle"] = greedy(true_nv, mask, prefer=none)
        else:
            notes.append("ground truth does not cover the evaluation decisions: no true values")

    policies = estimate_many({**pis, "logging": LOGGED}, logged, propensity, reward, q, n_boot=n_boot, seed=seed)
    if true_nv is not None:
        for name, pi in pis.items():
            policies[name] = replace(policies[name], true=float((pi * true_nv).sum(axis=1).mean()))
        logging_true = float(true_nv[np.arange(len(data)), logged].mean())
        policies["logging"] = replace(policies["logging"], true=logging_true)
        tv = policies["new"].true
        policies["true_new"] = PolicyValue(tv, tv, tv, tv, tv, tv, tv, tv, tv, true=tv)
    metrics = _flat_metrics(p_new, data, logged, per_action, policies)
    evaluation = Evaluation(policies, per_action, metrics, curves, pis, notes)
    if out_dir is not None:
        from training.report import write_report

        evaluation.artifacts = write_report(evaluation, model, out_dir)
    return evaluation


def _flat_metrics(
    p: np.ndarray, data: pd.DataFrame, logged: np.ndarray, per_action: pd.DataFrame, policies: dict[str, PolicyValue]
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
        if pv.true is not None and name != "true_new":
            m[f"ope_dr_error_{name}"] = pv.dr - pv.true
    if all(k in policies and policies[k].true is not None for k in ("new", "oracle", "random")):
        gain = policies["oracle"].true - policies["random"].true
        m["new_share_of_oracle_gain"] = (policies["new"].true - policies["random"].true) / gain if gain else 0.0
    return m


def log_evaluation(evaluation: Evaluation) -> None:
    """Log metrics and artifact files to the active MLflow run (call inside ``mlflow.start_run``)."""
    import mlflow

    mlflow.log_metrics({k: v for k, v in evaluation.metrics.items() if np.isfinite(v)})
    for path in evaluation.artifacts:
        mlflow.log_artifact(str(path), artifact_path="evaluation")
