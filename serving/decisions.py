"""The decide use case: identity -> features -> decision engine -> capacity and log -> answers.

``/decide`` (a batch of one) and ``/decide/batch`` both call ``Decisions.decide``, and so do the tests.
Feature reads run in a thread pool so a slow or hung online store can be timed out: its customers
then get the rule-based fallback answer, never a 500. Capacity is taken in the transaction that
logs the decisions, so a decision that is not logged holds no capacity.

Single-customer requests that arrive while the previous ones are being read and scored are decided
together, as one batch (one thread hop, one model call, one log operation): under load the fixed
cost of a decision is shared, and an idle service answers a lone request at once, as before. The
engine treats rows independently, so each customer gets the answer it would get alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import pandas as pd

from nexttouch.api import CustomerRef
from nexttouch.catalog import Action
from nexttouch.engine import DecisionEngine, Draft, FallbackCause, Features, from_frame, from_rows
from nexttouch.engine.answer import Answer
from serving import affinity, capacity, deadline
from serving.decision_log import DecisionLog, Tx, decision_rows, insert_decisions, new_decision_ids
from serving.metrics import CAPACITY_REFUSED, DECISIONS, FALLBACKS
from serving.tokens import IdTokens, TokenUnusable

log = logging.getLogger("nexttouch.serving")

Resolver = Callable[[str, str], str | None]
IN_LOOP = 64  # decisions drafted and explained in the event loop; a bigger batch's work goes to a thread


class FeatureSource(Protocol):
    def read(self, customer_id: str, at: datetime | None = None) -> dict[str, object] | None: ...

    def read_many(self, customer_ids: list[str], at: datetime | None = None) -> tuple[pd.DataFrame, np.ndarray]: ...


class Decisions:
    """Decides for customers named by id or source key, logs every answer before it is returned."""

    def __init__(
        self,
        engine: DecisionEngine,
        features: FeatureSource,
        resolve: Resolver,
        log: DecisionLog,
        reader: Executor,
        read_timeout_s: float,
        batch_read_timeout_s: float,
        systems: frozenset[str] | None = None,
        tokens: IdTokens | None = None,
    ) -> None:
        """``systems``: the source systems the identity map knows (None: any); a key of another is refused.
        ``tokens``: checks customers' ID tokens (None: tokens are refused as not configured)."""
        self.engine = engine  # swapped by one assignment when a new champion arrives
        self.features = features
        self.resolve = resolve
        self.log = log
        self.reader = reader
        self.read_timeout_s = read_timeout_s
        self.batch_read_timeout_s = batch_read_timeout_s
        self.systems = systems
        self.tokens = tokens
        self._waiting: list[_Waiting] = []  # single requests not yet drafted
        self._drafting = False
        self._tasks: set[asyncio.Task[None]] = set()

    def customer_id(self, ref: CustomerRef) -> str | None:
        """The customer's id; None for an unknown key of a known system (a cold start).

        An ID token names the customer by its ``sub``, a key of the CIAM's source system; a token that fails
        a check raises TokenRefused before any lookup, so it never becomes a cold start."""
        if ref.id_token is not None:
            if self.tokens is None:
                raise TokenUnusable(
                    "this service takes no ID tokens: NEXTTOUCH_OIDC_ISSUER, NEXTTOUCH_OIDC_AUDIENCE and "
                    "NEXTTOUCH_OIDC_JWKS are not set; name the customer by customer_id or source"
                )
            subject = self.tokens.subject(ref.id_token)
            system = self.tokens.system
            if self.systems is not None and system not in self.systems:
                raise TokenUnusable(
                    f"the identity map holds no key of source system {system!r}, under which the CIAM's "
                    "subjects resolve: ingest them under it or set NEXTTOUCH_OIDC_SOURCE_SYSTEM"
                )
            return self.resolve(system, subject)
        if ref.source is not None:
            if self.systems is not None and ref.source.system not in self.systems:
                raise UnknownSystem(ref.source.system, self.systems)
            return self.resolve(ref.source.system, ref.source.key)
        return ref.customer_id

    async def decide(
        self,
        refs: Sequence[CustomerRef],
        at: datetime | None = None,
        context: dict[str, str] | None = None,
        explain: bool = True,
    ) -> list[Answer]:
        """One answer per customer, in order, each logged durably (with ``context``) before it is returned;
        with ``explain=False`` the model's answers carry no reasons."""
        cids = [self.customer_id(r) for r in refs]
        if len(cids) == 1 and explain:
            return [await self._one(cids[0], at, context or {})]
        engine, draft = await self._draft(cids, at, many=len(cids) > 1)
        return await self._finish(engine, draft, [context or {}] * len(cids), deadline.current(), explain)

    # -- single requests, decided together while the service is busy --------------------------------

    async def _one(self, cid: str | None, at: datetime | None, context: dict[str, str]) -> Answer:
        waiting = _Waiting(cid, at, context, deadline.current(), asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        if not self._drafting:
            self._drafting = True
            self._keep(asyncio.create_task(self._drain()))
        return await waiting.answer

    async def _drain(self) -> None:
        """Draft what waits, one group at a time; requests arriving meanwhile form the next group.
        Each group is logged and answered in a task of its own, so the next draft need not wait for a commit."""
        try:
            while self._waiting:
                waiting, self._waiting = self._waiting, []
                for at in dict.fromkeys(w.at for w in waiting):  # one decision time per group
                    group = [w for w in waiting if w.at == at]
                    try:
                        drafted = await self._draft([w.cid for w in group], at, many=False)
                    except BaseException as exc:  # every waiting request gets the error
                        _fail(group, exc)
                        if not isinstance(exc, Exception):  # cancelled: stop
                            raise
                        continue
                    self._keep(asyncio.create_task(self._answer(group, *drafted)))
        finally:
            self._drafting = False

    async def _answer(self, group: list[_Waiting], engine: DecisionEngine, draft: Draft) -> None:
        # The log gives up at the first deadline among the group: no request is answered 504 with its
        # decision committed behind its back.
        dues = [w.due for w in group if w.due is not None]
        try:
            answers = await self._finish(engine, draft, [w.context for w in group], min(dues) if dues else None)
        except BaseException as exc:  # every waiting request gets the error
            _fail(group, exc)
            if not isinstance(exc, Exception):  # cancelled: stop
                raise
            return
        for w, answer in zip(group, answers, strict=True):
            if not w.answer.done():  # its request may have timed out
                w.answer.set_result(answer)

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._tasks.discard)

    # -- the steps ---------------------------------------------------------------------------------

    async def _draft(self, cids: list[str | None], at: datetime | None, many: bool) -> tuple[DecisionEngine, Draft]:
        """The engine (one model for the whole group, even if a new champion arrives) and its draft."""
        engine = self.engine
        now = at or datetime.now(UTC)
        features, causes = await self._read(cids, now, many, engine.columns)
        if len(cids) <= IN_LOOP:
            return engine, engine.draft(cids, features, now, causes)
        # a big batch's scoring would hold up the event loop
        loop = asyncio.get_running_loop()
        return engine, await loop.run_in_executor(self.reader, engine.draft, cids, features, now, causes)

    async def _finish(
        self,
        engine: DecisionEngine,
        draft: Draft,
        contexts: list[dict[str, str]],
        due: float | None,
        explain: bool = True,
    ) -> list[Answer]:
        """Capacity and the log in one transaction, then the reasons and the metrics."""
        try:
            answers = await self.log.arun(lambda tx: _commit(tx, engine, draft, contexts), due)
        except Exception as exc:
            raise LogUnavailable(type(exc).__name__) from exc
        # After the commit: the log's write lock is not held for the reasons.
        if explain and len(answers) <= IN_LOOP:
            engine.explain(draft, answers)
        elif explain:
            await asyncio.get_running_loop().run_in_executor(self.reader, engine.explain, draft, answers)
        _count(answers, draft)
        return answers

    async def _read(
        self, cids: list[str | None], now: datetime, many: bool, columns: Sequence[str]
    ) -> tuple[Features, list[FallbackCause | None]]:
        """The customers' features and, per customer, why it falls back (None: the model decides).

        A batch request is read as one frame; single requests decided together row by row in one
        thread hop (for a few customers, cheaper than building a frame), each within the single read's timeout;
        ``columns``: what the drafting engine reads of each row.
        """
        loop = asyncio.get_running_loop()
        if many:  # an unresolved source key reads as "": nobody has that id
            read = loop.run_in_executor(self.reader, self.features.read_many, [c or "" for c in cids], now)
            timeout = self.batch_read_timeout_s
        else:
            read = loop.run_in_executor(self.reader, self._rows, cids, now)
            timeout = self.read_timeout_s
        try:
            found = await asyncio.wait_for(read, timeout)
        except TimeoutError:
            return {}, [FallbackCause.STORE_TIMEOUT] * len(cids)
        except Exception as exc:  # store down or broken: rule-based answers, never a 500
            log.warning("online read failed: %s", type(exc).__name__)
            return {}, [FallbackCause.STORE_ERROR] * len(cids)
        if not many:
            causes = [
                FallbackCause.UNKNOWN_SOURCE_KEY
                if c is None
                else FallbackCause.UNKNOWN_CUSTOMER
                if row is None
                else None
                for c, row in zip(cids, found, strict=True)
            ]
            return from_rows(found, columns), causes
        frame, known = found
        causes = [
            FallbackCause.UNKNOWN_SOURCE_KEY if c is None else None if k else FallbackCause.UNKNOWN_CUSTOMER
            for c, k in zip(cids, known.tolist(), strict=True)
        ]
        return from_frame(frame), causes

    def _rows(self, cids: list[str | None], now: datetime) -> list[dict[str, object] | None]:
        return [None if c is None else self.features.read(c, now) for c in cids]


@dataclass
class _Waiting:
    """A single-customer request waiting for its group's decision."""

    cid: str | None
    at: datetime | None
    context: dict[str, str]
    due: float | None  # its request's deadline (time.monotonic)
    answer: asyncio.Future[Answer]


def _fail(group: list[_Waiting], exc: BaseException) -> None:
    for w in group:
        if not w.answer.done():
            w.answer.set_exception(exc)


class UnknownSystem(ValueError):
    """A source key of a system the identity map does not know: the caller's mistake, not a cold start."""

    def __init__(self, system: str, known: frozenset[str]) -> None:
        super().__init__(f"unknown source system {system!r}; known systems: {', '.join(sorted(known))}")


class LogUnavailable(RuntimeError):
    """The decision log could not commit: no decision was made."""


def _commit(tx: Tx, engine: DecisionEngine, draft: Draft, contexts: list[dict[str, str]]) -> list[Answer]:
    """Inside the log transaction: capacity for the chosen actions, the answers' fields, their log rows."""

    def take(action: Action, bucket: str, at: datetime, want: int) -> int:
        assert action.capacity is not None
        return capacity.take(tx, action, action.capacity.period_of(at), bucket, want)

    if engine.prior_sd is not None:  # the customers' own posteriors, as of this transaction
        own = affinity.read(tx, engine.catalog, [draft.customer_ids[i] for i in draft.rows], engine.prior_sd)
        if own.outcomes.any():
            engine.personalise(draft, own)
    engine.allocate(draft, take)
    answers = engine.answers(draft, new_decision_ids(len(draft.customer_ids)), explain=False)
    if all(c is contexts[0] for c in contexts):  # a batch: one context
        rows = decision_rows(answers, contexts[0])
    else:
        rows = [row for a, c in zip(answers, contexts, strict=True) for row in decision_rows([a], c)]
    insert_decisions(tx, rows)
    return answers


def _count(answers: list[Answer], draft: Draft) -> None:
    """Metrics for answers given together (one increment per label set: each costs a lock and a write)."""
    decisions = Counter((a["action"], "true" if a["fallback"] else "false") for a in answers)
    fallbacks = Counter(c.label for c in draft.causes if c is not None)
    refused = Counter(action for row in draft.refused.values() for action in row)
    for labels, n in decisions.items():
        DECISIONS.labels(*labels).inc(n)
    for label, n in fallbacks.items():
        FALLBACKS.labels(label).inc(n)
    for label, n in refused.items():
        CAPACITY_REFUSED.labels(label).inc(n)
