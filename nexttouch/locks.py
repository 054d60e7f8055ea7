"""Exclusive locks: an ``flock`` for one host, or one that every replica shares (PostgreSQL, Redis).

- :func:`file_lock`: the embedded default. The kernel drops it when the process dies.
- :func:`postgres_lock`: a session advisory lock on a connection of its own, held while the block runs.
  PostgreSQL drops it when the session ends, so a killed holder never blocks the next one.
- :func:`redis_lock`: a key set only if absent, with an expiry (a killed holder blocks for at most
  ``ttl_s``), released only by its holder (redis-py's ``Lock``), optionally kept alive while the block runs.

Each raises :class:`Locked` naming the holder when the lock cannot be had (at once, or within ``wait_s``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class Locked(RuntimeError):
    """Someone else holds the lock: ``who`` (as they wrote it when taking it) and ``what`` lock."""

    def __init__(self, who: str, what: str) -> None:
        super().__init__(f"held by {who} ({what})")
        self.who, self.what = who, what


def holder() -> str:
    """Who takes a lock, as a refused caller will read it."""
    return f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC).isoformat(timespec='seconds')}"


@contextmanager
def file_lock(path: Path, wait: bool = False) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``; without ``wait`` a held lock raises Locked at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            raise Locked(handle.read().strip() or "an unknown process", f"lock {path}") from None
        handle.truncate(0)
        handle.write(holder() + "\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def postgres_lock(url: str, name: str) -> Iterator[None]:
    """PostgreSQL's session advisory lock ``name`` in the database of ``url``, or Locked at once."""
    import psycopg

    key = advisory_key(name)
    # The holder is written in application_name, which a refused caller reads from pg_stat_activity.
    who = f"nexttouch {name}: pid {os.getpid()} on {socket.gethostname()}"[:63]  # PostgreSQL keeps 63 bytes
    with psycopg.connect(url, autocommit=True, application_name=who) as conn:
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:  # type: ignore[index]
            row = conn.execute(
                "SELECT a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
                ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
            ).fetchone()
            who = f"{row[0]} from {row[1] or 'a local socket'} since {row[2]:%Y-%m-%dT%H:%M:%S%z}" if row else ""
            raise Locked(who or "another session", f"PostgreSQL advisory lock {name!r}")
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def redis_client(connection_string: str) -> Any:
    """A redis-py client for Feast's connection string ``host:port[,db=N][,password=...][,ssl=true]``."""
    import redis

    address, *options = connection_string.split(",")
    host, _, port = address.rpartition(":")
    kwargs: dict[str, Any] = {}
    for option in options:
        key, _, value = option.partition("=")
        key = key.strip()
        if key == "db":
            kwargs["db"] = int(value)
        elif key in ("password", "username"):
            kwargs[key] = value
        elif key == "ssl":
            kwargs["ssl"] = value.strip().lower() == "true"
    return redis.Redis(host=host or "127.0.0.1", port=int(port or 6379), socket_timeout=10, **kwargs)


@contextmanager
def redis_lock(client: Any, name: str, ttl_s: float, wait_s: float = 0.0, renew: bool = False) -> Iterator[None]:
    """Redis lock ``name`` with expiry ``ttl_s``; waits up to ``wait_s`` for it, else Locked.

    ``renew`` keeps the expiry ahead while the block runs (long jobs); without it the block must end within
    ``ttl_s`` or another holder may come in.
    """
    token = f"{holder()} [{uuid.uuid4().hex[:8]}]"  # what a refused caller reads: who holds it
    lock = client.lock(name, timeout=ttl_s, blocking=wait_s > 0, blocking_timeout=wait_s or None, thread_local=False)
    if not lock.acquire(token=token):
        who = client.get(name)
        raise Locked(who.decode() if who else "a holder that just let go", f"Redis lock {name!r}")
    stop = threading.Event()
    keeper = None
    if renew:

        def keep_alive() -> None:
            while not stop.wait(ttl_s / 3):
                lock.reacquire()

        keeper = threading.Thread(target=keep_alive, name=f"lock-{name}", daemon=True)
        keeper.start()
    try:
        yield
    finally:
        stop.set()
        if keeper is not None:
            keeper.join()
        lock.release()
