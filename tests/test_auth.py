"""Per-client API keys with scopes: stored hashed, several valid at once, rotated without a restart; refusals
name the missing scope and logs name the client, never the key."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from nexttouch.settings import load_settings
from serving import auth, server
from serving.auth import ApiKeyMiddleware, digest, read_keys

KEYS = {"app-old": "k-app-old-1111", "app-new": "k-app-new-2222", "crm": "k-crm-3333", "ops": "k-ops-4444"}


def _entry(client: str, key: str, scopes: list[str]) -> str:
    return f'[[key]]\nclient = "{client}"\nsha256 = "{digest(key).hex()}"\nscopes = {scopes!r}\n\n'.replace("'", '"')


def _write_keys(path: Path, *names: str) -> None:
    scopes = {"app-old": ["decide"], "app-new": ["decide"], "crm": ["feedback"], "ops": ["admin", "decide"]}
    clients = {"app-old": "app", "app-new": "app", "crm": "crm", "ops": "ops"}
    path.write_text("".join(_entry(clients[n], KEYS[n], scopes[n]) for n in names))


async def _ok(request: Request) -> JSONResponse:
    return JSONResponse({"path": request.url.path, "client": request.scope.get("state", {}).get("client")})


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("NEXTTOUCH_PROJECT_DIR", str(tmp_path))
    monkeypatch.delenv("NEXTTOUCH_API_KEY", raising=False)
    _write_keys(_keys_path(tmp_path), *KEYS)
    routes = [Route(p, _ok, methods=["POST"]) for p in ("/decide", "/decide/batch", "/feedback", "/events")]
    app = Starlette(routes=[*routes, Route("/model", _ok, methods=["GET"]), Route("/readyz", _ok)])
    return TestClient(ApiKeyMiddleware(app))


def _keys_path(project: Path) -> Path:
    path = project / "data" / "api_keys.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _call(client: TestClient, method: str, path: str, key: str | None) -> httpx.Response:
    return client.request(method, path, headers={"X-API-Key": key} if key else {}, json={})


def test_each_key_opens_its_scopes_only_and_a_refusal_names_the_missing_scope(
    client: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexttouch.serving")
    for name in ("app-old", "app-new"):  # two keys of one client, both valid: rotation without downtime
        r = _call(client, "POST", "/decide", KEYS[name])
        assert (r.status_code, r.json()["client"]) == (200, "app")
        r = _call(client, "POST", "/events", KEYS[name])
        assert r.status_code == 403
        assert r.json() == {"error": "the key of client 'app' lacks the scope 'feedback' that POST /events needs"}
    assert [_call(client, "POST", p, KEYS["crm"]).status_code for p in ("/events", "/feedback")] == [200, 200]
    r = _call(client, "POST", "/decide/batch", KEYS["crm"])
    assert r.status_code == 403 and "lacks the scope 'decide'" in r.json()["error"]
    assert _call(client, "GET", "/model", KEYS["ops"]).status_code == 200
    r = _call(client, "GET", "/model", KEYS["app-new"])
    assert r.status_code == 403 and "lacks the scope 'admin' that GET /model needs" in r.json()["error"]
    assert _call(client, "POST", "/decide", "k-nobody").json() == {"error": "wrong API key"}
    assert _call(client, "POST", "/decide", None).status_code == 401
    assert _call(client, "GET", "/readyz", None).status_code == 200  # health stays open
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "client app lacks scope feedback" in logged and "client crm lacks scope decide" in logged
    stored = _keys_path(tmp_path).read_text()
    for key in (*KEYS.values(), "k-nobody"):
        assert key not in logged and digest(key).hex() not in logged
        assert key not in stored  # only hashes on disk


def test_a_key_removed_from_the_file_stops_working_without_a_restart(client: TestClient, tmp_path: Path) -> None:
    assert _call(client, "POST", "/decide", KEYS["app-old"]).status_code == 200
    _write_keys(_keys_path(tmp_path), "app-new", "crm", "ops")  # the old key of app retired
    time.sleep(auth.RELOAD_EVERY_S + 0.1)
    assert _call(client, "POST", "/decide", KEYS["app-old"]).status_code == 401
    assert _call(client, "POST", "/decide", KEYS["app-new"]).status_code == 200
    _keys_path(tmp_path).write_text("[[key]]\nclient = ")  # half written: the keys in force stay
    time.sleep(auth.RELOAD_EVERY_S + 0.1)
    assert _call(client, "POST", "/decide", KEYS["app-new"]).status_code == 200


def test_new_makes_a_key_and_stores_only_its_hash(tmp_path: Path) -> None:
    env = {**os.environ, "NEXTTOUCH_PROJECT_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "serving.auth", "new", "crm", "feedback"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    key = out.stdout.strip()
    path = _keys_path(tmp_path)
    assert len(key) >= 40 and key not in path.read_text()
    assert read_keys(path) == {digest(key): auth.Client("crm", frozenset({"feedback"}))}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    bad = subprocess.run([*cmd[:-1], "everything"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "scopes must be among decide, feedback, admin" in bad.stderr


@pytest.mark.slow
@pytest.mark.service
def test_a_real_server_refuses_a_key_without_the_scope_and_logs_the_client(tmp_path: Path) -> None:
    project = tmp_path / "project"
    _write_keys(_keys_path(project), "app-new", "ops")
    settings = load_settings(project_dir=project, port=3035)
    log_file = tmp_path / "serve.log"
    proc = server.start(settings, log_file, api_key="k-default-5555", service="tests.slow_service:Slow")
    try:
        url = "http://127.0.0.1:3035/slow"
        ok = httpx.post(url, json={"seconds": 0}, headers={"X-API-Key": KEYS["ops"]}, timeout=10)
        refused = httpx.post(url, json={"seconds": 0}, headers={"X-API-Key": KEYS["app-new"]}, timeout=10)
        default = httpx.post(url, json={"seconds": 0}, headers={"X-API-Key": "k-default-5555"}, timeout=10)
    finally:
        server.stop(proc)
    assert (ok.status_code, refused.status_code, default.status_code) == (200, 403, 200)
    assert refused.json() == {"error": "the key of client 'app' lacks the scope 'admin' that POST /slow needs"}
    text = log_file.read_text()
    assert "client app lacks scope admin" in text
    assert not any(k in text for k in (*KEYS.values(), "k-default-5555"))


def test_a_keys_file_alone_is_enough_to_start_the_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEXTTOUCH_API_KEY", raising=False)
    settings = load_settings(project_dir=tmp_path)
    with pytest.raises(ValueError, match="needs an API key"):
        server._command(settings)
    _write_keys(_keys_path(tmp_path), "crm")
    _cmd, env = server._command(settings)
    assert "NEXTTOUCH_API_KEY" not in env
