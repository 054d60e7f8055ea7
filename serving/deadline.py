"""The deadline of the request being served, for work that must give up before the client is answered 504.

The request timeout (serving/timeout.py) sets it when a request starts; tasks and threads started for the
request inherit it (context variables). The decision log reads it: an operation still waiting for the
log's write lock when its request is about to time out fails with a 503 instead of committing later.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

_DEADLINE: ContextVar[float | None] = ContextVar("request_deadline", default=None)


def start(timeout_s: float) -> Token[float | None]:
    """The current request must be answered within ``timeout_s`` (``time.monotonic`` based)."""
    return _DEADLINE.set(time.monotonic() + timeout_s)


def reset(token: Token[float | None]) -> None:
    _DEADLINE.reset(token)


def current() -> float | None:
    """The current request's deadline (``time.monotonic``), or None outside a request."""
    return _DEADLINE.get()
