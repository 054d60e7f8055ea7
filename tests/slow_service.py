"""A BentoML service whose one route takes as long as asked: in flight for sure when the server is stopped."""

from __future__ import annotations

import asyncio

import bentoml

from nexttouch.settings import load_settings
from serving.auth import ApiKeyMiddleware


@bentoml.service(name="nexttouch-slow", traffic={"timeout": 30}, workers=load_settings().workers)
class Slow:
    @bentoml.api(route="/slow")
    async def slow(self, seconds: float) -> dict:
        await asyncio.sleep(seconds)
        return {"slept": seconds}


Slow.add_asgi_middleware(ApiKeyMiddleware)
