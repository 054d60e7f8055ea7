"""Start and stop a real `bentoml serve` process of the decision service."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from nexttouch.settings import Settings

SERVICE = "serving.service:NextTouch"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _command(settings: Settings) -> tuple[list[str], dict[str, str]]:
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    env = {
        **os.environ,
        "NEXTTOUCH_PROJECT_DIR": str(settings.project_dir.resolve()),
        "NEXTTOUCH_REQUEST_TIMEOUT_S": str(settings.request_timeout_s),
        "BENTOML_DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "FEAST_USAGE": "False",
    }
    if settings.catalog_path:
        env["NEXTTOUCH_CATALOG_PATH"] = str(settings.catalog_path.resolve())
    cmd = [
        bentoml,
        "serve",
        SERVICE,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--working-dir",
        str(PROJECT_ROOT),
    ]
    return cmd, env


def serve_forever(settings: Settings) -> int:
    cmd, env = _command(settings)
    return subprocess.call(cmd, env=env)


def start(settings: Settings, log_file: Path, timeout_s: float = 180.0) -> subprocess.Popen[bytes]:
    """Start the service in the background and wait until it answers /readyz."""
    cmd, env = _command(settings)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{settings.host}:{settings.port}/readyz"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode}; see {log_file}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise TimeoutError(f"service not ready after {timeout_s:.0f}s; see {log_file}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and its workers (they share its process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
