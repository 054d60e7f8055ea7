"""The nightly plan: the next contact for every customer at once, with scarce capacity assigned globally.

Each customer's best *non-scarce* action (``none``, ``push``, ...) is its fallback. A scarce action
(one with a catalog ``capacity``) is worth giving to a customer only by its uplift over that
fallback, so the limited advisor calls and event seats go where the uplift is largest: a
b-matching of customers to (action, group) capacities, solved exactly as a linear program
(HiGHS dual simplex; the constraint matrix is a bipartite incidence matrix, so the optimum is
integral). Only the customers that can matter enter the LP (see ``_candidates``), so 1M customers
cost no more than the few thousand slots there are.

Contact rules, values, exploration and reason texts are the decision engine's (nexttouch.engine);
the plan job (nexttouch.jobs.plan) does the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import linprog

from nexttouch.catalog import ALL_BUCKETS, NO_ACTION, Catalog
from nexttouch.columns import from_frame, times
from nexttouch.engine import reasons
from nexttouch.engine.choice import best, explore, net_values
from nexttouch.engine.rules import Rule, check
from nexttouch.model import DecisionModel
from nexttouch.schemas import ACTION, CUSTOMER_ID, DECIDED_AT, DECISION_ID, PROPENSITY

# Why each customer got its action (index into WHY).
WHY = (reasons.PLAN_BEST, reasons.PLAN_EXPLORED, reasons.PLAN_ASSIGNED, reasons.PLAN_CAPACITY_FULL)
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
            group, names, open_ = np.zeros(len(frame), np.int64), [ALL_BUCKETS], [True]
        else:
            if cap.per not in frame:
                raise KeyError(f"{action.name} capacity is per {cap.per!r}, a column the customer features lack")
            codes, uniques = pd.factorize(frame[cap.per], use_na_sentinel=True)
            names = [cap.bucket(u) for u in uniques]
            open_ = [True] * len(names)
            if (codes < 0).any():
                codes = np.where(codes < 0, len(names), codes)
                names.append(cap.bucket(None))
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
    rules: np.ndarray  # (rows, actions) first contact rule each action breaks (engine.rules.Rule)
    epsilon: np.ndarray  # (rows,) exploration share of each row (0 where nothing can be explored)
    explore_p: np.ndarray  # (rows, actions) P(action | exploring)
    send_at: np.ndarray  # (rows, actions) Unix seconds an action waits for quiet hours to end, NaN: now

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
    checked = check(catalog, from_frame(frame), n, now, default_time_zone)
    rules = checked.rules
    eligible = rules == Rule.OK
    values = net_values(catalog, p_success)
    slots = capacity_slots(catalog, frame, used)
    scarce = np.zeros(k, bool)
    scarce[[s.action for s in slots]] = True

    fallback = best(values, eligible & ~scarce, catalog.names.index(NO_ACTION))
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

    # Exploration draws among the eligible non-scarce actions only: scarce slots are given out
    # globally, so a random draw could overflow them. Explorers' planned slots stay unused, so every
    # propensity is exact.
    rng = np.random.default_rng(seed)
    explore_u, draw_u = rng.random(n), 1.0 - rng.random(n)
    chosen = explore(catalog, planned, eligible & ~scarce, epsilon, explore_u, draw_u)

    why = np.full(n, BEST, np.int8)
    why[planned != fallback] = ASSIGNED
    why[blocked >= 0] = CAPACITY_FULL
    why[chosen.explored] = EXPLORED
    return Plan(
        chosen.action,
        planned,
        chosen.propensity,
        chosen.explored,
        values,
        fallback,
        why,
        blocked,
        rules,
        chosen.epsilon,
        chosen.explore_p,
        checked.send_at,
    )


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


def plan_frame(
    catalog: Catalog, frame: pd.DataFrame, plan: Plan, decided_at: datetime | None = None, model_version: str = ""
) -> pd.DataFrame:
    """One row per customer: decision id, action, propensity, the uplift over no contact of the chosen action and
    of every action, the net values it is made of, the uplift over the fallback and the reasons.

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
    # uplift over no contact is what compares across actions: each value counts its own success touch
    rows, none = np.arange(n), catalog.names.index(NO_ACTION)
    out["uplift"] = plan.values[rows, plan.action] - plan.values[:, none]
    for j, a in enumerate(catalog.names):
        out[f"uplift_{a}"] = plan.values[:, j] - plan.values[:, none]
    for j, a in enumerate(catalog.names):
        out[f"value_{a}"] = plan.values[:, j]
    send = plan.send_at[np.arange(n), plan.action]
    out["send_at"] = times(send)  # NaT: now
    out["uplift_over_fallback"] = plan.values[np.arange(n), plan.action] - plan.values[np.arange(n), plan.fallback]
    per = sorted({s.per for s in capacity_slots(catalog, frame) if s.per})
    for col in per:
        out[col] = frame[col].to_numpy()
    # Reasons: few distinct combinations of (why, blocked action, broken rules), so each text is built once.
    keys = np.column_stack([plan.why, plan.blocked + 1, plan.action, plan.rules]).astype(np.int64)
    radix = np.array([len(WHY), len(catalog.names) + 1, len(catalog.names), *[len(Rule)] * plan.rules.shape[1]])
    code = keys @ np.concatenate([[1], np.cumprod(radix[:-1])])  # one int per row; hashing beats sorting rows
    inverse, uniq = pd.factorize(code)
    texts = [_reason(catalog, names, keys[np.argmax(code == c)]) for c in uniq]
    text_code, distinct = pd.factorize(pd.Series(texts, dtype=object))  # some keys read the same
    out["reasons"] = pd.Categorical.from_codes(text_code[inverse], categories=distinct)
    return out


def _reason(catalog: Catalog, names: np.ndarray, key: np.ndarray) -> str:
    why, blocked, action, rules = int(key[0]), int(key[1]) - 1, int(key[2]), key[3:]
    said = WHY[why].format(scarce=names[blocked] if blocked >= 0 else "")
    if why == BEST and (rules == Rule.OK).sum() == 1:
        said = reasons.PLAN_ONLY
    elif why == BEST and names[action] == NO_ACTION:
        said = reasons.PLAN_NOTHING
    parts = [f"{names[action]}: {said}"]
    removed = [f"{names[j]} ({Rule(int(r)).label})" for j, r in enumerate(rules) if r != Rule.OK]
    if removed:
        parts.append("removed: " + ", ".join(removed))
    return "; ".join(parts)


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
