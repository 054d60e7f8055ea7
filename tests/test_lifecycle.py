"""The server's life under a process manager: signals reach the whole tree, in-flight requests finish
(for a bounded time), and nothing is left running or holding the port afterwards, whoever goes away first."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from nexttouch.settings import Settings, load_settings
from serving import server
from serving.server import PROJECT_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.service]

KEY = "lifecycle-key-0123456789"
SLOW = "tests.slow_service:Slow"


def _port_is_free(port: int) -> bool:
    """Nobody accepts on the port and a new server could listen on it."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: closed connections may linger
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _gone(tree: list[psutil.Process], within_s: float) -> list[psutil.Process]:
    """The processes of ``tree`` still running after ``within_s`` (none expected)."""
    _dead, alive = psutil.wait_procs(tree, timeout=within_s)
    return alive


def _slow_settings(tmp_path: Path, port: int, **more: object) -> Settings:
    project = tmp_path / "project"
    project.mkdir()
    return load_settings(project_dir=project, port=port, workers=2, **more)


def _post_slow(port: int, seconds: float, out: dict[float, object]) -> threading.Thread:
    def call() -> None:
        try:
            r = httpx.post(
                f"http://127.0.0.1:{port}/slow", json={"seconds": seconds}, headers={"X-API-Key": KEY}, timeout=90
            )
            out[seconds] = r.status_code
        except httpx.TransportError as exc:
            out[seconds] = type(exc).__name__

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_sigint_drains_in_flight_requests_for_a_bounded_time_and_stops_every_worker(tmp_path: Path) -> None:
    settings = _slow_settings(tmp_path, 3031, shutdown_timeout_s=4)
    proc = server.start(settings, tmp_path / "serve.log", api_key=KEY, service=SLOW)
    tree = _tree(proc.pid)
    assert len(tree) >= 4  # supervisor, bentoml's arbiter, two workers
    answers: dict[float, object] = {}
    try:
        calls = [_post_slow(3031, 2.0, answers), _post_slow(3031, 60.0, answers)]
        time.sleep(1.0)  # both in flight
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=30) == 0
        took = time.monotonic() - started
    finally:
        server.stop(proc)
    for call in calls:
        call.join(timeout=30)
    assert answers[2.0] == 200  # in flight when the signal came: finished
    assert answers[60.0] != 200  # longer than the drain allows: cut off, not waited for
    assert 1.0 < took < 4 + server.KILL_MARGIN_S + 3
    assert _gone(tree, 5) == []
    assert _port_is_free(3031)


def test_sigterm_to_nexttouch_serve_leaves_no_process_and_frees_the_port(built: Settings, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "NEXTTOUCH_PROJECT_DIR": str(built.project_dir),
        "NEXTTOUCH_API_KEY": KEY,
        "NEXTTOUCH_WORKERS": "1",  # two workers' stop is checked above; one keeps this start short
    }
    nexttouch = str(Path(sys.executable).with_name("nexttouch"))
    with (tmp_path / "serve.log").open("wb") as log:
        wrapper = subprocess.Popen(
            [nexttouch, "serve", "--port", "3032"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert wrapper.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "not ready"
            try:
                if httpx.get("http://127.0.0.1:3032/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        tree = _tree(wrapper.pid)
        assert len(tree) >= 3  # nexttouch serve, bentoml's arbiter, its worker
        wrapper.send_signal(signal.SIGTERM)  # what systemd, Kubernetes and `docker stop` send
        assert wrapper.wait(timeout=30) == 0
        assert _gone(tree, 5) == []
        assert _port_is_free(3032)
    finally:
        if wrapper.poll() is None:
            for p in _tree(wrapper.pid):
                p.kill()


def test_a_server_whose_project_directory_vanished_exits(tmp_path: Path) -> None:
    settings = _slow_settings(tmp_path, 3033)
    proc = server.start(settings, tmp_path / "serve.log", api_key=KEY, service=SLOW)
    tree = _tree(proc.pid)
    try:
        shutil.rmtree(settings.project_dir)
        assert proc.wait(timeout=20) == 1
    finally:
        server.stop(proc)
    assert "project directory" in (tmp_path / "serve.log").read_text()
    assert _gone(tree, 5) == []
    assert _port_is_free(3033)


def test_a_test_process_killed_outright_leaves_no_server(tmp_path: Path) -> None:
    """No clean-up runs in a process killed by SIGKILL: the server notices its starter is gone."""
    settings = _slow_settings(tmp_path, 3034)
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from nexttouch.settings import load_settings\n"
        "from serving import server\n"
        f"s = load_settings(project_dir={str(settings.project_dir)!r}, port=3034, workers=2)\n"
        f"proc = server.start(s, Path({str(tmp_path / 'serve.log')!r}), api_key={KEY!r}, service={SLOW!r})\n"
        "print(proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    runner = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    tree: list[psutil.Process] = []
    try:
        line = runner.stdout.readline()  # type: ignore[union-attr]
        assert line.strip().isdigit(), (tmp_path / "serve.log").read_text()[-3000:]
        tree = _tree(int(line))
        assert len(tree) >= 4
        runner.kill()
        runner.wait()
        assert _gone(tree, 20) == []
        assert _port_is_free(3034)
    finally:
        runner.kill()
        for p in tree:  # a failed run must not leave its server behind either
            if p.is_running():
                p.kill()
