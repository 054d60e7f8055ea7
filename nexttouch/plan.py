"""The nightly plan: the next contact for every customer at once, with scarce capacity assigned globally.

Each customer's best *non-scarce* action (``none``, ``push``, ...) is its fallback. A scarce action
(one with a catalog ``capacity``) is worth giving to a customer only by its uplift over that
fallback, so the limited advisor calls and event seats go where the uplift is largest: a
b-matching of customers to (action, group) capacities, solved exactly as a linear program
(HiGHS dual simplex; the constraint matrix is a bipartite incidence matrix, so the optimum is
integral). Only the customers that can matter enter the LP (see ``_candidates``), so 1M customers
cost no more than the few thousand slots there are.

The core (``plan_actions``) is pure numpy/pandas; ``run_plan`` does the I/O: latest features,
champion model, parquet/CSV out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import linprog

from nexttouch.catalog import NO_ACTION, Catalog
from nexttouch.parquet import write_parquet
from nexttouch.policy import OK, RULES, broken_rules, explore_probabilities, net_values
from nexttouch.schemas import ACTION, CUSTOMER_ID, DECIDED_AT, DECISION_ID, EVENT_TIMESTAMP, PROPENSITY, REQUEST_AT

if TYPE_CHECKING:
    from nexttouch.model import DecisionModel
    from nexttouch.settings import Settings

ALL = "all"  # the group of a capacity without `per`
UNKNOWN = "unknown"
# Why each customer got its action (index into WHY).
WHY = (
    "best net value",
    "exploration: drawn among eligible non-scarce actions by explore weight",
    "scarce action assigned where it adds most over the best alternative",
    "{scarce} would add more, but its capacity went to customers where it adds most",
)
BEST, EXPLORED, ASSIGNED, CAPACITY_FULL = range(len(WHY))


@dataclass(frozen=True)
class Slots:
    """One scarce action's capacity: each customer's group and each group's limit."""

    action: int  # column in the catalog
    per: str | None
    group: np.ndarray  # (rows,) group code of each customer
    names: list[str]  # group code -> group name
    limit: np.ndarray  # (groups,) how many the plan may assign


def capacity_slots(
    catalog: Catalog, frame: pd.DataFrame, used: Mapping[tuple[str, str], int] | None = None
) -> list[Slots]:
    """The capacities of the catalog's scarce actions, grouped by their ``per`` profile column.

    Groups are named like the service's capacity ledger buckets (``region=north``, ``all``) and
    ``used`` (action, bucket) -> units already taken this period is subtracted from each limit.
    A customer without a value in the ``per`` column is in ``<per>=unknown``, which the plan gives
    nothing: it cannot tell which group's limit the customer would count against.
    """
    used = used or {}
    slots = []
    for j, action in enumerate(catalog.actions):
        cap = action.capacity
        if cap is None:
            continue
        if cap.per is None:
            group, names, open_ = np.zeros(len(frame), np.int64), [ALL], [True]
        else:
            if cap.per not in frame:
                raise KeyError(f"{action.name} capacity is per {cap.per!r}, a column the customer features lack")
            codes, uniques = pd.factorize(frame[cap.per], use_na_sentinel=True)
            names = [f"{cap.per}={u}" for u in uniques]
            open_ = [True] * len(names)
            if (codes < 0).any():
                codes = np.where(codes < 0, len(names), codes)
                names.append(f"{cap.per}={UNKNOWN}")
                open_.append(False)
            group = codes.astype(np.int64)
        limit = np.array(
            [max(cap.limit - used.get((action.name, g), 0), 0) if o else 0 for g, o in zip(names, open_, strict=True)]
        )
        slots.append(Slots(j, cap.per, group, names, limit))
    return slots


@dataclass(frozen=True)
class Plan:
    action: np.ndarray  # (rows,) catalog column of each customer's action
    planned: np.ndarray  # (rows,) the action the plan would give without exploration
    propensity: np.ndarray
    explored: np.ndarray
    values: np.ndarray  # (rows, actions) expected net values
    fallback: np.ndarray  # (rows,) best eligible non-scarce action
    why: np.ndarray  # (rows,) index into WHY
    blocked: np.ndarray  # (rows,) scarce action that would have been better but had no capacity left, or -1
    rules: np.ndarray  # (rows, actions) broken contact rule per action (policy.RULES)
    epsilon: np.ndarray  # (rows,) exploration share of each row (0 where nothing can be explored)
    explore_p: np.ndarray  # (rows, actions) P(action | exploring)

    def total_value(self) -> float:
        return float(self.values[np.arange(len(self.action)), self.action].sum())


def plan_actions(
    catalog: Catalog,
    frame: pd.DataFrame,
    p_success: np.ndarray,
    now: datetime | None,
    epsilon: float = 0.0,
    seed: int = 0,
    default_time_zone: str = "UTC",
    used: Mapping[tuple[str, str], int] | None = None,
) -> Plan:
    """Decide every row of ``frame`` (one customer each) at once; ``p_success`` columns follow the catalog.

    ``used``: capacity already taken this period per (action, bucket), e.g. from the service's ledger.
    """
    n, k = p_success.shape
    rules = broken_rules(catalog, frame, now, default_time_zone)
    eligible = rules == OK
    values = net_values(catalog, p_success)
    slots = capacity_slots(catalog, frame, used)
    scarce = np.zeros(k, bool)
    scarce[[s.action for s in slots]] = True

    fallback = _best(values, eligible & ~scarce, catalog.names.index(NO_ACTION))
    fallback_value = values[np.arange(n), fallback]
    planned = fallback.copy()
    uplift = np.where(eligible[:, scarce], values[:, scarce] - fallback_value[:, None], 0.0)
    rows, cols = _assign(uplift, slots)
    planned[rows] = np.flatnonzero(scarce)[cols]
    # the scarce action a customer would have taken alone (largest positive uplift) but did not get
    blocked = np.full(n, -1)
    if slots:
        alone = np.where(uplift.max(axis=1) > 0, np.flatnonzero(scarce)[uplift.argmax(axis=1)], -1)
        blocked = np.where(planned == alone, -1, alone)

    # Exploration: a share epsilon draws among the eligible non-scarce actions by explore weight.
    # Scarce actions are not explored here: their slots are given out globally, so a random draw could
    # overflow them. Explorers' planned slots stay unused, so every propensity is exact.
    explore_p = explore_probabilities(catalog, eligible & ~scarce)
    can_explore = explore_p.sum(axis=1) > 0
    eps = np.where(can_explore, epsilon, 0.0)
    rng = np.random.default_rng(seed)
    explored = rng.random(n) < eps
    draw = (explore_p.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    action = np.where(explored, draw, planned)
    propensity = eps * explore_p[np.arange(n), action] + (1 - eps) * (action == planned)

    why = np.full(n, BEST, np.int8)
    why[planned != fallback] = ASSIGNED
    why[blocked >= 0] = CAPACITY_FULL
    why[explored] = EXPLORED
    return Plan(action, planned, propensity, explored, values, fallback, why, blocked, rules, eps, explore_p)


def demote(plan: Plan, rows: np.ndarray) -> None:
    """Give ``rows`` their fallback instead of a scarce slot they cannot have after all (in place).

    The fallback becomes what the plan chose for them, so their propensities are recomputed.
    """
    keep = ~plan.explored[rows]  # explorers hold no slot
    rows = rows[keep]
    plan.blocked[rows] = plan.action[rows]
    plan.planned[rows] = plan.action[rows] = plan.fallback[rows]
    plan.why[rows] = CAPACITY_FULL
    plan.propensity[rows] = plan.epsilon[rows] * plan.explore_p[rows, plan.fallback[rows]] + 1 - plan.epsilon[rows]


def _best(values: np.ndarray, allowed: np.ndarray, none: int) -> np.ndarray:
    """Column of the highest value among allowed actions; ``none`` wins ties (it is always allowed)."""
    masked = np.where(allowed, values, -np.inf)
    best = masked.argmax(axis=1)
    return np.where(masked[:, none] >= masked[np.arange(len(best)), best], none, best)


def _assign(uplift: np.ndarray, slots: list[Slots]) -> tuple[np.ndarray, np.ndarray]:
    """Max total uplift with at most one scarce action per customer and each group's limit: (rows, slot)."""
    if not slots:
        return np.array([], np.int64), np.array([], np.int64)
    cand_rows, cand_cols = _candidates(uplift, slots)
    if len(cand_rows) == 0:
        return cand_rows, cand_cols
    m = len(cand_rows)
    customers, cust_idx = np.unique(cand_rows, return_inverse=True)
    # capacity rows: one per (slot, group)
    offsets = np.cumsum([0, *(len(s.limit) for s in slots)])
    cap_idx = np.empty(m, np.int64)
    for c, s in enumerate(slots):
        mine = cand_cols == c
        cap_idx[mine] = offsets[c] + s.group[cand_rows[mine]]
    a_ub = sparse.vstack(
        [
            sparse.csr_matrix((np.ones(m), (cust_idx, np.arange(m))), shape=(len(customers), m)),
            sparse.csr_matrix((np.ones(m), (cap_idx, np.arange(m))), shape=(offsets[-1], m)),
        ]
    ).tocsr()
    b_ub = np.concatenate([np.ones(len(customers)), np.concatenate([s.limit for s in slots]).astype(float)])
    result = linprog(-uplift[cand_rows, cand_cols], A_ub=a_ub, b_ub=b_ub, bounds=(0, 1), method="highs-ds")
    if result.status != 0:
        raise RuntimeError(f"capacity assignment LP failed: {result.message}")
    take = result.x > 0.5  # integral at a vertex (bipartite b-matching); 0.5 guards float noise
    return cand_rows[take], cand_cols[take]


def _candidates(uplift: np.ndarray, slots: list[Slots]) -> tuple[np.ndarray, np.ndarray]:
    """(customer, slot) pairs that an optimal assignment can use, with positive uplift.

    For slot s and group g only the top ``limit[s, g] + B`` customers of g by uplift can matter,
    where B bounds how many of them other scarce actions can take (their limit in the same group,
    or their total limit when grouped by another column): if a customer outside the top set held
    the slot, some customer in the top set would be free and at least as good (exchange argument).
    """
    rows, cols = [], []
    for c, s in enumerate(slots):
        others = [o for o in slots if o is not s]
        positive = np.flatnonzero(uplift[:, c] > 0)
        order = positive[np.lexsort((positive, -uplift[positive, c]))]  # by uplift, then row: deterministic
        group = s.group[order]
        for g, limit in enumerate(s.limit):
            bound = sum(int(o.limit[g]) if o.per == s.per else int(o.limit.sum()) for o in others)
            top = order[group == g][: int(limit) + bound] if limit > 0 else order[:0]
            rows.append(top)
            cols.append(np.full(len(top), c))
    return np.concatenate(rows), np.concatenate(cols)


def first_come_first_served(
    catalog: Catalog, frame: pd.DataFrame, p_success: np.ndarray, now: datetime | None, default_time_zone: str = "UTC"
) -> np.ndarray:
    """Baseline: customers in row order each take their best eligible action while capacity lasts.

    A customer whose best scarce action is full falls back to the next best eligible one.
    """
    eligible = broken_rules(catalog, frame, now, default_time_zone) == OK
    values = np.where(eligible, net_values(catalog, p_success), -np.inf)
    slots = {s.action: s for s in capacity_slots(catalog, frame)}
    left = {j: s.limit.copy() for j, s in slots.items()}
    none = catalog.names.index(NO_ACTION)
    chosen = _best(values, eligible, none)
    for i in np.flatnonzero(np.isin(chosen, list(slots))):
        order = sorted(range(values.shape[1]), key=lambda j: (-values[i, j], j != none))
        for j in order:
            if j in slots:
                g = slots[j].group[i]
                if left[j][g] <= 0:
                    continue
                left[j][g] -= 1
            chosen[i] = j
            break
    return chosen


def plan_frame(
    catalog: Catalog, frame: pd.DataFrame, plan: Plan, decided_at: datetime | None = None, model_version: str = ""
) -> pd.DataFrame:
    """One row per customer: decision id, action, propensity, values, the uplift behind it and the reasons.

    Decision ids are ``plan-<decided_at>-<row>``: unique per plan, so outcomes can be sent back for them.
    """
    names = np.array(catalog.names, dtype=object)
    n = len(plan.action)
    stamp = pd.Timestamp(decided_at or datetime.now(UTC))
    out = pd.DataFrame(
        {
            DECISION_ID: f"plan-{stamp:%Y%m%dT%H%M%S}-" + pd.Series(np.arange(n)).astype(str).str.zfill(8),
            CUSTOMER_ID: frame[CUSTOMER_ID].to_numpy(),
            DECIDED_AT: stamp,
            "model_version": model_version,
            ACTION: pd.Categorical.from_codes(plan.action, catalog.names),
            PROPENSITY: plan.propensity,
            "explored": plan.explored,
            "fallback": pd.Categorical.from_codes(plan.fallback, catalog.names),
        }
    )
    for j, a in enumerate(catalog.names):
        out[f"value_{a}"] = plan.values[:, j]
    out["uplift_over_fallback"] = plan.values[np.arange(n), plan.action] - plan.values[np.arange(n), plan.fallback]
    per = sorted({s.per for s in capacity_slots(catalog, frame) if s.per})
    for col in per:
        out[col] = frame[col].to_numpy()
    # Reasons: few distinct combinations of (why, blocked action, broken rules), so each text is built once.
    keys = np.column_stack([plan.why, plan.blocked + 1, plan.action, plan.rules]).astype(np.int64)
    radix = np.array([len(WHY), len(catalog.names) + 1, len(catalog.names), *[len(RULES)] * plan.rules.shape[1]])
    code = keys @ np.concatenate([[1], np.cumprod(radix[:-1])])  # one int per row; hashing beats sorting rows
    inverse, uniq = pd.factorize(code)
    texts = [_reason(catalog, names, keys[np.argmax(code == c)]) for c in uniq]
    text_code, distinct = pd.factorize(pd.Series(texts, dtype=object))  # some keys read the same
    out["reasons"] = pd.Categorical.from_codes(text_code[inverse], categories=distinct)
    return out


def _reason(catalog: Catalog, names: np.ndarray, key: np.ndarray) -> str:
    why, blocked, action, rules = int(key[0]), int(key[1]) - 1, int(key[2]), key[3:]
    parts = [f"{names[action]}: " + WHY[why].format(scarce=names[blocked] if blocked >= 0 else "")]
    removed = [f"{names[j]} ({RULES[r]})" for j, r in enumerate(rules) if r != OK]
    if removed:
        parts.append("removed: " + ", ".join(removed))
    return "; ".join(parts)


@dataclass(frozen=True)
class PlanSummary:
    customers: int
    total_value: float
    counts: dict[str, int]
    path: Path
    fell_back: int = 0  # customers who lost a slot the service took meanwhile (with take_capacity)


def latest_features(settings: Settings, now: datetime) -> pd.DataFrame:
    """Every customer's latest offline feature row at ``now`` plus recency at ``now``: what the online store holds.

    ``features.online_load.read_latest`` is the function that loads the online store, so these are
    the rows ``get_online_features`` would return (as of the nightly build; contact touches pushed
    to the online store since then are not in the files). Reading parquet in bulk is ~100x faster
    than millions of online lookups. Recency comes from the same function as the on-demand view.
    """
    import pyarrow.parquet as pq

    from features.online_load import read_latest
    from features.pipeline import CUSTOMER_PROFILE, TOUCH_HISTORY
    from features.touch_features import CONTACT_STATE, recency_frame

    def latest(name: str) -> pd.DataFrame:
        path = settings.offline_dir / f"{name}.parquet"
        columns = pq.read_schema(path).names
        return read_latest(path, [CUSTOMER_ID], EVENT_TIMESTAMP, columns, now).drop(columns=[EVENT_TIMESTAMP])

    frame = latest(CUSTOMER_PROFILE).merge(latest(TOUCH_HISTORY), on=CUSTOMER_ID, how="left")
    state = frame[CONTACT_STATE].assign(**{REQUEST_AT: pd.Timestamp(now)})
    return pd.concat([frame, recency_frame(state)], axis=1)


def predict(model: DecisionModel, frame: pd.DataFrame, actions: list[str], size: int = 100_000) -> np.ndarray:
    """Calibrated P(success) in catalog order, ``size`` customers at a time (bounded memory)."""
    missing = set(actions) - set(model.actions)
    if missing:
        raise ValueError(f"model does not score catalog actions {sorted(missing)}")
    absent = [c for c in model.inputs if c not in frame]
    if absent:
        raise ValueError(f"the features lack model inputs {absent}")
    columns = [model.actions.index(a) for a in actions]
    out = np.empty((len(frame), len(actions)))
    for lo in range(0, len(frame), size):
        part = slice(lo, min(lo + size, len(frame)))
        out[part] = model.predict_all(frame.iloc[part])[:, columns]
    return out


def write_plan(frame: pd.DataFrame, path: Path) -> None:
    """Parquet, or CSV when the path ends in .csv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        tmp = path.with_name(f".{path.name}.tmp")
        frame.to_csv(tmp, index=False)
        tmp.replace(path)
    else:
        write_parquet(frame, path)


def ledger_used(settings: Settings, catalog: Catalog, now: datetime) -> dict[tuple[str, str], int]:
    """Capacity the service has already taken in the period of ``now``, per (action, bucket)."""
    from serving.capacity import period_of
    from serving.decision_log import DecisionLog, Tx

    def read(tx: Tx) -> dict[tuple[str, str], int]:
        used = {}
        for a in catalog.actions:
            if a.capacity:
                sql = "SELECT bucket, used FROM capacity WHERE action = ? AND period = ?"
                for bucket, n in tx.execute(sql, (a.name, period_of(a.capacity, now))).fetchall():
                    used[(a.name, bucket)] = int(n)
        return used

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
    from serving.capacity import period_of, take
    from serving.decision_log import DecisionLog, Tx

    rows_of = {}
    for s in capacity_slots(catalog, frame):
        mine = np.flatnonzero((plan.action == s.action) & ~plan.explored)
        for g in np.unique(s.group[mine]):
            rows_of[(s.action, s.names[g])] = mine[s.group[mine] == g]

    def take_all(tx: Tx) -> dict[tuple[int, str], int]:
        return {
            (j, bucket): take(tx, catalog.actions[j], period_of(catalog.actions[j].capacity, now), bucket, len(rows))
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
    from serving.champion import load_champion

    frame = latest_features(settings, now)
    champion = load_champion(settings)
    model = champion.model
    p = predict(model, frame, catalog.names)
    plan = plan_actions(
        catalog,
        frame,
        p,
        now,
        epsilon=settings.epsilon if epsilon is None else epsilon,
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
    return PlanSummary(len(table), plan.total_value(), {a: int(c) for a, c in counts.items()}, path, fell_back)
