"""The decision engine: features -> P(success) -> contact rules -> choice -> capacity -> answers.

No HTTP, no Feast and no database: the model is given, capacity is taken through a callable. A
decision is made in three steps because capacity is only known inside the decision-log transaction:
``draft`` (model, rules, first choice) runs in the request, ``allocate`` (capacity, the next best
action where it is used up) in the transaction that logs the decisions, ``answers`` (reasons, the
answer fields) after it. One customer is a batch of one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from nexttouch.catalog import NO_ACTION, Action, Catalog
from nexttouch.columns import Features, labels, take_rows
from nexttouch.engine import reasons, rules
from nexttouch.engine.affinity import Affinity
from nexttouch.engine.answer import Answer, FallbackCause, fallback, rounded
from nexttouch.engine.choice import Choice, best, choose, net_values
from nexttouch.logodds import logit, sigmoid

if TYPE_CHECKING:  # the engine only calls the model: importing LightGBM is the caller's cost
    from nexttouch.model import ContributionMethod, DecisionModel

# (action, capacity bucket, when it is sent, how many) -> how many units were granted
TakeCapacity = Callable[[Action, str, datetime, int], int]
TOP_DRIVERS = 3


def unlimited(_action: Action, _bucket: str, _at: datetime, want: int) -> int:
    return want


@dataclass
class Draft:
    """Decisions before capacity is taken and the log is written."""

    customer_ids: list[str | None]
    now: datetime
    causes: list[FallbackCause | None]  # per request: why it falls back, None when the model decides
    rows: np.ndarray  # requests the model decides (no fallback cause)
    features: Features  # of those rows
    p: np.ndarray  # (rows, actions) P(success) for this customer: the model's, with their own affinity
    values: np.ndarray  # (rows, actions) expected net values
    population: np.ndarray  # (rows, actions) the model's P(success) before the customer's own affinity
    check: rules.Check
    allowed: np.ndarray  # (rows, actions) eligible, then less what capacity refused
    explore_u: np.ndarray
    draw_u: np.ndarray
    choice: Choice
    first: Choice  # the choice before capacity
    x: np.ndarray  # encoded features
    leaf: np.ndarray | None  # leaves per (row, model action) when reasons use path contributions
    affinity: Affinity | None = None  # the customers' own posteriors (with posterior sampling)
    sampled: np.ndarray | None = None  # (draws, rows, actions) net values under posterior draws
    refused: dict[int, dict[str, str]] = field(default_factory=dict)  # row -> action -> capacity reason


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class DecisionEngine:
    """The decision policy of one champion model."""

    def __init__(
        self,
        catalog: Catalog,
        model: DecisionModel,
        model_version: str,
        epsilon: float,
        seed: int | None = None,
        default_time_zone: str = "UTC",
        contributions: ContributionMethod = "path",
        prior_sd: float | np.ndarray | None = None,
        sample: bool = False,
    ) -> None:
        """``prior_sd`` > 0 (one number, or one per catalog action): decisions use each customer's own
        affinity, whose prior is Normal(0, prior_sd**2) on the log-odds of the action: its posterior mean,
        or with ``sample`` a posterior draw (Thompson sampling); None or 0: the model's point estimates."""
        missing = set(catalog.names) - set(model.actions)
        if missing:
            raise ValueError(f"model does not score catalog actions {sorted(missing)}")
        self.catalog = catalog
        self.model = model
        self.model_version = model_version
        self.epsilon = epsilon
        self.default_time_zone = default_time_zone
        self.contribution_method = contributions
        self.rng = np.random.default_rng(seed)
        self._columns = np.array([model.actions.index(a) for a in catalog.names])
        self._none = catalog.names.index(NO_ACTION)
        sd = np.broadcast_to(np.asarray(prior_sd if prior_sd is not None else 0.0, float), len(catalog.actions))
        self.prior_sd = sd.copy() if (sd > 0).any() else None
        self.sample = sample
        # What a decision reads: the model's inputs, the contact rules' columns, capacity groups.
        rule_columns = {rules.TIME_ZONE}
        for a in catalog.actions:
            rule_columns |= {a.requires, a.last_touch_feature, a.recency_feature, *map(a.cap_feature, a.caps)}
            rule_columns.add(a.capacity.per if a.capacity else None)
        self.columns = tuple(dict.fromkeys([*model.inputs, *sorted(c for c in rule_columns if c)]))

    # -- the three steps ---------------------------------------------------------------------------

    def draft(
        self,
        customer_ids: Sequence[str | None],
        features: Features,
        now: datetime,
        causes: Sequence[FallbackCause | None] | None = None,
    ) -> Draft:
        """Score, check the contact rules and choose for every request without a fallback cause.

        ``features`` has one row per request; rows with a cause are not read.
        """
        n = len(customer_ids)
        causes = list(causes) if causes is not None else [None] * n
        rows = np.array([i for i, c in enumerate(causes) if c is None], dtype=np.int64)
        sub = features if len(rows) == n else take_rows(features, rows)
        m = len(rows)
        x = self.model.encode(sub, m)
        p, leaf = self._score(x)
        check = rules.check(self.catalog, sub, m, now, self.default_time_zone)
        values = net_values(self.catalog, p)
        explore_u, draw_u = self.rng.random(m), 1.0 - self.rng.random(m)  # fixed per row across capacity rounds
        choice = choose(self.catalog, values, check.eligible, self.epsilon, explore_u, draw_u, self._none)
        draft = Draft(
            list(customer_ids),
            now,
            causes,
            rows,
            sub,
            p,
            values,
            p,
            check,
            check.eligible.copy(),
            explore_u,
            draw_u,
            choice,
            choice,
            x,
            leaf,
        )
        if self.prior_sd is not None and self.sample:  # the prior's mean is the model's estimate: only draws differ
            self.personalise(draft, Affinity.prior(m, self.prior_sd))
        return draft

    def personalise(self, draft: Draft, affinity: Affinity) -> None:
        """Decide with the customers' own posteriors (rows as in ``draft.rows``): their expected values, and
        with sampling on the choice drawn from the posterior (Thompson sampling)."""
        base = logit(draft.population)
        draft.affinity = affinity
        draft.p = sigmoid(base + affinity.mean)
        draft.values = net_values(self.catalog, draft.p)
        if self.sample:
            draft.sampled = net_values(self.catalog, sigmoid(base[None] + affinity.draws(self.rng)))
        draft.first = draft.choice = self._choose(draft)

    def allocate(self, draft: Draft, take: TakeCapacity = unlimited) -> None:
        """Take capacity for the scarce actions chosen, most valuable rows first; where it is used up,
        the policy chooses again among what is left (capacity is part of the state: exact propensities)."""
        draft.allowed, draft.choice, draft.refused = draft.check.eligible.copy(), draft.first, {}  # a retry starts over
        held = np.full(len(draft.rows), -1)  # action whose capacity a row holds
        for _ in range(len(self.catalog.actions) + 1):  # each round removes at least one action from some rows
            refused = self._take_capacity(draft, held, take)
            if not refused:
                return
            for j, refused_rows in refused:
                action = self.catalog.actions[j]
                draft.allowed[refused_rows, j] = False
                for r in refused_rows.tolist():
                    draft.refused.setdefault(r, {})[action.name] = reasons.no_capacity(action)
            draft.choice = self._choose(draft)

    def answers(self, draft: Draft, decision_ids: Sequence[str], explain: bool = True) -> list[Answer]:
        """The answer to every request, in request order (``decision_ids`` one per request); with
        ``explain=False`` the model's answers have no reasons yet (``explain`` adds them)."""
        catalog, names = self.catalog, self.catalog.names
        out: list[Answer] = []
        fallback_eligible: list[str] | None = None
        decided = self._decided(draft)
        k = 0
        for i, (cid, cause) in enumerate(zip(draft.customer_ids, draft.causes, strict=True)):
            if cause is not None:
                if fallback_eligible is None:
                    no_features = rules.check(catalog, {}, 1, draft.now, self.default_time_zone)
                    fallback_eligible = [a for a, ok in zip(names, no_features.eligible[0], strict=True) if ok]
                answer = fallback(catalog, fallback_eligible, cid, cause, self.model_version, draft.now)
            else:
                answer = decided[k]
                answer["customer_id"] = cid
                k += 1
            answer["decision_id"] = decision_ids[i]
            out.append(answer)
        if explain:
            self.explain(draft, out)
        return out

    def decide(
        self,
        customer_ids: Sequence[str | None],
        features: Features,
        now: datetime,
        decision_ids: Sequence[str],
        take: TakeCapacity = unlimited,
        causes: Sequence[FallbackCause | None] | None = None,
    ) -> list[Answer]:
        """The three steps at once, for callers that take capacity outside a log transaction."""
        draft = self.draft(customer_ids, features, now, causes)
        self.allocate(draft, take)
        return self.answers(draft, decision_ids)

    # -- parts -------------------------------------------------------------------------------------

    def _choose(self, draft: Draft) -> Choice:
        return choose(
            self.catalog,
            draft.values,
            draft.allowed,
            self.epsilon,
            draft.explore_u,
            draft.draw_u,
            self._none,
            draft.sampled,
        )

    def _score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated P(success) in catalog order, and with path contributions the leaves of every
        (row, model action): one LightGBM call then gives both the score and the reasons."""
        n, k = len(x), len(self.model.actions)
        if n == 0:  # every request falls back
            return np.empty((0, len(self._columns))), None
        stacked = np.column_stack([np.repeat(x, k, axis=0), np.tile(np.arange(k, dtype=np.float64), n)])
        paths = self.model.paths if self.contribution_method == "path" else None
        leaf = None
        if paths is not None and paths.binary:
            leaf = paths.leaves(stacked)
            raw = paths.probability(leaf).reshape(n, k)
        else:
            raw = self.model.booster.predict(stacked, num_threads=1).reshape(n, k)
        return self.model.calibration.apply(raw, self.model.actions)[:, self._columns], leaf

    def _take_capacity(self, draft: Draft, held: np.ndarray, take: TakeCapacity) -> list[tuple[int, np.ndarray]]:
        """Take capacity for the rows newly given a scarce action, most valuable first; the refused rows."""
        refused = []
        action = draft.choice.action
        for j, a in enumerate(self.catalog.actions):
            if a.capacity is None:
                continue
            rows = np.flatnonzero((action == j) & (held != j))
            if len(rows) == 0:
                continue
            per = a.capacity.per
            keys = labels(draft.features, per, len(draft.rows))[rows] if per else np.full(len(rows), None, object)
            buckets = np.array([a.capacity.bucket(v) for v in keys], dtype=object)
            # a deferred contact counts against the capacity of the period it is sent in
            when = [draft.now if np.isnan(s) else _time(s) for s in draft.check.send_at[rows, j].tolist()]
            sends = np.array([a.capacity.period_of(w) for w in when], dtype=object)
            for bucket, period in dict.fromkeys(zip(buckets.tolist(), sends.tolist(), strict=True)):
                mine = (buckets == bucket) & (sends == period)
                group = rows[mine]
                at = when[int(np.flatnonzero(mine)[0])]
                group = group[np.argsort(-draft.values[group, j], kind="stable")]
                granted = take(a, bucket, at, len(group))
                held[group[:granted]] = j
                if granted < len(group):
                    refused.append((j, group[granted:]))
        return refused

    def _contributions(self, draft: Draft) -> np.ndarray:
        """Each input's contribution to the chosen action's score, per row (log-odds)."""
        action = self._columns[draft.choice.action]
        n_inputs = len(self.model.inputs)
        if draft.leaf is not None:
            k = len(self.model.actions)
            return self.model.paths.of_leaves(draft.leaf[np.arange(len(action)) * k + action])[:, :n_inputs]
        design = np.column_stack([draft.x, action.astype(np.float64)])
        return self.model.contributions(design, self.contribution_method)

    def _moved_by_own_history(self, draft: Draft) -> dict[int, tuple[int, str, str]]:
        """Rows whose own outcomes changed the best action: row -> (outcomes seen, model's pick, theirs)."""
        if draft.affinity is None or not draft.affinity.outcomes.any():
            return {}
        names = self.catalog.names
        population = best(net_values(self.catalog, draft.population), draft.allowed, self._none)
        own = draft.choice.best
        seen = draft.affinity.outcomes.sum(axis=1)
        return {
            int(r): (int(seen[r]), names[population[r]], names[own[r]])
            for r in np.flatnonzero((population != own) & (seen > 0))
        }

    def _decided(self, draft: Draft) -> list[Answer]:
        """The model's answers for the rows it decided, without reasons (no decision id, no customer id yet)."""
        m = len(draft.rows)
        if m == 0:
            return []
        names, choice = self.catalog.names, draft.choice
        values = rounded(draft.values, 4)
        # uplift from the rounded values, so the answer's own numbers subtract exactly as shown
        uplift_l = rounded(values - values[:, [self._none]], 4).tolist()
        values_l = values.tolist()
        p_round = rounded(draft.p, 4).tolist()
        allowed_l = draft.allowed.tolist()
        action_l, explored_l = choice.action.tolist(), choice.explored.tolist()
        propensity_l = rounded(choice.propensity, 6).tolist()
        send_l = draft.check.send_at[np.arange(m), choice.action].tolist()
        return [
            {
                "decision_id": "",
                "customer_id": None,
                "action": names[action_l[r]],
                "propensity": propensity_l[r],
                "explored": explored_l[r],
                "uplift": dict(zip(names, uplift_l[r], strict=True)),
                "values": dict(zip(names, values_l[r], strict=True)),
                "p_success": dict(zip(names, p_round[r], strict=True)),
                "eligible": [a for a, ok in zip(names, allowed_l[r], strict=True) if ok],
                "reasons": [],
                "explanation": [],
                "cold_start": False,
                "fallback": False,
                "model_version": self.model_version,
                "decided_at": draft.now,
                "send_at": None if send_l[r] != send_l[r] else _time(send_l[r]),  # NaN: now
            }
            for r in range(m)
        ]

    def explain(self, draft: Draft, answers: Sequence[Answer]) -> None:
        """Each model answer's reasons, in place: the rules that removed actions, the choice, the drivers.

        Kept out of ``answers`` so a caller can log the decisions first and explain them after the
        commit (the log's write lock is held for the decisions only, not for their reasons).
        """
        m = len(draft.rows)
        if m == 0:
            return
        catalog, names, inputs = self.catalog, self.catalog.names, self.model.inputs
        choice = draft.choice
        contrib = self._contributions(draft)
        top = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :TOP_DRIVERS]
        top_contrib = np.take_along_axis(contrib, top, axis=1).tolist()
        # The drivers quote 3 inputs per row: only those inputs' columns, as Python values (formatting a
        # Python float is several times cheaper than a numpy scalar)
        quoted = {int(f) for f in np.unique(top)}
        cells = [draft.features.get(c) if f in quoted else None for f, c in enumerate(inputs)]
        cells = [None if c is None else c.tolist() for c in cells]
        removed = rules.removals(catalog, draft.check)
        by_epsilon = (draft.explore_u < choice.epsilon).tolist()
        moved = self._moved_by_own_history(draft)
        for r, i in enumerate(draft.rows.tolist()):
            answer = answers[i]
            j = int(choice.action[r])
            name, action = names[j], catalog.actions[j]
            uplift = answer["uplift"]
            why = [reasons.removed(a, rule.code, text, f, v) for a, (rule, text, f, v) in removed[r].items()]
            for a, text in draft.refused.get(r, {}).items():
                per = catalog[a].capacity.per  # type: ignore[union-attr]  # only scarce actions are refused
                why.append(reasons.removed(a, rules.Rule.CAPACITY.code, text, per, None))
            if r in moved:
                why.append(reasons.own_history(*moved[r]))
            eligible = len(answer["eligible"])
            if answer["explored"] and by_epsilon[r]:
                why.append(reasons.explored(name, eligible, answer["propensity"]))
            elif answer["explored"]:
                why.append(reasons.sampled(name, answer["propensity"]))
            else:
                runner_up = None
                if name == NO_ACTION and eligible > 1:  # the best contact it passed over
                    other = max((a for a in answer["eligible"] if a != NO_ACTION), key=uplift.__getitem__)
                    runner_up = (other, uplift[other])
                why.append(reasons.choice(name, uplift[name], eligible, runner_up))
            if answer["send_at"] is not None:
                why.append(reasons.deferred(action, answer["send_at"], str(draft.check.zone[r])))
            for f, c in zip(top[r].tolist(), top_contrib[r], strict=True):
                if abs(c) < 5e-4:  # nothing to say (a constant policy's features push nothing)
                    continue
                column = cells[f]
                why.append(reasons.driver(inputs[f], None if column is None else column[r], action, c))
            answer["explanation"] = why
            answer["reasons"] = reasons.texts(why)
