"""The BentoML decision service: `bentoml serve serving.service:NextTouch`.

Configuration comes from the same settings object as every other stage (NEXTTOUCH_* env).
The decision endpoints are async: while one request waits for the decision-log commit, the next
ones are decided and join the same commit (group commit, see serving/decision_log.py).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound
from pydantic_core import to_json
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nexttouch.api import (
    CustomerRef,
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
from nexttouch.catalog import load_catalog
from nexttouch.engine import DecisionEngine
from nexttouch.engine.affinity import prior_sds
from nexttouch.engine.answer import Answer
from nexttouch.settings import load_settings
from nexttouch.telemetry import switch_off
from serving import affinity
from serving.auth import ApiKeyMiddleware
from serving.body_limit import RequestLimitMiddleware
from serving.decision_log import DecisionLog, Feedback, Tx, feedback_op
from serving.decisions import Decisions, LogUnavailable, UnknownSystem
from serving.error_bodies import ErrorBodyMiddleware, install_refusal_logging
from serving.identity import IdentityMap
from serving.metrics import CHAMPION_SWAPS, LATENCY
from serving.openapi import OpenApiMiddleware
from serving.timeout import install as install_cancelling_timeout
from serving.tokens import IdTokens, KeySetUnavailable, TokenRefused, TokenUnusable

switch_off()
# One LightGBM/OpenMP thread per worker: workers already use the cores, and OpenMP threads waking up
# for a 4-row prediction cost more than the prediction (set before lightgbm is imported).
os.environ.setdefault("OMP_NUM_THREADS", "1")

if TYPE_CHECKING:
    from serving.champion import Champion

log = logging.getLogger("nexttouch.serving")


class Conflict(BentoMLException):
    error_code = HTTPStatus.CONFLICT


class TooLarge(BentoMLException):
    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Unavailable(Exception):
    """Nothing was kept, through no fault of the request: a 503 that says so (``_unavailable``)."""


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
        # Feast, MLflow and LightGBM load in the worker only: BentoML's supervisor imports this module too.
        from serving.champion import ChampionWatcher, load_champion
        from serving.contact_state import ContactUpdater
        from serving.event_log import EventLog
        from serving.online_features import OnlineFeatures

        self.settings = settings = load_settings()
        self.catalog = load_catalog(settings.catalog_path)
        self.online = OnlineFeatures(settings)
        self.identity = IdentityMap.load(settings.raw_dir / "identity.parquet")
        self.tokens = IdTokens.from_settings(settings)
        if self.tokens is not None:
            self._check_tokens(self.tokens)
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
        self.decisions: Decisions | None = None
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

    def _swap(self, champion: Champion) -> None:
        """Build the engine for a champion, warm it up, then switch to it with one assignment."""
        engine = DecisionEngine(
            self.catalog,
            champion.model,
            champion.version,
            self.settings.epsilon,
            default_time_zone=self.settings.default_time_zone,
            contributions=self.settings.reason_contributions,
            prior_sd=prior_sds(self.settings.affinity_prior_sd, self.catalog.names, champion.model.affinity_sd),
            sample=self.settings.affinity_sampling,
        )
        warm_up = engine.draft(["warm-up"], {}, datetime.now(UTC))  # first prediction and contributions
        engine.answers(warm_up, [""])
        if self.decisions is None:
            self.decisions = Decisions(
                engine,
                self.online,
                self.identity.resolve,
                self.log,
                self.reader,
                read_timeout_s=self.settings.online_timeout_ms / 1000,
                batch_read_timeout_s=self.settings.request_timeout_s / 2,  # a batch's read: half the request's time
                systems=self.identity.systems,
                tokens=self.tokens,
            )
        else:
            CHAMPION_SWAPS.inc()
            self.decisions.engine = engine
        self.model_version, self.loaded_at = champion.version, datetime.now(UTC)

    def _check_tokens(self, tokens: IdTokens) -> None:
        """Read the CIAM's keys now, so the first token does not wait for them; say what cannot work."""
        if not tokens.keys.refresh():
            log.error("ID tokens get 503 until the CIAM's keys (%s) can be read", tokens.keys.shown)
        if tokens.system not in self.identity.systems:
            log.warning(
                "ID tokens are refused: the identity map holds no key of their source system %r",
                tokens.system,
            )

    # -- endpoints ---------------------------------------------------------------------------------

    @bentoml.api(route="/decide", input_spec=DecideRequest, output_spec=DecideResponse)
    async def decide(self, **request: object) -> DecideResponse | Response:
        """Decide the next contact for one customer. The decision is logged durably before the answer."""
        started = time.perf_counter()
        body = DecideRequest.model_validate(request, context=self._bounds())
        try:
            (answer,) = await self._decide([body], body.at, body.context)
        except TokenRefused as exc:
            return _token_refused(exc, "/decide")
        except Unavailable as exc:
            return _unavailable(exc, "/decide")
        LATENCY.labels("decide").observe(time.perf_counter() - started)
        return DecideResponse.model_validate(answer)

    # The answers go out as JSON written from plain dicts (output_spec documents them): validating 1,000
    # answers into models and serialising the models again cost ~10 ms per batch.
    @bentoml.api(route="/decide/batch", input_spec=DecideBatchRequest, output_spec=DecideBatchResponse)
    async def decide_batch(self, **request: object) -> Response:
        """Decide for many customers at once (at most NEXTTOUCH_BATCH_LIMIT): one feature read, one model call,
        one log commit."""
        started = time.perf_counter()
        body = DecideBatchRequest.model_validate(request, context=self._bounds())
        limit = self.settings.batch_limit
        if len(body.customers) > limit:
            raise TooLarge(
                f"{len(body.customers)} customers is over the batch limit of {limit} (NEXTTOUCH_BATCH_LIMIT); "
                "split the batch"
            )
        try:
            answers = await self._decide(body.customers, body.at, body.context, body.explain)
        except TokenRefused as exc:
            return _token_refused(exc, "/decide/batch")
        except Unavailable as exc:
            return _unavailable(exc, "/decide/batch")
        LATENCY.labels("decide_batch").observe(time.perf_counter() - started)
        return Response(to_json({"decisions": answers}), media_type="application/json")

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest, output_spec=FeedbackResponse)
    async def feedback(self, **request: object) -> FeedbackResponse | Response:
        """The outcome of a decision. Repeating it changes nothing; an unknown id is a 404."""
        body = FeedbackRequest.model_validate(request, context=self._bounds())
        record = feedback_op(body.decision_id, float(body.outcome), body.at)
        prior_sd = self._prior_sd()

        def op(tx: Tx) -> Feedback:
            result = record(tx)
            if result is Feedback.RECORDED and prior_sd is not None:  # the customer's next decision learns from it
                affinity.learn(tx, self.catalog, body.decision_id, float(body.outcome), prior_sd)
            return result

        try:
            result = await self._logged(op)
        except Unavailable as exc:
            return _unavailable(exc, "/feedback")
        if result is Feedback.UNKNOWN:
            raise NotFound(f"no decision {body.decision_id!r}")
        if result is Feedback.CONFLICT:
            raise Conflict(f"decision {body.decision_id!r}: {result.value}")
        if result is Feedback.BEFORE_DECISION:
            raise InvalidArgument(f"at: {result.value} {body.decision_id!r}")
        return FeedbackResponse(decision_id=body.decision_id, status=result.value)

    @bentoml.api(route="/events", input_spec=EventsRequest, output_spec=EventsResponse)
    def events(self, **request: object) -> EventsResponse | Response:
        """Touch events in real time: committed for the nightly job, contact state updated online now."""
        body = EventsRequest.model_validate(request, context=self._bounds())
        try:
            answer = self.contacts.apply(body)
            self._learn_from(body)
            return answer
        except BentoMLException:
            raise
        except Exception as exc:  # the event log could not commit: nothing was kept, say so
            log.error("event log unavailable: %s", type(exc).__name__)
            return _unavailable(Unavailable("the event log is unavailable; no event was kept"), "/events")

    def _learn_from(self, body: EventsRequest) -> None:
        """Decision-linked success touches update their customer's posterior now (per-customer learning on)."""
        prior_sd = self._prior_sd()
        linked = [
            (
                e.decision_id,
                e.customer_id or self.identity.resolve(e.source.system, e.source.key),
                e.touch_type,
                e.occurred_at,
            )
            for e in body.events
            if e.decision_id is not None and (e.customer_id or e.source)
        ]
        if prior_sd is not None and linked:
            self.log.run(lambda tx: affinity.attribute(tx, self.catalog, linked, prior_sd))

    def _prior_sd(self) -> np.ndarray | None:
        """The serving champion's prior sd per catalog action (None: per-customer learning off)."""
        assert self.decisions is not None
        return self.decisions.engine.prior_sd

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            model_name=self.settings.model_name,
            champion_alias=self.settings.champion_alias,
            model_version=self.model_version,
            loaded_at=self.loaded_at,
            feature_service=self.settings.feature_service,
            inputs=self.decisions.engine.model.inputs if self.decisions else [],
            catalog=[a.model_dump(mode="json", exclude_none=True) for a in self.catalog.actions],
        )

    # -- helpers -----------------------------------------------------------------------------------

    def _bounds(self) -> dict[str, TimeBounds]:
        """Validation context: the window around the server's clock that request times must fall in."""
        return TimeBounds.now_for(self.settings).context()

    async def _decide(
        self, refs: Sequence[CustomerRef], at: datetime | None, context: dict[str, str], explain: bool = True
    ) -> list[Answer]:
        assert self.decisions is not None
        try:
            answers = await self.decisions.decide(refs, at, context, explain)
        except UnknownSystem as exc:
            raise InvalidArgument(f"source.system: {exc}") from exc
        except TokenUnusable as exc:
            raise InvalidArgument(f"id_token: {exc}") from None
        except KeySetUnavailable as exc:
            log.error("ID token not checked: %s", exc)
            raise Unavailable("the CIAM's keys cannot be read; the ID token was not checked") from None
        except LogUnavailable as exc:
            log.error("decision log unavailable: %s", exc)
            raise Unavailable("the decision log is unavailable; no decision was made") from exc
        return answers

    async def _logged(self, op: Any) -> Any:
        """Run ``op`` in the next decision-log commit; a log that cannot commit is a 503, not an answer."""
        try:
            return await self.log.arun(op)
        except BentoMLException:
            raise
        except Exception as exc:
            log.error("decision log unavailable: %s", type(exc).__name__)
            raise Unavailable("the decision log is unavailable; no decision was made") from exc


def _unavailable(exc: Unavailable, route: str) -> Response:
    """A 503 that says what was not kept: BentoML words the body of every 5xx raised as an exception the same."""
    log.info("POST %s answered 503: %s", route, exc)
    body = json.dumps({"error": f"{exc}; retry later"})
    return Response(body, status_code=503, media_type="application/json", headers={"Retry-After": "1"})


def _token_refused(exc: TokenRefused, route: str) -> Response:
    """A 401 that says why: BentoML replaces the message of a 401 raised as an exception."""
    log.info("POST %s refused with 401: id_token %s", route, exc.check)  # the failed check, never the token
    body = json.dumps({"error": f"id_token refused: {exc}"})
    headers = {"WWW-Authenticate": 'IdToken field="id_token"'}
    return Response(body, status_code=401, media_type="application/json", headers=headers)


# Outermost first: the key before anything is read, then the request limits (headers, media type, body size),
# then one documented error body.
NextTouch.add_asgi_middleware(ApiKeyMiddleware)
NextTouch.add_asgi_middleware(RequestLimitMiddleware)
NextTouch.add_asgi_middleware(ErrorBodyMiddleware)
# /docs.json with the API key, every error answer and GET /model documented (BentoML's omits them).
NextTouch.add_asgi_middleware(OpenApiMiddleware, spec=lambda: NextTouch.openapi_spec.asdict())
# GET /model: a plain route beside the API (BentoML APIs are POST); mounted passively, so only /model matches.
NextTouch.mount_asgi_app(Starlette(routes=[Route("/model", _model_info, methods=["GET"])]), path="/")
