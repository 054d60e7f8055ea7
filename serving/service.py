"""The BentoML decision service: `bentoml serve serving.service:NextTouch`.

Configuration comes from the same settings object as every other stage (NEXTTOUCH_* env).
The decision endpoints are async: while one request waits for the decision-log commit, the next
ones are decided and join the same commit (group commit, see serving/decision_log.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound, ServiceUnavailable
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nexttouch.api import (
    DecideBatchRequest,
    DecideBatchResponse,
    DecideRequest,
    DecideResponse,
    EventsRequest,
    EventsResponse,
    FeedbackRequest,
    FeedbackResponse,
    ModelInfo,
    TimeBounds,
)
from nexttouch.settings import load_settings
from serving.auth import ApiKeyMiddleware
from serving.body_limit import RequestLimitMiddleware
from serving.error_bodies import ErrorBodyMiddleware, install_refusal_logging
from serving.openapi import OpenApiMiddleware
from serving.timeout import install as install_cancelling_timeout

for _var in ("BENTOML_DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
    os.environ.setdefault(_var, "true")
os.environ.setdefault("FEAST_USAGE", "False")
# One LightGBM/OpenMP thread per worker: workers already use the cores, and OpenMP threads waking up
# for a 4-row prediction cost more than the prediction (set before lightgbm is imported).
os.environ.setdefault("OMP_NUM_THREADS", "1")

log = logging.getLogger("nexttouch.serving")


class Conflict(BentoMLException):
    error_code = HTTPStatus.CONFLICT


class TooLarge(BentoMLException):
    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


_running: dict[str, NextTouch] = {}  # this worker's service instance, for the plain GET /model route


async def _model_info(_: Request) -> JSONResponse:
    service = _running.get("service")
    if service is None:
        return JSONResponse({"error": "service is starting"}, status_code=503)
    return JSONResponse(service.model_info().model_dump(mode="json"))


install_cancelling_timeout()  # BentoML's own keeps every request's timer alive for the whole timeout
install_refusal_logging()  # BentoML logs refused input values with every 400


@bentoml.service(
    name="nexttouch",
    traffic={"timeout": load_settings().request_timeout_s},
    workers=load_settings().workers,
    # One log line and one OpenTelemetry span per request cost ~15 % of a decision's CPU: opt-in.
    logging={"access": {"enabled": load_settings().access_log}},
    tracing={"excluded_urls": [] if load_settings().request_tracing else [".*"]},
)
class NextTouch:
    """Decides the next contact: push, event invite, advisor call or none."""

    def __init__(self) -> None:
        from nexttouch.catalog import load_catalog
        from serving.champion import ChampionWatcher, load_champion
        from serving.contact_state import ContactUpdater
        from serving.decision_log import DecisionLog
        from serving.event_log import EventLog
        from serving.identity import IdentityMap
        from serving.online_features import OnlineFeatures

        self.settings = settings = load_settings()
        self.catalog = load_catalog(settings.catalog_path)
        self.online = OnlineFeatures(settings)
        self.identity = IdentityMap.load(settings.raw_dir / "identity.parquet")
        self.log = DecisionLog.open(settings)
        self.contacts = ContactUpdater(
            self.online.store,
            EventLog(self.log).keep,
            self.identity.resolve,
            timeout_s=min(2.0, settings.request_timeout_s / 2),
            lock=settings.data_dir / "contact_state.lock",
        )
        # Feature reads run here so a slow or hung online store can be timed out (-> fallback).
        self.reader = ThreadPoolExecutor(max_workers=4, thread_name_prefix="online-read")
        self.timeout_s = settings.online_timeout_ms / 1000
        self._swap(load_champion(settings))
        self.online.read("warm-up")  # the first Feast read loads its caches
        # Feast's import leaves a huge heap; freeze it so full GC passes stay short.
        gc.collect()
        gc.freeze()
        # Feature reads and log commits run in threads that give the GIL back while they wait: the
        # default 5 ms switch interval makes each of them queue behind the event loop for up to 5 ms.
        sys.setswitchinterval(0.0005)
        self.watcher = ChampionWatcher(settings, self.model_version, self._swap)
        _running["service"] = self
        log.info("serving %s v%s", settings.model_name, self.model_version)

    def _swap(self, champion: Any) -> None:
        """Build the decider for a champion, warm it up, then switch to it with one assignment."""
        from serving.decider import Decider
        from serving.metrics import CHAMPION_SWAPS

        decider = Decider(
            self.catalog,
            champion.model,
            champion.version,
            self.online.read,
            self.settings.epsilon,
            resolve=self.identity.resolve,
            default_time_zone=self.settings.default_time_zone,
            contributions=self.settings.reason_contributions,
        )
        decider.draft("warm-up", {}, datetime.now(UTC))  # first prediction and contributions
        if getattr(self, "decider", None) is not None:
            CHAMPION_SWAPS.inc()
        self.decider, self.model_version, self.loaded_at = decider, champion.version, datetime.now(UTC)

    # -- endpoints ---------------------------------------------------------------------------------

    @bentoml.api(route="/decide", input_spec=DecideRequest)
    async def decide(self, **request: object) -> DecideResponse:
        """Decide the next contact for one customer. The decision is logged durably before the answer."""
        from serving.decision_log import decision_row, insert_decisions
        from serving.metrics import LATENCY

        started = time.perf_counter()
        body = DecideRequest.model_validate(request, context=self._bounds())
        decider = self.decider  # one model for the whole request, even if a new champion arrives
        now = body.at or datetime.now(UTC)
        cid = decider.customer_id(body)
        features, cause = await self._features(cid, now)
        if features is None:
            answer = decider.fallback(cid, now, cause, cold_start=cid is None or cause.startswith("no features"))
            row = decision_row(answer, body.context)
            await self._logged(lambda tx: insert_decisions(tx, [row]))
        else:
            draft = decider.draft(cid, features, now)
            answer = await self._logged(lambda tx: self._finish(tx, decider, draft, body.context))
        self._count([dict(answer)], cause)
        LATENCY.labels("decide").observe(time.perf_counter() - started)
        return answer

    # The answers go out as JSON written from plain dicts (output_spec documents them): validating 1,000
    # answers into models and serialising the models again cost ~10 ms per batch.
    @bentoml.api(route="/decide/batch", input_spec=DecideBatchRequest, output_spec=DecideBatchResponse)
    async def decide_batch(self, **request: object) -> Response:
        """Decide for many customers at once (at most NEXTTOUCH_BATCH_LIMIT): one feature read, one model call,
        one log commit."""
        from pydantic_core import to_json

        from serving.decision_log import decision_rows, insert_decisions
        from serving.metrics import LATENCY

        started = time.perf_counter()
        body = DecideBatchRequest.model_validate(request, context=self._bounds())
        limit = self.settings.batch_limit
        if len(body.customers) > limit:
            raise TooLarge(
                f"{len(body.customers)} customers is over the batch limit of {limit} (NEXTTOUCH_BATCH_LIMIT); "
                "split the batch"
            )
        decider = self.decider
        now = body.at or datetime.now(UTC)
        cids = [decider.customer_id(c) for c in body.customers]
        loop = asyncio.get_running_loop()
        read_s = self.settings.request_timeout_s / 2  # a whole batch's read gets half the request's time
        try:  # an unresolved source key reads as "": nobody has that id
            read = loop.run_in_executor(self.reader, self.online.read_many, [c or "" for c in cids], now)
            frame, known = await asyncio.wait_for(read, read_s)
        except Exception as exc:  # store slow or down: every answer is the rule-based fallback, never a 500
            log.warning("online batch read failed: %s", type(exc).__name__)
            slow = isinstance(exc, TimeoutError)
            cause = (
                f"online store did not answer within {read_s:g} s"
                if slow
                else f"online store error ({type(exc).__name__})"
            )
            answers = [decider.fallback_row(c, now, cause, cold_start=False) for c in cids]
        else:
            cause = ""
            answers = await loop.run_in_executor(self.reader, self._batch, decider, cids, frame, known, now)
        rows = decision_rows(answers, body.context)
        await self._logged(lambda tx: insert_decisions(tx, rows))
        self._count(answers, cause)
        LATENCY.labels("decide_batch").observe(time.perf_counter() - started)
        return Response(to_json({"decisions": answers}), media_type="application/json")

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest)
    async def feedback(self, **request: object) -> FeedbackResponse:
        """The outcome of a decision. Repeating it changes nothing; an unknown id is a 404."""
        from serving.decision_log import Feedback, feedback_op

        body = FeedbackRequest.model_validate(request, context=self._bounds())
        result = await self._logged(feedback_op(body.decision_id, float(body.outcome), body.at))
        if result is Feedback.UNKNOWN:
            raise NotFound(f"no decision {body.decision_id!r}")
        if result is Feedback.CONFLICT:
            raise Conflict(f"decision {body.decision_id!r}: {result.value}")
        if result is Feedback.BEFORE_DECISION:
            raise InvalidArgument(f"at: {result.value} {body.decision_id!r}")
        return FeedbackResponse(decision_id=body.decision_id, status=result.value)

    @bentoml.api(route="/events", input_spec=EventsRequest)
    def events(self, **request: object) -> EventsResponse:
        """Touch events in real time: committed for the nightly job, contact state updated online now."""
        body = EventsRequest.model_validate(request, context=self._bounds())
        try:
            return self.contacts.apply(body)
        except BentoMLException:
            raise
        except Exception as exc:  # the event log could not commit: nothing was kept, say so
            log.error("event log unavailable: %s", type(exc).__name__)
            raise ServiceUnavailable("the event log is unavailable; no event was kept") from exc

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            model_name=self.settings.model_name,
            champion_alias=self.settings.champion_alias,
            model_version=self.model_version,
            loaded_at=self.loaded_at,
            feature_service=self.settings.feature_service,
            inputs=self.decider.model.inputs,
            catalog=[a.model_dump(mode="json", exclude_none=True) for a in self.catalog.actions],
        )

    # -- helpers -----------------------------------------------------------------------------------

    def _bounds(self) -> dict[str, TimeBounds]:
        """Validation context: the window around the server's clock that request times must fall in."""
        return TimeBounds.now_for(self.settings).context()

    async def _features(self, cid: str | None, now: datetime) -> tuple[dict | None, str]:
        """The customer's features, or None and the cause of the fallback. Never raises."""
        if cid is None:
            return None, "unknown source key"
        loop = asyncio.get_running_loop()
        try:
            features = await asyncio.wait_for(
                loop.run_in_executor(self.reader, self.online.read, cid, now), self.timeout_s
            )
        except TimeoutError:
            return None, f"online store did not answer within {self.settings.online_timeout_ms} ms"
        except Exception as exc:  # store down or broken: a rule-based answer, never a 500
            log.warning("online read failed: %s", type(exc).__name__)
            return None, f"online store error ({type(exc).__name__})"
        return (features, "") if features is not None else (None, "no features for this customer")

    def _batch(
        self, decider: Any, cids: list[str | None], frame: Any, known: Any, now: datetime
    ) -> list[dict[str, Any]]:
        """The vectorised policy for a batch (runs in a thread: it takes capacity through the log)."""
        import numpy as np

        from serving import capacity

        known = known & np.array([c is not None for c in cids])

        def take(action: Any, features: Any, at: datetime, want: int) -> int:
            period, bucket = capacity.period_of(action.capacity, at), capacity.bucket_of(action.capacity, features)
            return self.log.run(lambda tx: capacity.take(tx, action, period, bucket, want))

        return decider.decide_rows(cids, frame, known, now, take)

    @staticmethod
    def _finish(tx: Any, decider: Any, draft: Any, context: dict[str, str]) -> DecideResponse:
        """Inside the log transaction: capacity for the chosen action, then the decision row."""
        from serving import capacity
        from serving.decision_log import decision_row, insert_decisions

        def take(action: Any, features: Any, at: datetime, want: int) -> int:
            period, bucket = capacity.period_of(action.capacity, at), capacity.bucket_of(action.capacity, features)
            return capacity.take(tx, action, period, bucket, want)

        answer = decider.finish(draft, take)
        insert_decisions(tx, [decision_row(answer, context)])
        return answer

    async def _logged(self, op: Any) -> Any:
        """Run ``op`` in the next decision-log commit; a log that cannot commit is a 503, not an answer."""
        try:
            return await self.log.arun(op)
        except BentoMLException:
            raise
        except Exception as exc:
            log.error("decision log unavailable: %s", type(exc).__name__)
            raise ServiceUnavailable("the decision log is unavailable; no decision was made") from exc

    @staticmethod
    def _count(answers: list[dict[str, Any]], cause: str) -> None:
        """Metrics for answers given together, as dicts of their fields (one increment per label set: each
        costs a lock and a write)."""
        from collections import Counter

        from serving.metrics import CAPACITY_REFUSED, DECISIONS, FALLBACKS

        decisions: Counter[tuple[str, str]] = Counter()
        fallbacks: Counter[str] = Counter()
        refused: Counter[str] = Counter()
        for a in answers:
            decisions[a["action"], "true" if a["fallback"] else "false"] += 1
            if a["fallback"]:
                fallbacks[_cause_label(cause, a)] += 1
            refused.update(r.split(" ", 1)[0] for r in a["reasons"] if "no capacity left" in r)
        for labels, n in decisions.items():
            DECISIONS.labels(*labels).inc(n)
        for label, n in fallbacks.items():
            FALLBACKS.labels(label).inc(n)
        for label, n in refused.items():
            CAPACITY_REFUSED.labels(label).inc(n)


def _cause_label(cause: str, answer: dict[str, Any]) -> str:
    if answer["customer_id"] is None:
        return "unknown_source_key"
    if answer["cold_start"]:
        return "unknown_customer"
    return "store_timeout" if "did not answer" in cause else "store_error"


# Outermost first: the key before anything is read, then the request limits (headers, media type, body size),
# then one documented error body.
NextTouch.add_asgi_middleware(ApiKeyMiddleware)
NextTouch.add_asgi_middleware(RequestLimitMiddleware)
NextTouch.add_asgi_middleware(ErrorBodyMiddleware)
# /docs.json with the API key, every error answer and GET /model documented (BentoML's omits them).
NextTouch.add_asgi_middleware(OpenApiMiddleware, spec=lambda: NextTouch.openapi_spec.asdict())
# GET /model: a plain route beside the API (BentoML APIs are POST); mounted passively, so only /model matches.
NextTouch.mount_asgi_app(Starlette(routes=[Route("/model", _model_info, methods=["GET"])]), path="/")
