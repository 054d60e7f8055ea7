"""`nexttouch plan`: latest features -> champion P(success) -> global plan (nexttouch.plan) -> parquet/CSV."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from features.online_load import read_latest
from features.pipeline import CUSTOMER_PROFILE, TOUCH_HISTORY
from nexttouch.catalog import Catalog
from nexttouch.jobs.online import posted_contact_state
from nexttouch.parquet import write_parquet
from nexttouch.plan import Plan, capacity_slots, demote, plan_actions, plan_frame, predict
from nexttouch.schemas import ACTION, CUSTOMER_ID, EVENT_TIMESTAMP, REQUEST_AT
from nexttouch.settings import Settings
from nexttouch.spreadsheet import safe_cells
from nexttouch.touches import CONTACT_STATE, recency_frame
from serving import capacity
from serving.champion import load_champion
from serving.decision_log import DecisionLog, Tx


@dataclass(frozen=True)
class PlanSummary:
    customers: int
    total_value: float
    counts: dict[str, int]
    path: Path
    fell_back: int = 0  # customers who lost a slot the service took meanwhile (with take_capacity)
    explored: int = 0  # customers given a random eligible action (their propensity is in the plan)
    epsilon: float = 0.0


def latest_features(settings: Settings, now: datetime) -> pd.DataFrame:
    """Every customer's latest offline feature row at ``now`` plus recency at ``now``: what the online store holds.

    ``features.online_load.read_latest`` is the function that loads the online store, and the touches
    posted to the service since the build are folded in as every load does (``nexttouch.jobs.online``),
    so these are the rows ``get_online_features`` would return. Reading parquet in bulk is ~100x faster
    than millions of online lookups. Recency comes from the same function as the on-demand view.
    """

    def latest(name: str) -> pd.DataFrame:
        path = settings.offline_dir / f"{name}.parquet"
        columns = pq.read_schema(path).names
        return read_latest(path, [CUSTOMER_ID], EVENT_TIMESTAMP, columns, now).drop(columns=[EVENT_TIMESTAMP])

    frame = latest(CUSTOMER_PROFILE).merge(latest(TOUCH_HISTORY), on=CUSTOMER_ID, how="left")
    posted = posted_contact_state(settings, frame.set_index(CUSTOMER_ID)[CONTACT_STATE])
    if len(posted):  # a customer contacted since the build is not planned as if they were not
        rows = frame[CUSTOMER_ID].isin(posted.index).to_numpy()
        moved = posted.reindex(frame.loc[rows, CUSTOMER_ID]).to_numpy()
        frame[CONTACT_STATE] = frame[CONTACT_STATE].apply(pd.to_datetime, utc=True)
        frame.loc[rows, CONTACT_STATE] = moved
    state = frame[CONTACT_STATE].assign(**{REQUEST_AT: pd.Timestamp(now)})
    return pd.concat([frame, recency_frame(state)], axis=1)


def write_plan(frame: pd.DataFrame, path: Path) -> None:
    """Parquet, or CSV when the path ends in .csv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        tmp = path.with_name(f".{path.name}.tmp")
        safe_cells(frame).to_csv(tmp, index=False)  # a spreadsheet never runs a cell as a formula
        tmp.replace(path)
    else:
        write_parquet(frame, path)


def ledger_used(settings: Settings, catalog: Catalog, now: datetime) -> dict[tuple[str, str], int]:
    """Capacity the service has already taken in the period of ``now``, per (action, bucket)."""

    def read(tx: Tx) -> dict[tuple[str, str], int]:
        return {
            (a.name, bucket): n
            for a in catalog.actions
            if a.capacity
            for bucket, n in capacity.used(tx, a.name, a.capacity.period_of(now)).items()
        }

    log = DecisionLog.open(settings)
    try:
        return log.run(read)
    finally:
        log.close()


def reserve(settings: Settings, catalog: Catalog, frame: pd.DataFrame, plan: Plan, now: datetime) -> int:
    """Take the plan's scarce slots in the service's capacity ledger, in one transaction.

    The online path then only gives out what the plan left. If the service took capacity between
    the plan's read of the ledger and now, the lowest-uplift holders of the missing slots fall back
    (in place, with their propensities recomputed). Returns how many customers fell back.
    """
    rows_of = {}
    for s in capacity_slots(catalog, frame):
        mine = np.flatnonzero((plan.action == s.action) & ~plan.explored)
        for g in np.unique(s.group[mine]):
            rows_of[(s.action, s.names[g])] = mine[s.group[mine] == g]

    def take_all(tx: Tx) -> dict[tuple[int, str], int]:
        return {
            (j, bucket): capacity.take(tx, catalog.actions[j], _period(catalog, j, now), bucket, len(rows))
            for (j, bucket), rows in rows_of.items()
        }

    log = DecisionLog.open(settings)
    try:
        granted = log.run(take_all)
    finally:
        log.close()
    short = []
    for key, rows in rows_of.items():
        uplift = plan.values[rows, plan.action[rows]] - plan.values[rows, plan.fallback[rows]]
        short.append(rows[np.argsort(uplift, kind="stable")][: len(rows) - granted[key]])
    lost = np.concatenate(short) if short else np.array([], np.int64)
    demote(plan, lost)
    return len(lost)


def run_plan(
    settings: Settings,
    catalog: Catalog,
    now: datetime,
    out: Path | None = None,
    epsilon: float | None = None,
    take_capacity: bool = False,
) -> PlanSummary:
    """`nexttouch plan`: latest features -> champion P(success) -> global plan -> parquet/CSV.

    Capacity the service already used this period (its ledger) is not planned again; with
    ``take_capacity`` the plan's own slots are taken in the ledger, so the service cannot give them
    out twice.
    """
    frame = latest_features(settings, now)
    champion = load_champion(settings)
    model = champion.model
    p = predict(model, frame, catalog.names)
    epsilon = settings.epsilon if epsilon is None else epsilon
    plan = plan_actions(
        catalog,
        frame,
        p,
        now,
        epsilon=epsilon,
        # reproducible for a given plan time, different every night (explorers are not the same people)
        seed=int(np.random.SeedSequence([settings.seed, int(now.timestamp())]).generate_state(1)[0]),
        default_time_zone=settings.default_time_zone,
        used=ledger_used(settings, catalog, now),
    )
    fell_back = reserve(settings, catalog, frame, plan, now) if take_capacity else 0
    table = plan_frame(catalog, frame, plan, now, champion.version)
    path = out or settings.data_dir / "plans" / f"plan-{now:%Y%m%dT%H%M}.parquet"
    write_plan(table, path)
    counts = table[ACTION].value_counts().reindex(catalog.names, fill_value=0)
    explored = int(plan.explored.sum())
    by_action = {a: int(c) for a, c in counts.items()}
    return PlanSummary(len(table), plan.total_value(), by_action, path, fell_back, explored, epsilon)


def _period(catalog: Catalog, j: int, now: datetime) -> str:
    rule = catalog.actions[j].capacity
    assert rule is not None
    return rule.period_of(now)
