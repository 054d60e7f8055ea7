"""The decide use case: identity -> features -> decision engine -> capacity and log -> answers.

``/decide`` (a batch of one) and ``/decide/batch`` both call ``Decisions.decide``, and so do the tests.
Feature reads run in a thread pool so a slow or hung online store can be timed out: its customers
then get the rule-based fallback answer, never a 500. Capacity is taken in the transaction that
logs the decisions, so a decision that is not logged holds no capacity.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import pandas as pd

from nexttouch.api import CustomerRef
from nexttouch.catalog import Action
from nexttouch.engine import DecisionEngine, Draft, FallbackCause, Features, from_frame, from_row
from nexttouch.engine.answer import Answer
from serving import affinity, capacity
from serving.decision_log import DecisionLog, Tx, decision_rows, insert_decisions, new_decision_ids
from serving.metrics import CAPACITY_REFUSED, DECISIONS, FALLBACKS

log = logging.getLogger("nexttouch.serving")

Resolver = Callable[[str, str], str | None]


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
    ) -> None:
        """``systems``: the source systems the identity map knows (None: any); a key of another is refused."""
        self.engine = engine  # swapped by one assignment when a new champion arrives
        self.features = features
        self.resolve = resolve
        self.log = log
        self.reader = reader
        self.read_timeout_s = read_timeout_s
        self.batch_read_timeout_s = batch_read_timeout_s
        self.systems = systems

    def customer_id(self, ref: CustomerRef) -> str | None:
        """The customer's id; None for an unknown key of a known system (a cold start)."""
        if ref.source is not None:
            if self.systems is not None and ref.source.system not in self.systems:
                raise UnknownSystem(ref.source.system, self.systems)
            return self.resolve(ref.source.system, ref.source.key)
        return ref.customer_id

    async def decide(
        self, refs: Sequence[CustomerRef], at: datetime | None = None, context: dict[str, str] | None = None
    ) -> list[Answer]:
        """One answer per customer, in order, each logged durably (with ``context``) before it is returned."""
        engine = self.engine  # one model for the whole request, even if a new champion arrives
        now = at or datetime.now(UTC)
        cids = [self.customer_id(r) for r in refs]
        features, causes = await self._read(cids, now)
        if len(cids) == 1:
            draft = engine.draft(cids, features, now, causes)
        else:  # a big batch's scoring would hold up the event loop
            loop = asyncio.get_running_loop()
            draft = await loop.run_in_executor(self.reader, engine.draft, cids, features, now, causes)
        answers = await self._logged(lambda tx: _finish(tx, engine, draft, context or {}))
        # After the commit: the log's write lock is not held for the reasons (a batch's in a thread).
        if len(cids) == 1:
            engine.explain(draft, answers)
        else:
            await asyncio.get_running_loop().run_in_executor(self.reader, engine.explain, draft, answers)
        _count(answers, draft)
        return answers

    async def _read(self, cids: list[str | None], now: datetime) -> tuple[Features, list[FallbackCause | None]]:
        """The customers' features and, per customer, why it falls back (None: the model decides)."""
        loop = asyncio.get_running_loop()
        if len(cids) == 1:
            (cid,) = cids
            if cid is None:
                return {}, [FallbackCause.UNKNOWN_SOURCE_KEY]
            read = loop.run_in_executor(self.reader, self.features.read, cid, now)
            timeout = self.read_timeout_s
        else:  # an unresolved source key reads as "": nobody has that id
            read = loop.run_in_executor(self.reader, self.features.read_many, [c or "" for c in cids], now)
            timeout = self.batch_read_timeout_s
        try:
            found = await asyncio.wait_for(read, timeout)
        except TimeoutError:
            return {}, [FallbackCause.STORE_TIMEOUT] * len(cids)
        except Exception as exc:  # store down or broken: rule-based answers, never a 500
            log.warning("online read failed: %s", type(exc).__name__)
            return {}, [FallbackCause.STORE_ERROR] * len(cids)
        if len(cids) == 1:
            if found is None:
                return {}, [FallbackCause.UNKNOWN_CUSTOMER]
            return from_row(found, self.engine.columns), [None]
        frame, known = found
        causes = [
            FallbackCause.UNKNOWN_SOURCE_KEY if c is None else None if k else FallbackCause.UNKNOWN_CUSTOMER
            for c, k in zip(cids, known.tolist(), strict=True)
        ]
        return from_frame(frame), causes

    async def _logged(self, op: Callable[[Tx], list[Answer]]) -> list[Answer]:
        try:
            return await self.log.arun(op)
        except Exception as exc:
            raise LogUnavailable(type(exc).__name__) from exc


class UnknownSystem(ValueError):
    """A source key of a system the identity map does not know: the caller's mistake, not a cold start."""

    def __init__(self, system: str, known: frozenset[str]) -> None:
        super().__init__(f"unknown source system {system!r}; known systems: {', '.join(sorted(known))}")


class LogUnavailable(RuntimeError):
    """The decision log could not commit: no decision was made."""


def _finish(tx: Tx, engine: DecisionEngine, draft: Draft, context: dict[str, str]) -> list[Answer]:
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
    insert_decisions(tx, decision_rows(answers, context))
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
