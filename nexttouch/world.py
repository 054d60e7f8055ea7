"""The simulated brand as a closed loop: any policy's contacts change what the customers do next.

A burn-in history is simulated the open-loop way (``nexttouch.simulate``); its end state is the
``Origin`` every policy starts from. A ``World`` then steps day by day with the same equations:
organic app and store activity, customers due for a decision at a local time of day, and the
true response to whatever action a policy chose, written back as touch events that the brand's
features see the next day.

Common random numbers: every random draw comes from a stream keyed by (seed, purpose, day) and is
drawn for all customers at once, then indexed by customer, so two policies run on the same seed
meet the same customers at the same times with the same outcome uniforms; the policies' value
differences are paired. Counts are drawn by inverting their distribution at a customer's uniform,
so a customer whose state two policies left alike also behaves alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from nexttouch.catalog import NO_ACTION, Catalog
from nexttouch.schemas import CUSTOMER_ID, DECISION_ID, TOUCH_TYPES
from nexttouch.simulate import (
    ACTION_TOUCH,
    OFFLINE_SUCCESS,
    RESPONSE_DELAY,
    SENT_DELAY,
    SUCCESS_TOUCH,
    TYPE_CODE,
    TYPE_NAMES,
    GroundTruth,
    WorldState,
    app_rate,
    buy_probability,
    like_rate,
    simulate,
    visit_rate,
)

DAY_S = 86_400
ORGANIC, TIMES, DUE, OUTCOME, EXPLORE = range(5)  # random streams, one per purpose
# Relative chance of a decision falling in each local hour: customers are reached when they are
# around (mornings, lunch, evenings), so some decisions land in the catalog's quiet hours.
LOCAL_HOURS = np.array(
    [
        0.2,
        0.1,
        0.1,
        0.1,
        0.1,
        0.2,
        0.5,
        1.0,
        1.4,
        1.2,
        1.0,
        1.0,
        1.3,
        1.2,
        1.0,
        1.0,
        1.1,
        1.3,
        1.6,
        1.8,
        1.9,
        1.7,
        1.2,
        0.6,
    ]
)
_TIER_OF = np.array([TOUCH_TYPES[t].tier for t in TYPE_NAMES], dtype=object)
_DIRECTION_OF = np.array([TOUCH_TYPES[t].direction for t in TYPE_NAMES], dtype=object)
_TYPE_OF = np.array(TYPE_NAMES, dtype=object)


def stream(seed: int, purpose: int, day: int) -> np.random.Generator:
    """The random stream of one purpose on one day: the same for every policy run on ``seed``."""
    return np.random.default_rng([seed, purpose, day])


def poisson_at(u: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Poisson(lam) counts by inverting the CDF at the uniforms ``u`` (one per customer)."""
    k = np.zeros(len(u), np.int64)
    pmf = np.exp(-lam)
    cdf = pmf.copy()
    above = u > cdf
    i = 0
    while above.any() and i < 100:
        i += 1
        pmf = pmf * lam / i
        cdf = cdf + pmf
        k += above
        above &= u > cdf
    return k


def binomial_at(u: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Binomial(n, p) counts by inverting the CDF at ``u``; ``n`` is small (a day's store visits)."""
    k = np.zeros(len(u), np.int64)
    pmf = (1 - p) ** n
    cdf = pmf.copy()
    above = u > cdf
    odds = p / np.maximum(1 - p, 1e-12)
    for i in range(int(n.max(initial=0))):
        pmf = pmf * np.maximum(n - i, 0) / (i + 1) * odds
        cdf = cdf + pmf
        k += above & (i < n)
        above &= u > cdf
    return k


class EventBuffer:
    """Touch events as compact, growable columns: customer position, unix time, type code, amount, and the
    number of the decision a touch answers or carries out (-1: none), the link the brand's events hold."""

    COLUMNS = ("cust", "time", "type", "amount", "decision")

    def __init__(self, capacity: int = 1 << 16) -> None:
        self.size = 0
        self.cust = np.empty(capacity, np.int32)
        self.time = np.empty(capacity, np.int64)
        self.type = np.empty(capacity, np.int8)
        self.amount = np.empty(capacity, np.float64)
        self.decision = np.empty(capacity, np.int64)

    def add(
        self,
        cust: np.ndarray,
        time: np.ndarray,
        touch: str | np.ndarray,
        amount: np.ndarray | None = None,
        decision: np.ndarray | None = None,
    ) -> None:
        n = len(cust)
        if self.size + n > len(self.cust):
            grow = max(2 * len(self.cust), self.size + n)
            for name in self.COLUMNS:
                old = getattr(self, name)
                new = np.empty(grow, old.dtype)
                new[: self.size] = old[: self.size]
                setattr(self, name, new)
        end = self.size + n
        self.cust[self.size : end] = cust
        self.time[self.size : end] = time
        self.type[self.size : end] = TYPE_CODE[touch] if isinstance(touch, str) else touch
        self.amount[self.size : end] = np.nan if amount is None else amount
        self.decision[self.size : end] = -1 if decision is None else decision
        self.size = end

    def copy(self) -> EventBuffer:
        out = EventBuffer(len(self.cust))
        out.add(*self.view())
        return out

    def view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        s = self.size
        return self.cust[:s], self.time[:s], self.type[:s], self.amount[:s], self.decision[:s]


@dataclass
class Origin:
    """The shared starting point of every policy run on one seed: a burn-in brand and its end state."""

    catalog: Catalog
    customers: pd.DataFrame  # the profile the brand knows (no latent traits)
    truth: GroundTruth
    state: WorldState
    events: EventBuffer  # the burn-in touch history, identity resolved
    start: datetime  # where the closed loop begins (the end of the burn-in)
    seed: int
    decision_rate: float

    @property
    def n(self) -> int:
        return len(self.customers)


def burn_in(
    catalog: Catalog, customers: int, days: int, start: datetime, seed: int, decision_rate: float = 0.08
) -> Origin:
    """Simulate ``days`` of history up to ``start`` the open-loop way; resolve its events to customers."""
    brand = simulate(catalog, customers, days, start, seed, decision_rate=decision_rate)
    assert brand.state is not None
    keys = brand.identity.assign(pos=np.arange(len(brand.identity)) % customers)
    columns = ["source_system", "source_key", "occurred_at", "touch_type", "amount", DECISION_ID]
    resolved = brand.events[columns].merge(
        keys[["source_system", "source_key", "pos"]], on=["source_system", "source_key"], how="left", sort=False
    )
    events = EventBuffer(max(1 << 16, 2 * len(resolved)))
    events.add(
        resolved["pos"].to_numpy(np.int32),
        resolved["occurred_at"].to_numpy(dtype="datetime64[s]").astype(np.int64),
        pd.Index(TYPE_NAMES).get_indexer(resolved["touch_type"].astype(object)).astype(np.int8),
        resolved["amount"].to_numpy(np.float64),
        pd.factorize(resolved[DECISION_ID].astype(object))[0],  # -1 where no decision is named
    )
    profile = brand.customers.assign(**{CUSTOMER_ID: brand.customers[CUSTOMER_ID].astype(object)})
    return Origin(catalog, profile, brand.truth, brand.state, events, start, seed, decision_rate)


@dataclass
class Due:
    """The customers due for a decision on one day, in time order, with their decision times (unix s)."""

    cust: np.ndarray
    at: np.ndarray


@dataclass
class World:
    """One policy's run of the closed loop from an ``Origin``; the origin itself is never changed."""

    origin: Origin
    state: WorldState = field(init=False)
    events: EventBuffer = field(init=False)
    day: int = field(init=False, default=-1)
    _counts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(init=False, default=None)
    _attended: np.ndarray = field(init=False)
    _contacted: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        o = self.origin
        self.state = replace(o.state)
        self.events = o.events.copy()
        self.next_decision = int(self.events.view()[4].max(initial=-1)) + 1  # numbers after the burn-in's
        self.ids = o.customers[CUSTOMER_ID].to_numpy(dtype=object)
        self.position = pd.Index(self.ids)
        zones = o.customers["time_zone"] if "time_zone" in o.customers else pd.Series("UTC", index=o.customers.index)
        self._zone_code, self._zones = pd.factorize(zones.astype(object).fillna("UTC"))

    @property
    def t0(self) -> int:
        return int(self.origin.start.timestamp())

    def day_start(self, day: int) -> datetime:
        return self.origin.start + timedelta(days=day)

    def begin_day(self, day: int) -> None:
        """Organic app and store activity of ``day`` (drawn from the state at the start of the day)."""
        if day != self.day + 1:
            raise ValueError(f"days run in order: day {day} after day {self.day}")
        self.day = day
        o, n, lt = self.origin, self.origin.n, self.origin.truth.latents
        u = stream(o.seed, ORGANIC, day).random((4, n))
        n_app = poisson_at(u[0], app_rate(lt, self.state.offline))
        n_like = poisson_at(u[1], like_rate(lt, n_app))
        n_visit = poisson_at(u[2], visit_rate(lt, self.state.online))
        n_buy = binomial_at(u[3], n_visit, buy_probability(lt))
        rng = stream(o.seed, TIMES, day)
        day0 = self.t0 + day * DAY_S
        for counts, touch in ((n_app, "app_session"), (n_like, "app_like"), (n_visit, "store_visit")):
            cust = np.repeat(np.arange(n), counts)
            self.events.add(cust, day0 + rng.integers(0, DAY_S, len(cust)), touch)
        buyers = np.repeat(np.arange(n), n_buy)
        amount = np.round(rng.lognormal(6.0, 0.7, len(buyers)), 2)
        self.events.add(buyers, day0 + rng.integers(0, DAY_S, len(buyers)), "purchase", amount)
        self._counts = (n_app, n_like, n_visit)
        self._attended, self._contacted = np.zeros(n), np.zeros(n)

    def due(self) -> Due:
        """Who is due for a decision today and when: a local hour drawn per customer, on the hour in UTC."""
        o, n = self.origin, self.origin.n
        u = stream(o.seed, DUE, self.day).random((2, n))
        who = np.flatnonzero(u[0] < o.decision_rate)
        cdf = np.cumsum(LOCAL_HOURS) / LOCAL_HOURS.sum()
        local_hour = np.minimum(np.searchsorted(cdf, u[1][who], side="right"), 23)
        utc_hour = (local_hour - self._offsets()[self._zone_code[who]]) % 24
        at = self.t0 + self.day * DAY_S + utc_hour * 3_600
        order = np.argsort(at, kind="stable")
        return Due(who[order], at[order])

    def _offsets(self) -> np.ndarray:
        """Each time zone's whole-hour UTC offset at today's noon (daylight saving included)."""
        noon = self.day_start(self.day) + timedelta(hours=12)
        out = np.zeros(len(self._zones), np.int64)
        for i, zone in enumerate(self._zones):
            try:
                out[i] = round(noon.astimezone(ZoneInfo(str(zone))).utcoffset().total_seconds() / 3_600)
            except (ZoneInfoNotFoundError, ValueError):
                out[i] = 0
        return out

    def true_p(self, cust: np.ndarray) -> np.ndarray:
        """The truth: P(success) of every catalog action for these customers now, (rows, actions)."""
        s = self.state
        return np.column_stack(
            [
                self.origin.truth.p_success(cust, s.online[cust], s.offline[cust], s.fatigue[cust], name)
                for name in self.origin.catalog.names
            ]
        )

    def respond(
        self, cust: np.ndarray, action: np.ndarray, at: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The customers' true response to the chosen actions, written back as touch events that name their
        decision (as the brand's sent and answer touches do; organic activity names none).

        Returns (P(success) of every action, success, when the success touch happens or -1).
        """
        o = self.origin
        p_all = self.true_p(cust)
        rng = stream(o.seed, OUTCOME, self.day)
        u, delay = rng.random(o.n)[cust], rng.integers(*RESPONSE_DELAY, o.n)[cust]
        success = u < p_all[np.arange(len(cust)), action]
        success_at = np.where(success, at + delay, -1)
        decision = self.next_decision + np.arange(len(cust))
        self.next_decision += len(cust)
        for j, name in enumerate(o.catalog.names):
            m = action == j
            if not m.any():
                continue
            if name in ACTION_TOUCH:
                self.events.add(cust[m], at[m] + SENT_DELAY, ACTION_TOUCH[name], decision=decision[m])
            if name != NO_ACTION:
                np.add.at(self._contacted, cust[m], 1)
            won = m & success
            touch = SUCCESS_TOUCH.get(name, "app_session")
            self.events.add(cust[won], success_at[won], touch, decision=decision[won])
            if touch in OFFLINE_SUCCESS:
                np.add.at(self._attended, cust[won], 1)
        return p_all, success, success_at

    def end_day(self) -> None:
        assert self._counts is not None, "begin_day first"
        self.state = self.state.advance(*self._counts, self._attended, self._contacted)
        self._counts = None

    def history(self, cust: np.ndarray, since: datetime, until: datetime) -> pd.DataFrame:
        """The touch events of ``cust`` in [since, until) as the brand holds them (identity resolved)."""
        c, t, k, amount, decision = self.events.view()
        wanted = np.zeros(self.origin.n, bool)
        wanted[cust] = True
        m = wanted[c] & (t >= int(since.timestamp())) & (t < int(until.timestamp()))
        code = k[m]
        return pd.DataFrame(
            {
                CUSTOMER_ID: self.ids[c[m]],
                "occurred_at": pd.to_datetime(t[m], unit="s", utc=True),
                "touch_type": _TYPE_OF[code],
                "tier": _TIER_OF[code],
                "direction": _DIRECTION_OF[code],
                "amount": amount[m],
                DECISION_ID: np.array([f"d{d}" if d >= 0 else None for d in decision[m].tolist()], dtype=object),
            }
        )

    def profile(self, cust: np.ndarray) -> pd.DataFrame:
        return self.origin.customers.iloc[cust].reset_index(drop=True)


def utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t
