"""A simulated OMO brand: customers, touch history, identity keys and a logged decision history.

Every customer has latent affinities for the three tiers and a state that the OMO loop moves:
offline contact (events, store visits) raises app activity and app activity raises the pull of
offline invitations; contact without value builds fatigue. A known ground-truth response
model gives P(success | state, action), so the value of any policy can be computed exactly.
The whole brand is simulated day by day with vectorised numpy over customers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from nexttouch.catalog import NO_ACTION, Catalog
from nexttouch.policy import net_values
from nexttouch.schemas import (
    ACTION,
    CUSTOMER_ID,
    DECIDED_AT,
    DECISION_ID,
    OUTCOME,
    PROPENSITY,
    TOUCH_TYPES,
)
from nexttouch.settings import Settings

DAY = np.int64(86_400)
REGIONS = np.array(["north", "south", "east", "west"])
SEGMENTS = np.array(["standard", "premium"])
TYPE_NAMES = list(TOUCH_TYPES)
TYPE_CODE = {name: i for i, name in enumerate(TYPE_NAMES)}
# Which touch a chosen action sends, and which touch its success shows up as.
ACTION_TOUCH = {"push": "push_sent", "event_invite": "event_invited", "advisor_call": "advisor_call"}
SUCCESS_TOUCH = {
    "push": "push_opened",
    "event_invite": "event_attended",
    "advisor_call": "store_visit",
    NO_ACTION: "app_session",
}
LOGGING_EPSILON = 0.3  # the logging policy explores a lot, so every action has support


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Latents:
    """Hidden customer traits; only their effects on the touch history are observable."""

    engagement: np.ndarray
    digital: np.ndarray
    social: np.ndarray
    personal: np.ndarray
    premium: np.ndarray
    push_opt_in: np.ndarray
    call_consent: np.ndarray


@dataclass
class GroundTruth:
    """The true response model: P(success | customer state, action)."""

    latents: Latents

    def p_success(
        self, idx: np.ndarray, online: np.ndarray, offline: np.ndarray, fatigue: np.ndarray, action: str
    ) -> np.ndarray:
        lt = self.latents
        a, o = np.log1p(online), np.log1p(offline)
        base = -2.2 + 0.45 * lt.engagement[idx] + 0.25 * a + 0.3 * o - 0.25 * fatigue
        if action == "push":
            effect = 0.15 + 0.5 * lt.digital[idx] - 0.35 * fatigue
        elif action == "event_invite":
            effect = -0.2 + 0.8 * lt.social[idx] + 0.35 * a  # online activity earns invitations
        elif action == "advisor_call":
            effect = 0.1 + 0.9 * lt.personal[idx] + 0.7 * lt.premium[idx] - 0.3 * fatigue
        else:
            # Any other catalog action: a small generic effect, so custom catalogs still simulate.
            effect = np.full(len(idx), 0.1) if action != NO_ACTION else np.zeros(len(idx))
        return _sigmoid(base + effect)


@dataclass
class SimulatedBrand:
    customers: pd.DataFrame
    identity: pd.DataFrame
    events: pd.DataFrame
    decisions: pd.DataFrame
    truth: GroundTruth
    # For every logged decision: the true P(success) of every action and whether it was eligible,
    # so the true value of any policy (and of the oracle) on these decisions can be computed.
    decision_truth: pd.DataFrame
    start: datetime
    end: datetime

    def true_net_values(self, catalog: Catalog) -> np.ndarray:
        """True expected net value of every action at every logged decision: (decisions, actions)."""
        return net_values(catalog, self.decision_truth[[f"p_{a}" for a in catalog.names]].to_numpy())

    def true_value(self, catalog: Catalog, chosen: np.ndarray | pd.Series) -> float:
        """Mean true net value per decision if ``chosen`` (one action per logged decision) were taken."""
        idx = pd.Index(catalog.names).get_indexer(np.asarray(chosen))
        if (idx < 0).any():
            raise ValueError("chosen actions must come from the catalog")
        return float(self.true_net_values(catalog)[np.arange(len(idx)), idx].mean())

    def oracle_actions(self, catalog: Catalog) -> np.ndarray:
        """The best eligible action of every logged decision under the true response model."""
        eligible = self.decision_truth[[f"eligible_{a}" for a in catalog.names]].to_numpy()
        best = np.where(eligible, self.true_net_values(catalog), -np.inf).argmax(axis=1)
        return np.array(catalog.names, dtype=object)[best]


def customer_ids(n: int) -> np.ndarray:
    return np.char.add("C", np.char.zfill(np.arange(1, n + 1).astype(str), 7)).astype(object)


def _logging_policy(
    rng: np.random.Generator,
    catalog: Catalog,
    eligible: np.ndarray,
    online: np.ndarray,
    offline: np.ndarray,
    premium: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Rule-based tiering plus uniform exploration; returns action index and its propensity."""
    names = catalog.names
    n = len(eligible)
    rule = np.full(n, names.index(NO_ACTION))
    for name, mask in (  # later rules override earlier ones: most personal tier wins
        ("push", np.ones(n, bool)),
        ("event_invite", online > 1.0),
        ("advisor_call", (premium == 1) & (offline > 0.5)),
    ):
        if name in names:
            j = names.index(name)
            rule = np.where(mask & eligible[:, j], j, rule)
    n_eligible = eligible.sum(axis=1)
    explore = rng.random(n) < LOGGING_EPSILON
    # uniform draw among eligible actions: rank of a random eligible column
    pick = (rng.random(n) * n_eligible).astype(int)
    order = np.cumsum(eligible, axis=1) - 1
    random_choice = np.argmax(eligible & (order == pick[:, None]), axis=1)
    chosen = np.where(explore, random_choice, rule)
    propensity = LOGGING_EPSILON / n_eligible + (1 - LOGGING_EPSILON) * (chosen == rule)
    return chosen, propensity


def simulate(
    catalog: Catalog,
    n_customers: int,
    days: int,
    end: datetime,
    seed: int,
    decision_rate: float = 0.08,
    progress: bool = False,
) -> SimulatedBrand:
    """Simulate ``days`` days of an OMO brand ending at ``end`` (UTC). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    n = n_customers
    start = end - timedelta(days=days)
    t0 = np.int64(int(start.timestamp()))

    lt = Latents(
        engagement=rng.normal(0, 1, n),
        digital=rng.normal(0, 1, n),
        social=rng.normal(0, 1, n),
        personal=rng.normal(0, 1, n),
        premium=(rng.random(n) < 0.2).astype(np.int8),
        push_opt_in=np.zeros(n, np.int8),
        call_consent=np.zeros(n, np.int8),
    )
    lt.push_opt_in = (rng.random(n) < _sigmoid(0.9 + 0.6 * lt.digital)).astype(np.int8)
    lt.call_consent = (rng.random(n) < 0.4 + 0.25 * lt.premium).astype(np.int8)
    truth = GroundTruth(lt)

    ids = customer_ids(n)
    signup_days = rng.exponential(500, n).astype(np.int64) + 1
    customers = pd.DataFrame(
        {
            CUSTOMER_ID: ids,
            "signup_at": pd.to_datetime(t0 - signup_days * DAY, unit="s", utc=True),
            "region": REGIONS[rng.integers(0, len(REGIONS), n)],
            "segment": SEGMENTS[lt.premium],
            "push_opt_in": lt.push_opt_in.astype(np.int64),
            "call_consent": lt.call_consent.astype(np.int64),
        }
    )
    # Each source system knows the customer under its own opaque key.
    identity = pd.concat(
        [
            pd.DataFrame(
                {
                    "source_system": system,
                    "source_key": np.char.add(
                        f"{system}-", np.char.mod("%08x", rng.permutation(n) + 4096 * (i + 1))
                    ).astype(object),
                    CUSTOMER_ID: ids,
                }
            )
            for i, system in enumerate(("app", "events", "store", "crm"))
        ],
        ignore_index=True,
    )

    k = len(catalog.actions)
    eligible_all = np.ones((n, k), bool)
    for j, action in enumerate(catalog.actions):
        if action.requires == "push_opt_in":
            eligible_all[:, j] = lt.push_opt_in == 1
        elif action.requires == "call_consent":
            eligible_all[:, j] = lt.call_consent == 1

    online = np.zeros(n)  # decayed app activity
    offline = np.zeros(n)  # decayed in-person contact
    fatigue = np.zeros(n)  # decayed brand-initiated contacts
    ev_cust, ev_time, ev_type, ev_amount, ev_dec = [], [], [], [], []
    dec_cust, dec_time, dec_action, dec_prop, dec_out, dec_truth = [], [], [], [], [], []
    n_decisions = 0

    def emit(cust: np.ndarray, times: np.ndarray, touch: str, amount=None, decision=None) -> None:
        ev_cust.append(cust.astype(np.int32))
        ev_time.append(times.astype(np.int64))
        ev_type.append(np.full(len(cust), TYPE_CODE[touch], np.int8))
        ev_amount.append(np.full(len(cust), np.nan) if amount is None else amount)
        ev_dec.append(np.full(len(cust), -1, np.int64) if decision is None else decision)

    for day in tqdm(range(days), desc="simulate", unit="day", disable=not progress):
        day0 = t0 + day * DAY
        # Organic behaviour: the OMO loop links online and offline activity.
        n_app = rng.poisson(np.exp(-2.0 + 0.6 * lt.engagement + 0.4 * lt.digital + 0.35 * np.log1p(offline)))
        n_like = rng.poisson(0.6 * n_app * _sigmoid(lt.social))
        n_visit = rng.poisson(
            np.exp(
                -4.2
                + 0.4 * lt.engagement
                + 0.3 * lt.social
                + 0.5 * lt.personal
                + 0.3 * lt.premium
                + 0.25 * np.log1p(online)
            )
        )
        n_buy = rng.binomial(n_visit, _sigmoid(-1.6 + 0.6 * lt.personal + 0.5 * lt.premium))
        for counts, touch in ((n_app, "app_session"), (n_like, "app_like"), (n_visit, "store_visit")):
            cust = np.repeat(np.arange(n), counts)
            emit(cust, day0 + rng.integers(0, DAY, len(cust)), touch)
        buyers = np.repeat(np.arange(n), n_buy)
        emit(
            buyers,
            day0 + rng.integers(0, DAY, len(buyers)),
            "purchase",
            amount=np.round(rng.lognormal(6.0, 0.7, len(buyers)), 2),
        )

        # Decisions of the logging policy, with outcomes from the ground truth.
        who = np.flatnonzero(rng.random(n) < decision_rate)
        attended = np.zeros(n)
        contacted = np.zeros(n)
        if len(who):
            chosen, prop = _logging_policy(rng, catalog, eligible_all[who], online[who], offline[who], lt.premium[who])
            when = day0 + rng.integers(0, DAY - 3_600, len(who))
            dec_no = np.arange(n_decisions, n_decisions + len(who))
            n_decisions += len(who)
            success = np.zeros(len(who), bool)
            p_all = np.column_stack(
                [truth.p_success(who, online[who], offline[who], fatigue[who], name) for name in catalog.names]
            )
            dec_truth.append(np.column_stack([p_all, eligible_all[who]]))
            for j, name in enumerate(catalog.names):
                m = chosen == j
                if not m.any():
                    continue
                success[m] = rng.random(m.sum()) < p_all[m, j]
                if name in ACTION_TOUCH:
                    emit(who[m], when[m] + 60, ACTION_TOUCH[name], decision=dec_no[m])
                if name != NO_ACTION:
                    contacted[who[m]] += 1
                won = m & success
                touch = SUCCESS_TOUCH.get(name, "app_session")
                emit(who[won], when[won] + rng.integers(1_800, 2 * DAY, won.sum()), touch, decision=dec_no[won])
                if touch in ("event_attended", "store_visit"):
                    attended[who[won]] += 1
            dec_cust.append(who)
            dec_time.append(when)
            dec_action.append(chosen)
            dec_prop.append(prop)
            dec_out.append(success.astype(float))

        online = 0.85 * online + n_app + 0.2 * n_like
        offline = 0.93 * offline + n_visit + attended
        fatigue = 0.8 * fatigue + contacted

    events = _events_frame(
        ids,
        identity,
        np.concatenate(ev_cust),
        np.concatenate(ev_time),
        np.concatenate(ev_type),
        np.concatenate(ev_amount),
        np.concatenate(ev_dec),
        t0 + days * DAY,
    )
    names = np.array(catalog.names, dtype=object)
    decisions = pd.DataFrame(
        {
            DECISION_ID: _decision_ids(np.arange(n_decisions)),
            CUSTOMER_ID: ids[np.concatenate(dec_cust)],
            DECIDED_AT: pd.to_datetime(np.concatenate(dec_time), unit="s", utc=True),
            ACTION: names[np.concatenate(dec_action)],
            PROPENSITY: np.concatenate(dec_prop),
            OUTCOME: np.concatenate(dec_out),
        }
    )
    truth_cols = [*(f"p_{a}" for a in catalog.names), *(f"eligible_{a}" for a in catalog.names)]
    decision_truth = pd.DataFrame(np.concatenate(dec_truth), columns=truth_cols)
    decision_truth = decision_truth.astype(dict.fromkeys(truth_cols[len(catalog.names) :], bool))
    decision_truth.insert(0, DECISION_ID, decisions[DECISION_ID].to_numpy())
    return SimulatedBrand(customers, identity, events, decisions, truth, decision_truth, start, end)


def _decision_ids(numbers: np.ndarray) -> np.ndarray:
    return np.char.add("sim-", np.char.zfill(numbers.astype(str), 9)).astype(object)


def _events_frame(
    ids: np.ndarray,
    identity: pd.DataFrame,
    cust: np.ndarray,
    when: np.ndarray,
    code: np.ndarray,
    amount: np.ndarray,
    decision: np.ndarray,
    end_ts: np.int64,
) -> pd.DataFrame:
    """Touch events as the source systems would send them: their own keys, not customer ids."""
    when = np.minimum(when, end_ts - 1)  # a late outcome of the last day is still in the window
    order = np.argsort(when, kind="stable")
    cust, when, code, amount, decision = cust[order], when[order], code[order], amount[order], decision[order]
    types = [TOUCH_TYPES[name] for name in TYPE_NAMES]
    system = np.array([t.source_system for t in types], dtype=object)[code]
    keys = {s: g.set_index(CUSTOMER_ID)["source_key"] for s, g in identity.groupby("source_system")}
    source_key = np.empty(len(cust), dtype=object)
    for s, lookup in keys.items():
        m = system == s
        source_key[m] = lookup.reindex(ids[cust[m]]).to_numpy()
    dec = np.where(decision >= 0, _decision_ids(np.maximum(decision, 0)), None)
    return pd.DataFrame(
        {
            "event_id": np.char.add("ev-", np.arange(len(cust)).astype(str)).astype(object),
            "occurred_at": pd.to_datetime(when, unit="s", utc=True),
            "source_system": system,
            "source_key": source_key,
            "touch_type": np.array(TYPE_NAMES, dtype=object)[code],
            "tier": np.array([t.tier for t in types], dtype=object)[code],
            "direction": np.array([t.direction for t in types], dtype=object)[code],
            "amount": amount,
            DECISION_ID: dec,
        }
    )


def write_brand(settings: Settings, catalog: Catalog, end: datetime, out: Path) -> SimulatedBrand:
    """Simulate with the settings' size and seed; write the tables as a brand would deliver them."""
    brand = simulate(
        catalog,
        settings.customers,
        settings.days,
        end,
        settings.seed,
        decision_rate=settings.decision_rate,
        progress=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (
        ("customers", brand.customers),
        ("identity", brand.identity),
        ("events", brand.events),
        ("decisions", brand.decisions),
    ):
        frame.to_parquet(out / f"{name}.parquet", index=False)
    # Only a simulation knows the truth; it is kept apart from what a brand would deliver.
    truth_dir = settings.data_dir / "simulation"
    truth_dir.mkdir(parents=True, exist_ok=True)
    brand.decision_truth.to_parquet(truth_dir / "decision_truth.parquet", index=False)
    return brand
