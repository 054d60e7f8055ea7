"""The BentoML decision service: `bentoml serve serving.service:NextTouch`.

Configuration comes from the same settings object as every other stage (NEXTTOUCH_* env).
"""

from __future__ import annotations

import gc
import logging
import os
from http import HTTPStatus

import bentoml
from bentoml.exceptions import BentoMLException, NotFound

from nexttouch.api import (
    DecideRequest,
    DecideResponse,
    EventsRequest,
    EventsResponse,
    FeedbackRequest,
    FeedbackResponse,
)
from nexttouch.catalog import load_catalog
from nexttouch.settings import load_settings

for _var in ("BENTOML_DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
    os.environ.setdefault(_var, "true")
os.environ.setdefault("FEAST_USAGE", "False")

log = logging.getLogger("nexttouch.serving")


class Conflict(BentoMLException):
    error_code = HTTPStatus.CONFLICT


@bentoml.service(
    name="nexttouch",
    # BentoML keeps each request's timer alive for the whole timeout: keep it short.
    traffic={"timeout": load_settings().request_timeout_s},
    workers=1,
)
class NextTouch:
    """Decides the next contact: push, event invite, advisor call or none."""

    def __init__(self) -> None:
        from serving.champion import load_champion
        from serving.contact_state import ContactUpdater
        from serving.decider import Decider
        from serving.decision_log import DecisionLog
        from serving.identity import IdentityMap
        from serving.online_features import OnlineFeatures

        settings = load_settings()
        catalog = load_catalog(settings.catalog_path)
        champion = load_champion(settings)
        online = OnlineFeatures(settings)
        identity = IdentityMap.load(settings.raw_dir / "identity.parquet")
        self.decider = Decider(
            catalog, champion.model, champion.version, online.read, settings.epsilon, resolve=identity.resolve
        )
        self.log = DecisionLog(settings.decision_log)
        self.contacts = ContactUpdater(online.store, settings.data_dir / "inbox", identity.resolve)
        self.decider.decide(DecideRequest(customer_id="warm-up"))  # first Feast read loads caches
        # Feast's import leaves a huge heap; freeze it so full GC passes stay short.
        gc.collect()
        gc.freeze()
        log.info("serving %s v%s", settings.model_name, champion.version)

    @bentoml.api(route="/decide", input_spec=DecideRequest)
    def decide(self, **request: object) -> DecideResponse:
        """Decide the next contact for one customer."""
        body = DecideRequest.model_validate(request)
        answer = self.decider.decide(body)
        self.log.record(answer, body.context)  # durable before the answer leaves
        return answer

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest)
    def feedback(self, **request: object) -> FeedbackResponse:
        """The outcome of a decision. Repeating it changes nothing; an unknown id is a 404."""
        from serving.decision_log import Feedback

        body = FeedbackRequest.model_validate(request)
        result = self.log.feedback(body.decision_id, float(body.outcome), body.at)
        if result is Feedback.UNKNOWN:
            raise NotFound(f"no decision {body.decision_id!r}")
        if result is Feedback.CONFLICT:
            raise Conflict(f"decision {body.decision_id!r}: {result.value}")
        return FeedbackResponse(decision_id=body.decision_id, status=result.value)

    @bentoml.api(route="/events", input_spec=EventsRequest)
    def events(self, **request: object) -> EventsResponse:
        """Touch events in real time: kept for the nightly ingest, contact state updated online now."""
        return self.contacts.apply(EventsRequest.model_validate(request))
