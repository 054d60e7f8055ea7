"""The request timeout: a 504 after the timeout as BentoML answers it, and no timer left behind by answered requests."""

import asyncio
import json

from serving.timeout import CancellingTimeoutMiddleware


async def _call(app, path: str = "/") -> tuple[int, bytes]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": "http", "path": path, "method": "POST", "headers": []}, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def _answer(scope, receive, send) -> None:
    if scope["path"] == "/slow":
        await asyncio.sleep(1)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_answered_requests_leave_no_timer_and_slow_ones_get_a_504() -> None:
    async def run() -> None:
        app = CancellingTimeoutMiddleware(_answer, timeout=0.2)
        loop = asyncio.get_running_loop()
        for _ in range(200):
            assert await _call(app) == (200, b"ok")
        live = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        assert live == []  # BentoML's own middleware would hold 200 timers for the whole timeout
        status, body = await _call(app, "/slow")
        assert status == 504
        assert json.loads(body) == {"error": "Not able to process the request in 0.2 seconds"}

    asyncio.run(run())


def test_the_service_installs_it_into_bentoml() -> None:
    from bentoml._internal.server.http import traffic

    import serving.service  # noqa: F401  (installs at import)

    assert traffic.TimeoutMiddleware is CancellingTimeoutMiddleware
