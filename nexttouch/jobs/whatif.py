"""`nexttouch whatif`: policies run forward in the simulated world, closed loop, compared on the same seeds.

Wiring only: the world and the runner are in the core (nexttouch.world, nexttouch.whatif); this
module gives them the brand's feature code (features/touch_features.py, the same functions that
build the Feast views), the rule-based tiering of the evaluation (training/evaluate.py), and logs
the comparison to an MLflow run in the project's tracking store.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from features.touch_features import TOUCH_FEATURES, build_touch_features
from nexttouch.catalog import NO_ACTION, Catalog
from nexttouch.engine.affinity import prior_sds
from nexttouch.model import DecisionModel
from nexttouch.schemas import CUSTOMER_ID, REQUEST_AT
from nexttouch.settings import Settings
from nexttouch.touches import CONTACT_STATE, recency_frame
from nexttouch.whatif import (
    BEST_SINGLE,
    ChampionPolicy,
    Comparison,
    ConstantPolicy,
    Featurize,
    LearningChampionPolicy,
    OraclePolicy,
    PolicyFactory,
    RandomPolicy,
    RunResult,
    compare,
    run_policy,
    table,
)
from nexttouch.world import World, burn_in
from training.evaluate import rule_actions

log = logging.getLogger(__name__)
START = datetime(2026, 11, 1, tzinfo=UTC)  # where the closed loop begins (the burn-in ends here)
BURN_IN_DAYS = 180  # the history a brand has when it starts deciding: the product's default window
PROFILE_ONLY = ("signup_at",)
# Prior sd of a customer's own affinity when the settings leave per-customer learning off: the
# simulated customers' tier affinities spread by ~0.5-0.9 on the log-odds scale.
WHATIF_PRIOR_SD = 0.5  # profile columns that are inputs of features, not features themselves


def touch_featurizer(history_days: int) -> Featurize:
    """The brand's features of each due customer: touch history and contact state as of the day's start
    (features/touch_features.py, one snapshot), recency at the decision time, and the profile."""

    def featurize(events: pd.DataFrame, profile: pd.DataFrame, day0: datetime, at: pd.Series) -> pd.DataFrame:
        snap = build_touch_features(events, profile, day0, history_days, every_days=history_days)
        snap[REQUEST_AT] = at.to_numpy()
        recency = recency_frame(snap)
        person = profile.drop(columns=[CUSTOMER_ID, *PROFILE_ONLY], errors="ignore").reset_index(drop=True)
        return pd.concat([snap[[CUSTOMER_ID, *TOUCH_FEATURES, *CONTACT_STATE]], recency, person], axis=1)

    return featurize


class RulesPolicy:
    """Rule-based tiering, the usual CRM baseline (training.evaluate.rule_actions): the most personal tier earned."""

    def __init__(self, catalog: Catalog) -> None:
        self.name, self.catalog = "rules", catalog

    def decide(self, frame: pd.DataFrame, now: datetime, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rule_actions(self.catalog, frame, eligible), np.ones(len(frame))


def default_policies(
    catalog: Catalog, model: DecisionModel | None, settings: Settings | None = None
) -> dict[str, PolicyFactory]:
    """Every constant action (the best of them is the best single action), rules, random, oracle, and the
    champion as served (per-customer learning as the settings say) beside the champion with it switched."""
    s = settings or Settings()
    out: dict[str, PolicyFactory] = {}
    for name in catalog.names:
        out[f"always {name}"] = lambda _w, name=name: ConstantPolicy(catalog, name)
    out["rules"] = lambda _w: RulesPolicy(catalog)
    out["random"] = lambda w: RandomPolicy(w.origin.seed)
    out["oracle"] = OraclePolicy
    if model is not None:
        static: PolicyFactory = lambda _w: ChampionPolicy(catalog, model)  # noqa: E731
        served = prior_sds(s.affinity_prior_sd, catalog.names, model.affinity_sd)
        # for the comparison with learning switched on: the model's fitted prior, else a fixed one
        fitted = prior_sds("fitted", catalog.names, model.affinity_sd)
        sd = served if served is not None else fitted if fitted is not None else WHATIF_PRIOR_SD
        label = "fitted prior" if fitted is not None else f"prior sd {WHATIF_PRIOR_SD:g}"
        label += ", Thompson" if s.affinity_sampling else ""

        def learning(w: World) -> LearningChampionPolicy:
            return LearningChampionPolicy(w, model, sd, s.epsilon, s.default_time_zone, sample=s.affinity_sampling)

        if served is not None:
            out["champion"], out["champion without own learning"] = learning, static
        else:
            out["champion"], out[f"champion + own learning ({label})"] = static, learning
    return out


@dataclass
class WhatIf:
    comparison: Comparison
    results: list[RunResult]
    text: str  # the table
    share: float | None  # champion's share of the oracle's margin over the best single action
    run_id: str | None = None


def run_whatif(
    settings: Settings,
    catalog: Catalog,
    customers: int,
    days: int,
    seeds: Sequence[int],
    model: DecisionModel | None = None,
    policies: dict[str, PolicyFactory] | None = None,
    burn_in_days: int = BURN_IN_DAYS,
    start: datetime = START,
    log_to_mlflow: bool = False,
    progress: bool = False,
) -> WhatIf:
    """Run every policy closed loop for ``days`` days on each seed's world; compare them paired by seed."""
    policies = policies or default_policies(catalog, model, settings)
    featurize = touch_featurizer(burn_in_days)
    results = []
    for seed in seeds:
        origin = burn_in(catalog, customers, burn_in_days, start, seed, settings.decision_rate)
        for name, make in policies.items():
            result = run_policy(
                origin,
                make,
                days,
                featurize,
                settings.epsilon,
                history_days=burn_in_days,
                default_time_zone=settings.default_time_zone,
                progress=progress,
            )
            result.policy = name
            results.append(result)
            log.info("seed %d %s: %.4f per customer-day", seed, name, result.metrics()["value_per_customer_day"])
    comparison = compare(results)
    has = set(comparison.metrics["policy"])
    share = comparison.share_of_oracle_margin("champion") if {"champion", "oracle"} <= has else None
    out = WhatIf(comparison, results, table(comparison), share)
    if log_to_mlflow:
        out.run_id = log_whatif(settings, catalog, out, {"customers": customers, "days": days, "seeds": len(seeds)})
    return out


def log_whatif(settings: Settings, catalog: Catalog, whatif: WhatIf, params: dict[str, object]) -> str:
    """One MLflow run in the project's tracking store: parameters, each policy's mean metrics, table and plot."""
    import mlflow

    from nexttouch.tracking import configure_mlflow
    from training.registry import experiment_id

    configure_mlflow(settings)
    exp = experiment_id(settings, f"{settings.model_name}/whatif")
    summary = whatif.comparison.summary()
    with mlflow.start_run(experiment_id=exp, tags={"job": "whatif"}) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({**params, "best_single_action": whatif.comparison.best_single, "epsilon": settings.epsilon})
        for _, row in summary.iterrows():
            key = "".join(ch if ch.isalnum() else "_" for ch in str(row["policy"]))
            mlflow.log_metrics(
                {f"{key}.{m}": float(row[m]) for m in ("value_per_customer_day", "contacts_per_customer")}
            )
        if whatif.share is not None:
            mlflow.log_metric("champion_share_of_oracle_margin", whatif.share)
        folder = Path(tmp)
        (folder / "whatif.txt").write_text(whatif.text + "\n")
        whatif.comparison.metrics.to_csv(folder / "whatif_runs.csv", index=False)
        plot(whatif, catalog, folder / "whatif.png")
        mlflow.log_artifacts(str(folder), artifact_path="whatif")
        return run.info.run_id


def plot(whatif: WhatIf, catalog: Catalog, path: Path) -> None:
    """Each policy's value against the best single action (paired by seed, with its interval), and its action mix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = whatif.comparison
    s = c.summary()
    paired = np.array([c.paired(p, c.best_single) for p in s["policy"]])
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.45 * len(s) + 2.5), sharey=True)
    y = np.arange(len(s))
    labels = [p + (f" ({BEST_SINGLE})" if p == c.best_single else "") for p in s["policy"]]
    left.barh(y, paired[:, 0], xerr=np.nan_to_num(paired[:, 1]), color="tab:blue")
    left.axvline(0, color="black", linewidth=0.8)
    left.set_yticks(y, labels)
    left.invert_yaxis()
    left.set_xlabel(f"true net value per customer-day minus the {BEST_SINGLE}'s (same seeds)")
    start = np.zeros(len(s))
    for a in catalog.names:
        share = s[f"share_{a}"].to_numpy()
        right.barh(y, share, left=start, label=a, color=None if a != NO_ACTION else "lightgrey")
        start += share
    right.set_xlabel("share of decisions")
    right.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(catalog.names), fontsize="small")
    fig.suptitle("closed-loop what-if: every policy on the same worlds with the same random numbers", y=1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def champion_from(settings: Settings, model_dir: Path | None) -> DecisionModel | None:
    """The model to run as champion: a saved DecisionModel directory, or the registry's @champion."""
    if model_dir is not None:
        return DecisionModel.load(model_dir)
    from training.evaluate import load_registered

    return load_registered(settings)
