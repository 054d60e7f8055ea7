"""The BentoML decision service: `bentoml serve serving.service:NextTouch`.

Configuration comes from the same settings object as every other stage (NEXTTOUCH_* env).
"""

from __future__ import annotations

import gc
import logging
import os

import bentoml

from nexttouch.api import DecideRequest, DecideResponse, EventsRequest, EventsResponse
from nexttouch.catalog import load_catalog
from nexttouch.settings import load_settings

for _var in ("BENTOML_DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
    os.environ.setdefault(_var, "true")
os.environ.setdefault("FEAST_USAGE", "False")

log = logging.getLogger("nexttouch.serving")


@bentoml.service(
    name="nexttouch",
    # BentoML keeps each request's timer alive for the whole timeout: keep it short.
    traffic={"timeout": int(os.environ.get("NEXTTOUCH_REQUEST_TIMEOUT_S", "5"))},
    workers=1,
)
class NextTouch:
    """Decides the next contact: push, event invite, advisor call or none."""

    def __init__(self) -> None:
        from serving.champion import load_champion
        from serving.contact_state import ContactUpdater
        from serving.decider import Decider
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
        self.contacts = ContactUpdater(online.store, settings.data_dir / "inbox", identity.resolve)
        self.decider.decide(DecideRequest(customer_id="warm-up"))  # first Feast read loads caches
        # Feast's import leaves a huge heap; freeze it so full GC passes stay short.
        gc.collect()
        gc.freeze()
        log.info("serving %s v%s", settings.model_name, champion.version)

    @bentoml.api(route="/decide", input_spec=DecideRequest)
    def decide(self, **request: object) -> DecideResponse:
        """Decide the next contact for one customer."""
        return self.decider.decide(DecideRequest.model_validate(request))

    @bentoml.api(route="/events", input_spec=EventsRequest)
    def events(self, **request: object) -> EventsResponse:
        """Touch events in real time: kept for the nightly ingest, contact state updated online now."""
        return self.contacts.apply(EventsRequest.model_validate(request))
