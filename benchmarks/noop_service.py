"""Benchmark-only baseline: a BentoML service that validates a /decide body and answers at once.

Same request model, API key middleware and worker count as the real service, so the ratio
real / no-op in benchmarks/bench_serve.py is what the decision itself costs (features, model,
policy, durable log).
"""

from __future__ import annotations

import bentoml

from nexttouch.api import DecideRequest
from nexttouch.settings import load_settings
from serving.auth import ApiKeyMiddleware


@bentoml.service(name="nexttouch-noop", traffic={"timeout": 5}, workers=load_settings().workers)
class Noop:
    @bentoml.api(route="/noop", input_spec=DecideRequest)
    async def noop(self, **request: object) -> dict:
        body = DecideRequest.model_validate(request)
        return {"customer_id": body.customer_id, "action": "none"}


Noop.add_asgi_middleware(ApiKeyMiddleware)
