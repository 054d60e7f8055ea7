"""Closed-loop what-if: run any policy forward in the simulated world and measure it on-policy.

Each day the customers due for a decision are featurised from the simulated touch history the
way the brand would (the feature code is injected: ``Featurize``), and at each decision hour the
policy under test sees only those rows: features, recency and profile, never the world's latent
traits. The decision engine's contact rules (``nexttouch.engine.rules``: a push due in quiet hours
is deferred to their end), capacity and cost-aware exploration (``nexttouch.engine.choice``) are
applied here, the same for every policy; the chosen actions go to the world, whose true response
becomes touch events (next days' features) and outcomes (the policy's ``observe``, when the brand
would know them: at the success touch, or when the attribution window closes).

Values are the catalog's net values, P(success) x value_of_success - cost, with the world's true
P(success) of the state the customer is in at the decision (expected) and with the outcome that
happened (realised).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
from scipy import stats
from tqdm import tqdm

from nexttouch.catalog import NO_ACTION, Catalog
from nexttouch.columns import from_frame, take_rows
from nexttouch.engine import DecisionEngine, rules
from nexttouch.engine.affinity import Affinity, update
from nexttouch.engine.choice import best, choose, explore, net_values
from nexttouch.logodds import logit
from nexttouch.model import DecisionModel
from nexttouch.schemas import ACTION, CUSTOMER_ID, DECIDED_AT, DECISION_ID, OUTCOME, PROPENSITY, TOUCH_TYPES
from nexttouch.world import DAY_S, EXPLORE, TYPE_NAMES, Origin, World, stream

BEST_SINGLE = "best single action"
KNOWN_AT = "known_at"
OMO_DAYS = 14  # an in-person touch this many days after online activity is an online -> offline transition
# (events, profile, day start, each row's decision time) -> one feature row per profile row, in its order
Featurize = Callable[[pd.DataFrame, pd.DataFrame, datetime, pd.Series], pd.DataFrame]


@runtime_checkable
class Policy(Protocol):
    """A decision policy under test: a batch of feature rows and a time in, actions out.

    ``decide`` returns, for every row, the index of the chosen catalog action (eligible by
    ``eligible``, a (rows, actions) mask of what contact rules and capacity allow) and the
    probability with which the policy chose it. A policy that randomises on its own sets
    ``explores = True``; any other gets the runner's cost-aware exploration.
    """

    name: str

    def decide(self, frame: pd.DataFrame, now: datetime, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class Learner(Protocol):
    """A policy that learns from outcomes: labelled decisions, delivered when the brand would know them."""

    def observe(self, outcomes: pd.DataFrame) -> None: ...


PolicyFactory = Callable[[World], Policy]


class ConstantPolicy:
    """The same action for everyone whenever it is allowed, otherwise no contact."""

    def __init__(self, catalog: Catalog, action: str) -> None:
        self.name = f"always {action}"
        self.j, self.none = catalog.names.index(action), catalog.names.index(NO_ACTION)

    def decide(self, frame: pd.DataFrame, now: datetime, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.where(eligible[:, self.j], self.j, self.none), np.ones(len(frame))


class RandomPolicy:
    """Uniform among the eligible actions."""

    explores = True

    def __init__(self, seed: int) -> None:
        self.name = "random"
        self.rng = np.random.default_rng([seed, 99])

    def decide(self, frame: pd.DataFrame, now: datetime, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count = eligible.sum(axis=1)
        pick = (self.rng.random(len(frame)) * count).astype(int)
        chosen = np.argmax(eligible & (np.cumsum(eligible, axis=1) - 1 == pick[:, None]), axis=1)
        return chosen, 1.0 / count


class OraclePolicy:
    """Knows the world's truth: the best eligible action by true net value (myopic, one decision at a time)."""

    def __init__(self, world: World) -> None:
        self.name = "oracle"
        self.world, self.catalog = world, world.origin.catalog
        self.none = self.catalog.names.index(NO_ACTION)

    def decide(self, frame: pd.DataFrame, now: datetime, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cust = self.world.position.get_indexer(frame[CUSTOMER_ID])
        values = net_values(self.catalog, self.world.true_p(cust))
        return best(values, eligible, self.none), np.ones(len(frame))


class ChampionPolicy:
    """A trained DecisionModel through the decision policy: calibrated P(success) -> net value -> best eligible.

    The one adapter between the what-if runner and the service's decision logic.
    """

    def __init__(self, catalog: Catalog, model: DecisionModel, name: str = "champion") -> None:
        missing = set(catalog.names) - set(model.actions)
        if missing:
            raise ValueError(f"model does not score catalog actions {sorted(missing)}")
        self.name, self.catalog, self.model = name, catalog, model
        self.columns = [model.actions.index(a) for a in catalog.names]
        self.none = catalog.names.index(NO_ACTION)

    def decide(self, frame: pd.DataFrame, now: datetime, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.model.predict_all(frame)[:, self.columns]
        return best(net_values(self.catalog, p), eligible, self.none), np.ones(len(frame))


class LearningChampionPolicy:
    """The champion through the decision engine with each customer's own affinity per action.

    As the service does with per-customer learning on: the engine's draft scores the population
    model, ``personalise`` adds the customer's posterior (its mean, or with ``sample`` a draw: Thompson
    sampling; exact propensities, the engine's exploration), and every outcome the brand learns updates that
    customer's posterior at once (``nexttouch.engine.affinity.update``).
    """

    explores = True  # the engine explores and reports its own propensities

    def __init__(
        self,
        world: World,
        model: DecisionModel,
        prior_sd: float | np.ndarray,
        epsilon: float,
        default_time_zone: str = "UTC",
        name: str = "champion + own learning",
        sample: bool = False,
    ) -> None:
        catalog = world.origin.catalog
        self.name, self.catalog, self.epsilon = name, catalog, epsilon
        self.engine = DecisionEngine(
            catalog,
            model,
            "whatif",
            epsilon,
            seed=world.origin.seed,
            default_time_zone=default_time_zone,
            sample=sample,
        )
        self.position = world.position
        self.affinity = Affinity.prior(world.origin.n, np.broadcast_to(np.asarray(prior_sd, float), len(catalog.names)))
        self.none = catalog.names.index(NO_ACTION)
        self.base: dict[tuple[str, int], np.ndarray] = {}  # (customer, decision time) -> population log-odds

    def decide(self, frame: pd.DataFrame, now: datetime, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = frame[CUSTOMER_ID].tolist()
        draft = self.engine.draft(ids, from_frame(frame), now)
        rows = self.position.get_indexer(frame[CUSTOMER_ID])
        a = self.affinity
        self.engine.personalise(draft, Affinity(a.mean[rows], a.precision[rows], a.outcomes[rows]))
        choice = choose(
            self.catalog, draft.values, eligible, self.epsilon, draft.explore_u, draft.draw_u, self.none, draft.sampled
        )
        stamp = int(now.timestamp())
        for cid, base in zip(ids, logit(draft.population), strict=True):
            self.base[(cid, stamp)] = base
        return choice.action, choice.propensity

    def observe(self, outcomes: pd.DataFrame) -> None:
        a, column = self.affinity, {name: j for j, name in enumerate(self.catalog.names)}
        stamps = (outcomes[DECIDED_AT].astype("int64") // 10**9).to_numpy()
        rows = self.position.get_indexer(outcomes[CUSTOMER_ID])
        for cid, stamp, row, action, outcome in zip(
            outcomes[CUSTOMER_ID], stamps, rows, outcomes[ACTION], outcomes[OUTCOME], strict=True
        ):
            base = self.base.pop((cid, int(stamp)), None)
            if base is None:  # a repeated outcome is learnt once
                continue
            j = column[action]
            a.mean[row, j], a.precision[row, j] = update(a.mean[row, j], a.precision[row, j], base[j], outcome)
            a.outcomes[row, j] += 1


@dataclass
class Capacity:
    """Advisor calls and event seats used per action, period and bucket (e.g. region), as the service counts."""

    catalog: Catalog

    def __post_init__(self) -> None:
        self.used: dict[tuple[int, str, object], int] = {}

    def grant(self, action: np.ndarray, profile: pd.DataFrame, day: datetime) -> np.ndarray:
        """Whether each row (in order) gets its action; scarce actions past their limit do not."""
        ok = np.ones(len(action), bool)
        for j, a in enumerate(self.catalog.actions):
            rule, rows = a.capacity, np.flatnonzero(action == j)
            if rule is None or not len(rows):
                continue
            period = rule.period_of(day)
            values = profile[rule.per].astype(object).to_numpy()[rows] if rule.per in profile else [None] * len(rows)
            buckets = [rule.bucket(v) for v in values]
            for row, bucket in zip(rows, buckets, strict=True):
                key = (j, period, bucket)
                if self.used.get(key, 0) >= rule.limit:
                    ok[row] = False
                else:
                    self.used[key] = self.used.get(key, 0) + 1
        return ok


@dataclass
class RunResult:
    """One policy's closed-loop run on one seed: every decision it made and the touches that followed."""

    policy: str
    seed: int
    customers: int
    days: int
    actions: list[str]
    day: np.ndarray
    cust: np.ndarray
    action: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray
    expected: np.ndarray  # true expected net value of the chosen action
    realised: np.ndarray  # net value of what happened
    omo: dict[str, float]  # transitions per customer over the run

    def metrics(self) -> dict[str, float]:
        cd = self.customers * self.days
        out = {
            "value_per_customer_day": float(self.expected.sum() / cd),
            "realised_per_customer_day": float(self.realised.sum() / cd),
            "value_per_decision": float(self.expected.mean()) if len(self.expected) else float("nan"),
            "contacts_per_customer": float((self.action != self.actions.index(NO_ACTION)).sum() / self.customers),
            "explored_share": float(self.explored.mean()) if len(self.explored) else 0.0,
        }
        for j, a in enumerate(self.actions):
            out[f"share_{a}"] = float((self.action == j).mean()) if len(self.action) else 0.0
        return out | {f"omo_{k}": v for k, v in self.omo.items()}


def run_policy(
    origin: Origin,
    make_policy: PolicyFactory,
    days: int,
    featurize: Featurize,
    epsilon: float,
    history_days: int = 180,
    default_time_zone: str = "UTC",
    progress: bool = False,
) -> RunResult:
    """Run one policy closed loop for ``days`` days from ``origin``."""
    catalog = origin.catalog
    world = World(origin)
    policy = make_policy(world)
    learner = policy if isinstance(policy, Learner) else None
    capacity = Capacity(catalog)
    value = np.array([a.value_of_success for a in catalog.actions])
    cost = np.array([a.cost for a in catalog.actions])
    window = {a.name: a.attribution_days for a in catalog.actions}
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("day", "cust", "action", "prop", "explored", "exp", "real")}
    pending: list[pd.DataFrame] = []
    decision_no = 0
    for day in tqdm(range(days), desc=policy.name, unit="day", disable=not progress):
        world.begin_day(day)
        due = world.due()
        day0 = world.day_start(day)
        if len(due.cust):
            when = pd.Series(pd.to_datetime(due.at, unit="s", utc=True))
            history = world.history(due.cust, day0 - timedelta(days=history_days), day0)
            frame = featurize(history, world.profile(due.cust), day0, when)
            if len(frame) != len(due.cust) or (frame[CUSTOMER_ID].to_numpy() != world.ids[due.cust]).any():
                raise RuntimeError("the featurizer must return one row per due customer, in order")
            u = stream(origin.seed, EXPLORE, day).random((origin.n, 2))[due.cust]
            chosen, prop, explored, sent = _decide_day(
                policy, frame, due.at, when, day0, u, epsilon, catalog, capacity, default_time_zone
            )
            p_all, success, success_at = world.respond(due.cust, chosen, sent)
            j = np.arange(len(chosen))
            cols["day"].append(np.full(len(chosen), day))
            cols["cust"].append(due.cust)
            cols["action"].append(chosen)
            cols["prop"].append(prop)
            cols["explored"].append(explored)
            cols["exp"].append(net_values(catalog, p_all)[j, chosen])
            cols["real"].append(success * value[chosen] - cost[chosen])
            if learner is not None:
                names = np.array(catalog.names, dtype=object)[chosen]
                closes = sent + np.array([window[n] for n in names]) * DAY_S
                pending.append(
                    pd.DataFrame(
                        {
                            DECISION_ID: [f"wi-{i:09d}" for i in range(decision_no, decision_no + len(chosen))],
                            CUSTOMER_ID: world.ids[due.cust],
                            DECIDED_AT: when,
                            ACTION: names,
                            PROPENSITY: prop,
                            OUTCOME: success.astype(float),
                            KNOWN_AT: np.where(success & (success_at < closes), success_at, closes),
                        }
                    )
                )
            decision_no += len(chosen)
        world.end_day()
        if learner is not None and pending:
            pending = _deliver(learner, pending, world.t0 + (day + 1) * DAY_S)
    joined = {k: np.concatenate(v) if v else np.array([]) for k, v in cols.items()}
    return RunResult(
        policy=policy.name,
        seed=origin.seed,
        customers=origin.n,
        days=days,
        actions=catalog.names,
        day=joined["day"].astype(int),
        cust=joined["cust"].astype(int),
        action=joined["action"].astype(int),
        propensity=joined["prop"],
        explored=joined["explored"].astype(bool),
        expected=joined["exp"],
        realised=joined["real"],
        omo=omo_transitions(world, days),
    )


def _decide_day(
    policy: Policy,
    frame: pd.DataFrame,
    at: np.ndarray,
    when: pd.Series,
    day0: datetime,
    u: np.ndarray,
    epsilon: float,
    catalog: Catalog,
    capacity: Capacity,
    default_time_zone: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One day's decisions, hour by hour in time order: (action, propensity, explored, send time) per row.

    The send time is the decision time, or the end of the quiet hours an action was deferred to.
    """
    explores = bool(getattr(policy, "explores", False))
    chosen = np.full(len(frame), -1)
    prop, explored, sent = np.ones(len(frame)), np.zeros(len(frame), bool), at.astype(np.float64)
    features = from_frame(frame)
    starts = np.flatnonzero(np.r_[True, at[1:] != at[:-1]])
    for lo, hi in zip(starts, np.r_[starts[1:], len(at)], strict=True):
        rows = np.arange(lo, hi)
        now = when.iloc[lo].to_pydatetime()
        part = frame.iloc[lo:hi].reset_index(drop=True)
        check = rules.check(catalog, take_rows(features, rows), len(rows), now, default_time_zone)
        allowed = check.eligible.copy()
        todo = np.arange(len(rows))
        while len(todo):  # capacity is part of the state: refused rows choose again among what is left
            sub = part if len(todo) == len(part) else part.iloc[todo].reset_index(drop=True)
            a, p, x = _choose(policy, sub, now, allowed[todo], explores, epsilon, catalog, u[rows[todo]])
            if not allowed[todo, a].all():
                raise RuntimeError(f"{policy.name} chose an action its rows may not have")
            granted = capacity.grant(a, sub, day0)
            done = todo[granted]
            chosen[rows[done]], prop[rows[done]], explored[rows[done]] = a[granted], p[granted], x[granted]
            deferred = check.send_at[done, a[granted]]
            sent[rows[done]] = np.where(np.isnan(deferred), sent[rows[done]], deferred)
            allowed[todo[~granted], a[~granted]] = False
            todo = todo[~granted]
    return chosen, prop, explored, sent.astype(np.int64)


def _choose(
    policy: Policy,
    frame: pd.DataFrame,
    now: datetime,
    allowed: np.ndarray,
    explores: bool,
    epsilon: float,
    catalog: Catalog,
    u: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The policy's choice, and with probability epsilon the engine's cost-aware exploratory one instead.

    The propensity is exact for a policy that is deterministic given its rows (the engine's
    ``explore`` takes the plan as certain); a policy that randomises itself (``explores``) returns its
    own and gets no extra exploration.
    """
    a, p = policy.decide(frame, now, allowed)
    a, p = np.asarray(a, dtype=int), np.asarray(p, dtype=float)
    if explores or epsilon <= 0:
        return a, p, np.zeros(len(a), bool)
    choice = explore(catalog, a, allowed, epsilon, u[:, 0], 1.0 - u[:, 1])
    return choice.action, choice.propensity, choice.explored


def _deliver(learner: Learner, pending: list[pd.DataFrame], until: int) -> list[pd.DataFrame]:
    """Outcomes known before ``until`` (unix s) go to the learner; the rest wait."""
    waiting = pd.concat(pending, ignore_index=True)
    known = waiting[KNOWN_AT] < until
    if known.any():
        learner.observe(
            waiting.loc[known].assign(**{KNOWN_AT: pd.to_datetime(waiting.loc[known, KNOWN_AT], unit="s", utc=True)})
        )
    return [waiting.loc[~known]] if (~known).any() else []


def omo_transitions(world: World, days: int) -> dict[str, float]:
    """OMO transitions per customer over the run, by the touch features' definition (features/touch_features.py):

    ``online_to_offline``: days with in-person contact (event attended, store visit, purchase) that
    had app activity in the 14 days before; ``offline_to_online``: days with app activity that had
    in-person contact in the 14 days before.
    """
    c, t, k, _, _ = world.events.view()
    n, t0 = world.origin.n, world.t0
    first = (t >= t0 - OMO_DAYS * DAY_S) & (t < t0 + days * DAY_S)
    day = (t[first] - t0) // DAY_S + OMO_DAYS  # shifted so the 14 days before the run count as "before"
    tiers = np.array([TOUCH_TYPES[x].tier for x in TYPE_NAMES])
    inbound = np.array([TOUCH_TYPES[x].direction == "in" for x in TYPE_NAMES])
    online_code, offline_code = inbound & (tiers == "tech"), inbound & (tiers != "tech")
    span = days + OMO_DAYS
    flags = {}
    for name, code in (("online", online_code), ("offline", offline_code)):
        m = code[k[first]]
        grid = np.zeros((n, span), bool)
        grid[c[first][m], day[m]] = True
        flags[name] = grid
    out = {}
    for name, now, before in (
        ("online_to_offline", flags["offline"], flags["online"]),
        ("offline_to_online", flags["online"], flags["offline"]),
    ):
        cum = np.concatenate([np.zeros((n, 1), np.int32), before.cumsum(axis=1, dtype=np.int32)], axis=1)
        d = np.arange(OMO_DAYS, span)
        seen = (cum[:, d] - cum[:, d - OMO_DAYS]) > 0
        out[name] = float((now[:, OMO_DAYS:] & seen).sum() / n)
    return out


@dataclass
class Comparison:
    """Every policy's metrics on every seed, and what they say together."""

    metrics: pd.DataFrame  # one row per (policy, seed)
    best_single: str  # the constant policy with the highest mean value

    def summary(self, confidence: float = 0.95) -> pd.DataFrame:
        """Mean and interval over seeds of every metric, one row per policy (best single action included)."""
        rows = []
        for name, group in self.metrics.groupby("policy", sort=False):
            row: dict[str, object] = {"policy": name}
            for col in group.columns.drop(["policy", "seed"]):
                mean, half = mean_interval(group[col].to_numpy(float), confidence)
                row[col], row[f"{col}_half"] = mean, half
            rows.append(row)
        return pd.DataFrame(rows)

    def share_of_oracle_margin(self, policy: str = "champion") -> float:
        """(policy - best single action) / (oracle - best single action), value per customer-day, mean over seeds."""
        v = self.metrics.pivot(index="seed", columns="policy", values="value_per_customer_day")
        best = v[self.best_single]
        return float(((v[policy] - best) / (v["oracle"] - best)).mean())

    def paired(self, policy: str, baseline: str, confidence: float = 0.95) -> tuple[float, float]:
        """Mean and half-width of the paired difference in value per customer-day over seeds."""
        v = self.metrics.pivot(index="seed", columns="policy", values="value_per_customer_day")
        return mean_interval((v[policy] - v[baseline]).to_numpy(float), confidence)


def compare(results: list[RunResult]) -> Comparison:
    """Collect runs into one comparison; the best single action is the best constant policy on average."""
    frame = pd.DataFrame([{"policy": r.policy, "seed": r.seed, **r.metrics()} for r in results])
    means = frame.groupby("policy")["value_per_customer_day"].mean()
    constants = [p for p in means.index if p.startswith("always ")]
    if not constants:
        raise ValueError("no constant policy ran: the best single action is unknown")
    return Comparison(frame, str(means[constants].idxmax()))


def mean_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its t interval (NaN with a single value)."""
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return mean, float("nan")
    return mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))


def _paired(comparison: Comparison, policy: str) -> tuple[float, str]:
    diff, half = comparison.paired(policy, comparison.best_single)
    return diff, "" if math.isnan(half) else f" ±{half:.4f}"


def table(comparison: Comparison) -> str:
    """A plain-text table of the comparison: value (also paired against the best single action), realised value,
    contacts per customer, OMO transitions per customer and action shares, means ± 95% intervals over seeds."""
    s = comparison.summary()
    actions = [c.removeprefix("share_") for c in s.columns if c.startswith("share_") and not c.endswith("_half")]

    def cell(row: pd.Series, col: str, digits: int = 3) -> str:
        half = row[f"{col}_half"]
        return f"{row[col]:.{digits}f}" + ("" if math.isnan(half) else f" ±{half:.{digits}f}")

    head = ["policy", "value/cust-day", f"vs {BEST_SINGLE}", "realised", "value/decision", "contacts/cust"]
    head += ["on→off", "off→on"]
    head += [f"{a} %" for a in actions]
    lines = []
    for _, row in s.iterrows():
        name = str(row["policy"]) + (f"  [= {BEST_SINGLE}]" if row["policy"] == comparison.best_single else "")
        lines.append(
            [
                name,
                cell(row, "value_per_customer_day", 4),
                "{:+.4f}{}".format(*_paired(comparison, str(row["policy"]))),
                cell(row, "realised_per_customer_day", 4),
                cell(row, "value_per_decision"),
                cell(row, "contacts_per_customer", 2),
                cell(row, "omo_online_to_offline", 2),
                cell(row, "omo_offline_to_online", 2),
                *(f"{100 * row[f'share_{a}']:.1f}" for a in actions),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(head)]

    def fmt(cells: list[str]) -> str:
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded)

    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *(fmt(r) for r in lines)])
