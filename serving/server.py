"""Start and stop a real `bentoml serve` process of the decision service.

proc = server.start(settings, log_file, api_key="...")   # returns once /readyz answers 200
...                                                        # call http://{host}:{port} with X-API-Key
server.stop(proc)                                          # server and workers (one process group)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from pydantic import SecretStr

from nexttouch.settings import Settings
from nexttouch.telemetry import TELEMETRY_OFF

SERVICE = "serving.service:NextTouch"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _command(
    settings: Settings, api_key: str | None = None, service: str = SERVICE
) -> tuple[list[str], dict[str, str]]:
    """`bentoml serve` and its environment: every setting passed on as NEXTTOUCH_*, so the server
    sees exactly the settings object it was started with."""
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    env = {
        **os.environ,
        **TELEMETRY_OFF,
        "OMP_NUM_THREADS": "1",  # one scoring thread per worker (see serving/service.py)
    }
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, Path):
            value = value.resolve()
        elif isinstance(value, dict | list | tuple):
            value = json.dumps(value)  # pydantic-settings reads complex values as JSON
        if value is not None:
            env[f"NEXTTOUCH_{name.upper()}"] = str(value)
    api_key = api_key or settings.service_key()
    if api_key is None:
        raise ValueError(
            f"the service needs an API key: set NEXTTOUCH_API_KEY, or run `nexttouch demo` once (it writes "
            f"{settings.api_key_file})"
        )
    env["NEXTTOUCH_API_KEY"] = api_key  # in the environment, never on the command line
    cmd = [
        bentoml,
        "serve",
        service,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--working-dir",
        str(PROJECT_ROOT),
    ]
    return cmd, env


def serve_forever(settings: Settings) -> int:
    """`nexttouch serve`: the service in the foreground; exit code 2 without an API key."""
    try:
        cmd, env = _command(settings)
    except ValueError as exc:
        print(f"nexttouch serve: {exc}", file=sys.stderr)
        return 2
    return subprocess.call(cmd, env=env)


def start(
    settings: Settings,
    log_file: Path,
    timeout_s: float = 180.0,
    api_key: str | None = None,
    service: str = SERVICE,
) -> subprocess.Popen[bytes]:
    """Start the service in the background and wait until it answers /readyz.

    ``api_key`` (default: settings.api_key / NEXTTOUCH_API_KEY) is the key clients must send as
    ``X-API-Key``; ``settings.workers`` worker processes are started. Stop it with ``stop(proc)``.
    ``service`` is another BentoML service to run the same way (benchmarks' no-op baseline).
    """
    cmd, env = _command(settings, api_key, service)
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
    """Stop the server and all its workers.

    BentoML starts workers in sessions of their own, so signalling the server's process group can
    leave a worker answering on the port: the whole process tree is collected first and every
    process left after the graceful stop is killed.
    """
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
    _gone, alive = psutil.wait_procs(tree, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=10)
