"""Run a real `bentoml serve` process of the decision service under a supervisor that owns its whole tree.

proc = server.start(settings, log_file, api_key="...")   # returns once /readyz answers 200
...                                                        # call http://{host}:{port} with X-API-Key
server.stop(proc)                                          # drains, then no process of the tree is left

`nexttouch serve` and ``server.start`` both run :func:`serve_forever`: it starts `bentoml serve` in a
session of its own and, on SIGTERM or SIGINT, lets in-flight requests finish for at most
``shutdown_timeout_s`` and then kills whatever is left of the tree. BentoML starts its workers in sessions
of their own, so a signal to the server's process group alone can leave a worker answering on the port.
The supervisor also stops the tree when the project directory vanishes, and (``server.start``) when the
process that started it is gone, so an interrupted test run leaves no server behind.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from pydantic import SecretStr

from nexttouch.settings import Settings, load_settings
from nexttouch.telemetry import TELEMETRY_OFF
from serving.auth import keys_file

SERVICE = "serving.service:NextTouch"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
WATCH_EVERY_S = 0.5
KILL_MARGIN_S = 5.0  # after the drain: time for the server to exit on its own before it is killed

log = logging.getLogger("nexttouch.serving")


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
    if api_key is None and not keys_file(settings).is_file():
        raise ValueError(
            f"the service needs an API key: set NEXTTOUCH_API_KEY, run `nexttouch demo` once (it writes "
            f"{settings.api_key_file}) or add clients' keys to {keys_file(settings)} "
            "(python -m serving.auth new <client> <scope>...)"
        )
    if api_key is not None:
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
        "--timeout-graceful-shutdown",  # each worker finishes its in-flight requests for at most this long
        str(settings.shutdown_timeout_s),
    ]
    return cmd, env


def serve_forever(settings: Settings, service: str = SERVICE, parent: int | None = None) -> int:
    """`nexttouch serve`: the service in the foreground until SIGTERM/SIGINT.

    Exit codes: 0 after a signal, 1 when the project directory vanished or ``parent`` (a pid) exited,
    2 without an API key, otherwise the server's own exit code.
    """
    try:
        cmd, env = _command(settings, service=service)
    except ValueError as exc:
        print(f"nexttouch serve: {exc}", file=sys.stderr)
        return 2
    stop_on: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        stop_on.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, request_stop)
    # A session of its own: Ctrl-C in a terminal reaches this supervisor only, which stops the tree in order.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_term_when_parent_dies)
    project = settings.project_dir.resolve()
    tree: list[psutil.Process] = []
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(timeout=WATCH_EVERY_S)
            _kill(tree, wait_s=2.0)  # workers it left behind (psutil refuses to signal a reused pid)
            log.warning("bentoml serve exited by itself with %s", code)
            return code
        tree = _tree(proc.pid) or tree
        if stop_on:
            why, code = signal.Signals(stop_on[0]).name, 0
        elif not project.is_dir():
            why, code = f"project directory {project} is gone", 1
        elif parent is not None and os.getppid() != parent:
            why, code = f"the process that started it ({parent}) is gone", 1
        else:
            continue
        log.warning("stopping the service (%s): draining for at most %ss", why, settings.shutdown_timeout_s)
        stop_tree(proc, settings.shutdown_timeout_s + KILL_MARGIN_S)
        log.warning("service stopped")
        return code


def _term_when_parent_dies() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_tree(proc: subprocess.Popen[bytes], grace_s: float, kill_wait_s: float = 2.0) -> None:
    """SIGTERM to ``proc`` (BentoML's arbiter stops its workers, which drain); whatever of its tree is
    still alive after ``grace_s`` is killed, and any process of the tree left ``kill_wait_s`` later."""
    tree = _tree(proc.pid)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("service did not stop within %.0fs: killed", grace_s)
            tree = list({p.pid: p for p in tree + _tree(proc.pid)}.values())  # workers started since
            proc.kill()
            proc.wait()
    _kill(tree, wait_s=kill_wait_s)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _kill(procs: list[psutil.Process], wait_s: float) -> None:
    """Give ``procs`` ``wait_s`` to exit, then SIGKILL the rest and reap them."""
    _gone, alive = psutil.wait_procs(procs, timeout=wait_s) if wait_s else ([], procs)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


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
    The returned process is the supervisor; it stops the server by itself when this process exits.
    """
    import httpx

    _cmd, env = _command(settings, api_key, service)
    supervisor = [sys.executable, "-m", "serving.server", "--service", service, "--parent", str(os.getpid())]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            supervisor, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
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


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Stop a service started by :func:`start`: its supervisor drains and stops the tree; anything of the
    tree still alive after ``timeout_s`` is killed."""
    stop_tree(proc, timeout_s, kill_wait_s=5.0)


def main(argv: list[str] | None = None) -> int:
    """The supervisor as ``server.start`` runs it: settings from the NEXTTOUCH_* environment."""
    parser = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__.split("\n")[0])
    parser.add_argument("--service", default=SERVICE, help="BentoML service to run (module:Class).")
    parser.add_argument("--parent", type=int, default=None, help="Stop the service when this pid is gone.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve_forever(load_settings(), args.service, args.parent)


if __name__ == "__main__":
    sys.exit(main())
