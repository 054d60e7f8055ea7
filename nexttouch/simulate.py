"""A simulated OMO brand: customers, touch history, identity keys and a logged decision history.

Every customer has latent affinities for the three tiers and a state that the OMO loop moves:
offline contact (events, store visits) raises app activity and app activity raises the pull of
offline invitations; contact without value builds fatigue. A known ground-truth response
model gives P(success | state, action), so the value of any policy can be computed exactly.
The whole brand is simulated day by day with vectorised numpy over customers; events are kept as
small integer codes until the end and their text columns are built once, with pyarrow, as
arrow-backed string columns: 1M customers (~50M events) fit in a few GiB instead of tens.
The organic rates, the state's decay and the response delays are module functions and constants
because the closed-loop world (nexttouch.world) steps the same brand on from a simulation's end.

Customers are simulated in blocks of ``BLOCK`` customers, each from a random stream of its own
(seeded by the seed and the block's number) and independent of every other block: a brand of any
size is written a chunk of whole blocks at a time (``write_brand``), and the tables are the same
for a seed whatever the chunk size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from nexttouch.catalog import NO_ACTION, Catalog
from nexttouch.engine.choice import net_values
from nexttouch.logodds import sigmoid
from nexttouch.schemas import (
    ACTION,
    CUSTOMER_ID,
    DECIDED_AT,
    DECISION_ID,
    OUTCOME,
    PROPENSITY,
    SOURCE_SYSTEMS,
    TOUCH_TYPES,
)
from nexttouch.settings import Settings

DAY = np.int64(86_400)
REGIONS = np.array(["north", "south", "east", "west"])
# Each region's IANA time zone (a profile column: quiet hours are local time).
TIME_ZONES = {
    "north": "America/Chicago",
    "south": "America/Phoenix",
    "east": "America/New_York",
    "west": "America/Los_Angeles",
}
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
SENT_DELAY = 60  # seconds from a decision to its outbound touch
RESPONSE_DELAY = (1_800, 2 * 86_400)  # a success touch follows its decision within [30 min, 2 days)
OFFLINE_SUCCESS = ("event_attended", "store_visit")  # successes that are in-person contact
CHUNK = 1 << 23  # rows per arrow chunk of a text column
BLOCK = 1 << 16  # customers simulated from one random stream
BYTES_PER_CUSTOMER = 20_000  # peak memory of simulating and writing one customer's 180 days (~50 touches)


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
        return sigmoid(base + effect)


def app_rate(lt: Latents, offline: np.ndarray) -> np.ndarray:
    """Daily app sessions: in-person contact makes customers more active online (the OMO loop)."""
    return np.exp(-2.45 + 0.6 * lt.engagement + 0.4 * lt.digital + 0.35 * np.log1p(offline))


def like_rate(lt: Latents, n_app: np.ndarray) -> np.ndarray:
    """Likes per day given the day's sessions: the trace of a customer's social taste."""
    return 0.6 * n_app * sigmoid(lt.social)


def visit_rate(lt: Latents, online: np.ndarray) -> np.ndarray:
    """Daily store visits: app activity pulls customers into the store."""
    return np.exp(
        -4.2 + 0.4 * lt.engagement + 0.3 * lt.social + 0.5 * lt.personal + 0.3 * lt.premium + 0.25 * np.log1p(online)
    )


def buy_probability(lt: Latents) -> np.ndarray:
    """Chance that a store visit ends in a purchase."""
    return sigmoid(-1.6 + 0.6 * lt.personal + 0.5 * lt.premium)


@dataclass
class WorldState:
    """The customers' decayed activity that drives the truth: app activity, in-person contact, fatigue."""

    online: np.ndarray
    offline: np.ndarray
    fatigue: np.ndarray

    def advance(
        self, n_app: np.ndarray, n_like: np.ndarray, n_visit: np.ndarray, attended: np.ndarray, contacted: np.ndarray
    ) -> WorldState:
        """The state after a day with these counts (the same decay for open and closed loop)."""
        return WorldState(
            0.85 * self.online + n_app + 0.2 * n_like,
            0.93 * self.offline + n_visit + attended,
            0.8 * self.fatigue + contacted,
        )


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
    state: WorldState | None = None  # the customers' state at ``end``: where a closed loop starts

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


def customer_ids(n: int, first: int = 0) -> np.ndarray:
    """The ids of customers ``first`` to ``first + n - 1``: ``C0000001`` for the first one."""
    return np.char.add("C", np.char.zfill(np.arange(first + 1, first + n + 1).astype(str), 7)).astype(object)


def _strings(chunks: list[pa.Array]) -> pd.Series:
    """Arrow strings as a pandas string column (``ArrowDtype(pa.string())``): no Python object per cell.

    32-bit offsets and chunks of at most ``CHUNK`` rows: half the offset memory of pandas' own
    ``string[pyarrow]`` (``large_string``), and no chunk can outgrow 2 GiB of text.
    """
    return pd.Series(pd.arrays.ArrowExtensionArray(pa.chunked_array(chunks, pa.string())))


def _spans(n: int) -> list[slice]:
    return [slice(lo, min(lo + CHUNK, n)) for lo in range(0, n, CHUNK)]


def _text(values: list[str] | np.ndarray | pa.Array, codes: np.ndarray) -> pd.Series:
    """A text column: ``values`` indexed by ``codes`` (e.g. a few touch types, or all customer ids)."""
    array = values if isinstance(values, pa.Array) else pa.array(values, pa.string())
    return _strings([array.take(codes[span]) for span in _spans(len(codes))])


def _numbered(prefix: str, numbers: np.ndarray, width: int = 0, missing: np.ndarray | None = None) -> pd.Series:
    """``prefix`` + zero-padded ``numbers``, null where ``missing``; vectorised in arrow's C++ kernels."""
    chunks = []
    for span in _spans(len(numbers)):
        text = pc.cast(pa.array(numbers[span], mask=None if missing is None else missing[span]), pa.string())
        chunks.append(_join(prefix, pc.utf8_lpad(text, width, "0") if width else text))
    return _strings(chunks)


def _hex_keys(prefix: str, numbers: np.ndarray) -> pa.Array:
    """``prefix`` + 8 lower-case hex digits of each number (as ``"%08x"``), without a Python loop."""
    digits = (numbers.astype(np.uint32)[:, None] >> np.arange(28, -1, -4, dtype=np.uint32)) & 0xF
    chars = np.frombuffer(b"0123456789abcdef", np.uint8)[digits]
    offsets = np.arange(0, 8 * len(numbers) + 1, 8, dtype=np.int32)
    hexes = pa.StringArray.from_buffers(len(numbers), pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))
    return _join(prefix, hexes)


def _join(prefix: str, text: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(prefix, text, "")


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
    block: int = BLOCK,
) -> SimulatedBrand:
    """Simulate ``days`` days of an OMO brand ending at ``end`` (UTC). Deterministic for a seed."""
    chunks = simulate_chunks(catalog, n_customers, days, end, seed, decision_rate, n_customers, progress, block)
    return _joined(list(chunks))


def simulate_chunks(
    catalog: Catalog,
    n_customers: int,
    days: int,
    end: datetime,
    seed: int,
    decision_rate: float = 0.08,
    chunk: int = BLOCK,
    progress: bool = False,
    block: int = BLOCK,
) -> Iterator[SimulatedBrand]:
    """The brand ``chunk`` customers at a time (rounded up to whole blocks), customers in order.

    Block ``b`` holds customers ``b * block`` to ``(b + 1) * block - 1`` and draws from
    ``default_rng([seed, b])`` alone, so the rows do not depend on ``chunk``.
    """
    per_chunk = max(1, -(-chunk // block))
    starts = list(range(0, n_customers, block))
    bar = tqdm(total=len(starts) * days, desc="simulate", unit="block-day", disable=not progress)
    with bar:
        for i in range(0, len(starts), per_chunk):
            parts = [
                _simulate_block(
                    catalog, lo, min(block, n_customers - lo), days, end, seed, lo // block, decision_rate, bar
                )
                for lo in starts[i : i + per_chunk]
            ]
            yield _joined(parts)


def _simulate_block(
    catalog: Catalog,
    first: int,
    n: int,
    days: int,
    end: datetime,
    seed: int,
    number: int,
    decision_rate: float,
    bar: tqdm,
) -> SimulatedBrand:
    """Customers ``first`` to ``first + n - 1``, from the random stream of block ``number``."""
    rng = np.random.default_rng([seed, number])
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
    lt.push_opt_in = (rng.random(n) < sigmoid(0.9 + 0.6 * lt.digital)).astype(np.int8)
    lt.call_consent = (rng.random(n) < 0.4 + 0.25 * lt.premium).astype(np.int8)
    truth = GroundTruth(lt)

    ids = pa.array(customer_ids(n, first), pa.string())
    signup_days = rng.exponential(500, n).astype(np.int64) + 1
    region = rng.integers(0, len(REGIONS), n)
    customers = pd.DataFrame(
        {
            CUSTOMER_ID: _strings([ids]),
            "signup_at": pd.to_datetime(t0 - signup_days * DAY, unit="s", utc=True),
            "region": _text(REGIONS, region),
            "time_zone": _text([TIME_ZONES[r] for r in REGIONS], region),
            "segment": _text(SEGMENTS, lt.premium),
            "push_opt_in": lt.push_opt_in.astype(np.int64),
            "call_consent": lt.call_consent.astype(np.int64),
        }
    )
    # Each source system knows the customer under its own opaque key: (system, customer) -> key.
    source_keys = pa.concat_arrays(
        [
            _hex_keys(f"{system}-", first + rng.permutation(n) + 4096 * (i + 1))
            for i, system in enumerate(SOURCE_SYSTEMS)
        ]
    )
    identity = pd.DataFrame(
        {
            "source_system": _text(SOURCE_SYSTEMS, np.repeat(np.arange(len(SOURCE_SYSTEMS)), n)),
            "source_key": _strings([source_keys]),
            CUSTOMER_ID: _strings([ids] * len(SOURCE_SYSTEMS)),
        }
    )

    k = len(catalog.actions)
    eligible_all = np.ones((n, k), bool)
    for j, action in enumerate(catalog.actions):
        if action.requires == "push_opt_in":
            eligible_all[:, j] = lt.push_opt_in == 1
        elif action.requires == "call_consent":
            eligible_all[:, j] = lt.call_consent == 1

    state = WorldState(online=np.zeros(n), offline=np.zeros(n), fatigue=np.zeros(n))
    ev: dict[str, list[np.ndarray]] = {"cust": [], "time": [], "type": [], "amount": [], "decision": []}
    none = np.zeros(0, np.int64)  # a block may go without decisions
    dec_cust, dec_time, dec_action, dec_prop, dec_out = [none], [none], [none], [np.zeros(0)], [np.zeros(0)]
    dec_truth = [(np.zeros((0, k)), np.zeros((0, k), bool))]
    n_decisions = 0

    def emit(cust: np.ndarray, times: np.ndarray, touch: str, amount=None, decision=None) -> None:
        # Compact codes (25 bytes an event); times in seconds from the start.
        ev["cust"].append(cust.astype(np.int32))
        ev["time"].append((times - t0).astype(np.int32))
        ev["type"].append(np.full(len(cust), TYPE_CODE[touch], np.int8))
        ev["amount"].append(np.full(len(cust), np.nan) if amount is None else amount)
        ev["decision"].append(np.full(len(cust), -1, np.int32) if decision is None else decision.astype(np.int32))

    for day in range(days):
        bar.update()
        day0 = t0 + day * DAY
        # Organic behaviour: the OMO loop links online and offline activity. App rates are set so a
        # customer has ~50 touches in 180 days (all sources, decisions included).
        n_app = rng.poisson(app_rate(lt, state.offline))
        n_like = rng.poisson(like_rate(lt, n_app))
        n_visit = rng.poisson(visit_rate(lt, state.online))
        n_buy = rng.binomial(n_visit, buy_probability(lt))
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
            chosen, prop = _logging_policy(
                rng, catalog, eligible_all[who], state.online[who], state.offline[who], lt.premium[who]
            )
            when = day0 + rng.integers(0, DAY - 3_600, len(who))
            dec_no = np.arange(n_decisions, n_decisions + len(who))
            n_decisions += len(who)
            success = np.zeros(len(who), bool)
            p_all = np.column_stack(
                [
                    truth.p_success(who, state.online[who], state.offline[who], state.fatigue[who], name)
                    for name in catalog.names
                ]
            )
            dec_truth.append((p_all, eligible_all[who]))
            for j, name in enumerate(catalog.names):
                m = chosen == j
                if not m.any():
                    continue
                success[m] = rng.random(m.sum()) < p_all[m, j]
                if name in ACTION_TOUCH:
                    emit(who[m], when[m] + SENT_DELAY, ACTION_TOUCH[name], decision=dec_no[m])
                if name != NO_ACTION:
                    contacted[who[m]] += 1
                won = m & success
                touch = SUCCESS_TOUCH.get(name, "app_session")
                emit(who[won], when[won] + rng.integers(*RESPONSE_DELAY, won.sum()), touch, decision=dec_no[won])
                if touch in OFFLINE_SUCCESS:
                    attended[who[won]] += 1
            dec_cust.append(who)
            dec_time.append(when)
            dec_action.append(chosen)
            dec_prop.append(prop)
            dec_out.append(success.astype(float))

        state = state.advance(n_app, n_like, n_visit, attended, contacted)

    events = _events_frame(ids, source_keys, ev, t0, days, f"ev-{number}-")
    decision_ids = _numbered(f"sim-{number}-", np.arange(n_decisions), 9)
    decisions = pd.DataFrame(
        {
            DECISION_ID: decision_ids,
            CUSTOMER_ID: _text(ids, np.concatenate(dec_cust)),
            DECIDED_AT: pd.to_datetime(np.concatenate(dec_time), unit="s", utc=True),
            ACTION: _text(catalog.names, np.concatenate(dec_action)),
            PROPENSITY: np.concatenate(dec_prop),
            OUTCOME: np.concatenate(dec_out),
        }
    )
    p_all, eligible = np.concatenate([t[0] for t in dec_truth]), np.concatenate([t[1] for t in dec_truth])
    decision_truth = pd.DataFrame(
        {
            DECISION_ID: decision_ids,
            **{f"p_{a}": p_all[:, j] for j, a in enumerate(catalog.names)},
            **{f"eligible_{a}": eligible[:, j] for j, a in enumerate(catalog.names)},
        }
    )
    return SimulatedBrand(customers, identity, events, decisions, truth, decision_truth, start, end, state)


def _events_frame(
    ids: pa.Array,
    source_keys: pa.Array,
    parts: dict[str, list[np.ndarray]],
    t0: np.int64,
    days: int,
    prefix: str = "ev-",
) -> pd.DataFrame:
    """Touch events as the source systems would send them: their own keys, not customer ids.

    ``parts`` holds the simulated days' code arrays; they are joined and sorted by time one column
    at a time and dropped from ``parts`` as they go, so at 1M customers (~50M events, ~0.4 GiB a
    column) only one unsorted copy is alive at once. ``source_keys`` holds every system's key of
    every customer, system by system, so an event's key is one ``take``; text columns are built
    in arrow from the integer codes.
    """
    when = np.minimum(np.concatenate(parts.pop("time")), np.int32(days * DAY - 1))  # late outcomes stay in
    order = np.argsort(when, kind="stable")
    when = when[order]
    code = np.concatenate(parts.pop("type"))[order]
    types = [TOUCH_TYPES[name] for name in TYPE_NAMES]
    system = np.array([SOURCE_SYSTEMS.index(t.source_system) for t in types], np.int8)[code]
    key_index = system.astype(np.int64) * len(ids) + np.concatenate(parts.pop("cust"))[order]
    amount = np.concatenate(parts.pop("amount"))[order]
    decision = np.concatenate(parts.pop("decision"))[order]
    del order

    return pd.DataFrame(
        {
            "event_id": _numbered(prefix, np.arange(len(when))),
            "occurred_at": pd.to_datetime(when.astype(np.int64) + t0, unit="s", utc=True),
            "source_system": _text(SOURCE_SYSTEMS, system),
            "source_key": _text(source_keys, key_index),
            "touch_type": _text(TYPE_NAMES, code),
            "tier": _text([t.tier for t in types], code),
            "direction": _text([t.direction for t in types], code),
            "amount": amount,
            DECISION_ID: _numbered(f"sim-{prefix[3:]}", decision, 9, missing=decision < 0),
        }
    )


def _joined(parts: list[SimulatedBrand]) -> SimulatedBrand:
    """Consecutive blocks of customers as one brand; the identity map stays system by system."""
    if len(parts) == 1:
        return parts[0]
    first, last = parts[0], parts[-1]

    def cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
        return pd.concat(frames, ignore_index=True)

    systems = len(SOURCE_SYSTEMS)
    identity = [
        p.identity.iloc[i * len(p.customers) : (i + 1) * len(p.customers)] for i in range(systems) for p in parts
    ]
    latents = Latents(
        **{f.name: np.concatenate([getattr(p.truth.latents, f.name) for p in parts]) for f in fields(Latents)}
    )
    state = None
    if all(p.state is not None for p in parts):
        state = WorldState(*(np.concatenate([getattr(p.state, f.name) for p in parts]) for f in fields(WorldState)))
    return SimulatedBrand(
        cat([p.customers for p in parts]),
        cat(identity),
        cat([p.events for p in parts]),
        cat([p.decisions for p in parts]),
        GroundTruth(latents),
        cat([p.decision_truth for p in parts]),
        first.start,
        last.end,
        state,
    )


def _customer_major(n: int) -> np.ndarray:
    """Row order of a system-by-system identity map of ``n`` customers that lists it customer by customer."""
    return np.arange(n * len(SOURCE_SYSTEMS)).reshape(len(SOURCE_SYSTEMS), n).T.ravel()


@dataclass(frozen=True)
class Delivered:
    """What ``write_brand`` wrote: rows per table."""

    customers: int
    events: int
    decisions: int
    source_systems: int
    first_customers: tuple[str, ...]  # the ids of the first 200 customers (e.g. to try the service with)


def chunk_customers(memory_gib: float) -> int:
    """Customers simulated at once within a memory budget (whole blocks, at least one)."""
    return max(BLOCK, int(memory_gib * 2**30 / BYTES_PER_CUSTOMER) // BLOCK * BLOCK)


def write_brand(
    settings: Settings, catalog: Catalog, end: datetime, out: Path, chunk: int | None = None, block: int = BLOCK
) -> Delivered:
    """Simulate with the settings' size and seed; write the tables as a brand would deliver them.

    ``chunk`` customers at a time (default: as many as ``settings.data_memory_gib`` holds), each
    chunk appended to every table's parquet file as row groups: memory does not grow with the brand.
    """
    out.mkdir(parents=True, exist_ok=True)
    # Only a simulation knows the truth; it is kept apart from what a brand would deliver.
    truth_dir = settings.data_dir / "simulation"
    truth_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.parquet" for name in ("customers", "identity", "events", "decisions")}
    paths["decision_truth"] = truth_dir / "decision_truth.parquet"
    chunk = chunk or chunk_customers(settings.data_memory_gib)
    writers: dict[str, pq.ParquetWriter] = {}
    events = decisions = 0
    systems: set[str] = set()
    first: list[str] = []
    try:
        for part in simulate_chunks(
            catalog, settings.customers, settings.days, end, settings.seed, settings.decision_rate, chunk, True, block
        ):
            events, decisions = events + len(part.events), decisions + len(part.decisions)
            systems |= set(part.events["source_system"].unique())
            first += part.customers[CUSTOMER_ID].head(200 - len(first)).tolist()
            for name, frame in (
                ("customers", part.customers),
                ("identity", part.identity.iloc[_customer_major(len(part.customers))]),
                ("events", part.events),
                ("decisions", part.decisions),
                ("decision_truth", part.decision_truth),
            ):
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if name not in writers:
                    writers[name] = pq.ParquetWriter(paths[name].with_name(f".{paths[name].name}.tmp"), table.schema)
                writers[name].write_table(table.cast(writers[name].schema))
            del part
    finally:
        for writer in writers.values():
            writer.close()
    for path in paths.values():
        path.with_name(f".{path.name}.tmp").replace(path)
    return Delivered(settings.customers, events, decisions, len(systems), tuple(first))
