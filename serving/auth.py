"""API keys with scopes for every route but health and the API description.

Each client has its own keys, stored as SHA-256 hashes in the keys file (``NEXTTOUCH_API_KEYS_FILE``,
default ``data/api_keys.toml``), each with the scopes it grants:

    [[key]]
    client = "crm"
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    scopes = ["feedback"]

A client may have several keys at once (rotation: add the new one, move the client over, remove the old
one); the file is read again when it changes, without a restart. ``NEXTTOUCH_API_KEY`` (or the project's
key file) stays valid as client ``default`` with every scope. Keys are random, so one SHA-256 suffices
(no password stretching); the given key is hashed and compared in constant time. A refusal names the
missing scope; logs name the client, never the key nor its hash.

The OpenAPI page (``/``, ``/docs.json`` and its static files) stays open: it describes the API and holds
no data, and a browser cannot send a header to read it.

``python -m serving.auth new <client> <scope>...`` makes a key, appends its hash to the keys file and prints
the key once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexttouch.settings import Settings, load_settings

OPEN = frozenset({"/livez", "/readyz", "/healthz", "/", "/docs.json"})
OPEN_PREFIX = "/static_content/"
HEADER = b"x-api-key"
SCOPES = ("decide", "feedback", "admin")
# Routes outside this map (GET /model, /metrics, anything new) need ``admin``: closed unless granted.
ROUTE_SCOPES = {"/decide": "decide", "/decide/batch": "decide", "/feedback": "feedback", "/events": "feedback"}
RELOAD_EVERY_S = 1.0

log = logging.getLogger("nexttouch.serving")


@dataclass(frozen=True)
class Client:
    name: str
    scopes: frozenset[str]


def digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def read_keys(path: Path) -> dict[bytes, Client]:
    """The keys file as {sha256 digest: client}; {} when there is none. Raises ValueError for a bad entry."""
    if not path.is_file():
        return {}
    entries = tomllib.loads(path.read_text()).get("key", [])
    keys: dict[bytes, Client] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: key #{i + 1}"
        unknown = set(entry.get("scopes", [])) - set(SCOPES)
        if not entry.get("client") or not entry.get("scopes") or unknown:
            raise ValueError(f"{where}: needs a client and scopes among {', '.join(SCOPES)} (got {sorted(unknown)})")
        try:
            hashed = bytes.fromhex(entry["sha256"])
        except (KeyError, ValueError):
            raise ValueError(f"{where}: sha256 must be the key's SHA-256 in hex") from None
        if len(hashed) != 32:
            raise ValueError(f"{where}: sha256 must be the key's SHA-256 in hex")
        keys[hashed] = Client(str(entry["client"]), frozenset(entry["scopes"]))
    return keys


def new_key(path: Path, client: str, scopes: list[str]) -> str:
    """A new random key for ``client``: its hash appended to the keys file (mode 600); the key returned."""
    unknown = set(scopes) - set(SCOPES)
    if not scopes or unknown:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}")
    key = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    entry = f'\n[[key]]\nclient = {json.dumps(client)}\nsha256 = "{digest(key).hex()}"\nscopes = {json.dumps(scopes)}\n'
    with path.open("a") as out:
        out.write(entry)
    read_keys(path)  # the file is still valid
    return key


class Keyring:
    """The valid keys: the keys file (read again when it changes) and the service key, if any."""

    def __init__(self, path: Path | None, service_key: str | None) -> None:
        self.path = path
        self._service = {digest(service_key): Client("default", frozenset(SCOPES))} if service_key else {}
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._keys = self._load()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path) if self.path else None
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size) if st else None

    def _load(self) -> dict[bytes, Client]:
        self._stamp = self._file_stamp()
        return {**(read_keys(self.path) if self.path else {}), **self._service}

    def __len__(self) -> int:
        return len(self._keys)

    def client(self, key: bytes) -> Client | None:
        now = time.monotonic()
        if now - self._checked > RELOAD_EVERY_S:
            with self._lock:
                self._checked = now
                if self._file_stamp() != self._stamp:
                    try:
                        self._keys = self._load()
                        log.info("API keys reloaded from %s: %d keys", self.path, len(self._keys))
                    except (OSError, ValueError) as exc:  # a half-written file: keep the keys in force
                        log.error("API keys file not reloaded, the previous keys stay in force: %s", exc)
        hashed = digest(key)
        for known, client in self._keys.items():  # every entry compared: the time does not tell which matched
            if hmac.compare_digest(hashed, known):
                return client
        return None


def keys_file(settings: Settings) -> Path:
    return settings.api_keys_file or settings.data_dir / "api_keys.toml"


class ApiKeyMiddleware:
    """ASGI middleware: a request without a valid ``X-API-Key`` gets 401, one whose key lacks the route's scope
    403; neither reaches the API."""

    def __init__(self, app: Any, key: str | None = None) -> None:
        self.app = app
        settings = load_settings()
        self.keys = Keyring(keys_file(settings), key if key is not None else settings.service_key())
        if not len(self.keys):
            raise RuntimeError(
                f"no API key: set NEXTTOUCH_API_KEY, write one to {settings.api_key_file} or add clients' keys "
                f"to {keys_file(settings)} (python -m serving.auth new <client> <scope>...); "
                "the service does not run without one"
            )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN or scope["path"].startswith(OPEN_PREFIX):
            await self.app(scope, receive, send)
            return
        keys = [v for k, v in scope["headers"] if k == HEADER]
        given = keys[0] if len(keys) == 1 else b""
        client = self.keys.client(given) if given else None
        need = ROUTE_SCOPES.get(scope["path"], "admin")
        if client is not None and need in client.scopes:
            scope.setdefault("state", {})["client"] = client.name
            await self.app(scope, receive, send)
            return
        route = f"{scope.get('method', '')} {scope['path']}"
        if client is not None:
            status, error = 403, f"the key of client {client.name!r} lacks the scope {need!r} that {route} needs"
            log.warning("refused %s: client %s lacks scope %s", route, client.name, need)
        elif len(keys) > 1:  # which one counts would depend on the proxy or framework in between: refused
            status, error = 401, "several X-API-Key headers: send exactly one"
        else:
            status, error = 401, "missing API key" if not given else "wrong API key"
            log.warning("refused %s: %s", route, error)
        body = json.dumps({"error": error}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'ApiKey header="X-API-Key"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "new":
        print(f"usage: python -m serving.auth new <client> <scope>... (scopes: {', '.join(SCOPES)})", file=sys.stderr)
        return 2
    path = keys_file(load_settings())
    try:
        key = new_key(path, argv[1], argv[2:])
    except ValueError as exc:
        print(f"serving.auth: {exc}", file=sys.stderr)
        return 2
    print(
        f"# client {argv[1]} ({', '.join(argv[2:])}): hash added to {path}; the key itself is not stored:",
        file=sys.stderr,
    )
    print(key)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
