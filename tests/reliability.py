"""Helpers of the reliability tests: a private copy of the built project, a service to kill, our own Redis."""

from __future__ import annotations

import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from pydantic import SecretStr

from nexttouch.personal_data import phone_numbers
from nexttouch.settings import Settings
from serving import server
from tests.conftest import free_port

# What personal data looks like in text: an e-mail address, or a phone number written as people write them
# (an optional +, 3-5 groups of digits split by spaces, dots, dashes or brackets, 9+ digits in all).
EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
PHONE = re.compile(rb"(?<![\w.:-])\+?\(?\d{2,4}\)?(?:[ .-]\(?\d{2,4}\)?){2,4}(?![\w.:-])")


def clone_project(src: Settings, dest: Path, **overrides: object) -> Settings:
    """A private copy of a built project, so a test may kill, corrupt or retrain it without touching others.

    MLflow stores absolute artifact locations: they are rewritten to the copy. The Feast registry still
    reads the original's offline parquet (read only).
    """
    old = str(src.project_dir.resolve())
    shutil.copytree(old, dest, ignore=shutil.ignore_patterns("decisions.db*", "inbox"))
    with sqlite3.connect(dest / "mlruns" / "mlflow.db") as db:
        for table, column in (
            ("experiments", "artifact_location"),
            ("runs", "artifact_uri"),
            ("logged_models", "artifact_location"),
            ("model_versions", "storage_location"),
            ("model_versions", "source"),
        ):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, str(dest.resolve())))
    return src.model_copy(update={"project_dir": dest, **overrides})


@dataclass
class Service:
    """A real `bentoml serve` of a project, with an API key, that tests may kill -9 and restart."""

    settings: Settings
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    key: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    def start(self) -> Service:
        self.starts += 1
        self.settings = self.settings.model_copy(update={"port": free_port(), "api_key": SecretStr(self.key)})
        self.proc = server.start(self.settings, self.log_dir / f"serve-{self.starts}.log")
        return self

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=kw.pop("timeout", 10), **kw)

    def kill9(self) -> None:
        """SIGKILL to the whole process tree at once: no clean-up runs anywhere.

        BentoML's workers run in sessions of their own (not the server's process group), so the tree is
        walked: killing the group alone leaves a worker serving on the inherited socket.
        """
        assert self.proc is not None
        tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        for p in tree:
            p.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        _, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive, f"survived kill -9: {alive}"

    def stop(self) -> None:
        if self.proc is not None:
            server.stop(self.proc)

    def kill9_under_load(self, customers: list[str], rate: float, seed: int) -> list[str]:
        """Drive the /decide, /events, /feedback mix, kill -9 the service 4 s in; the decision ids received."""
        import threading

        from benchmarks import soak

        results: list[soak.SoakResult] = []
        load = threading.Thread(
            target=lambda: results.append(soak.run(self.url, 8.0, rate, customers, api_key=self.key, seed=seed))
        )
        load.start()
        time.sleep(4.0)
        self.kill9()
        load.join()
        received = results[0].decision_ids
        assert len(received) >= 5 and results[0].errors  # decisions before the kill, refused connections after
        return received


@dataclass
class Redis:
    """Our own redis-server on a free port (the shared one on 6379 is never touched), saved to its own dir."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Redis:
        self.directory.mkdir(parents=True, exist_ok=True)
        cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)]
        cmd += ["--save", "", "--appendonly", "no", "--protected-mode", "yes"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self._cli("ping") != "PONG":
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self, save: bool = True) -> None:
        """Shut down (saving the data first, so a restart comes back with the same features)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._cli("shutdown", "save" if save else "nosave")
        self.proc.wait(timeout=10)

    def _cli(self, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()

    def dump_values(self) -> bytes:
        """Every key and value, as bytes to scan (a test-sized store only)."""
        import redis

        r = redis.Redis(host="127.0.0.1", port=self.port)
        chunks = []
        for key in r.scan_iter(count=1000):
            chunks.append(key)
            kind = r.type(key)
            if kind == b"hash":
                for k, v in r.hgetall(key).items():
                    chunks += [k, v]
            elif kind == b"string":
                chunks.append(r.get(key) or b"")
        return b"\n".join(chunks)


def integrity_ok(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def personal_data(blob: bytes) -> list[bytes]:
    """E-mail addresses and phone numbers found in raw bytes (a database file, a parquet file, values)."""
    # E-mails are searched around each '@' only: a regex over megabytes of text without one is quadratic.
    emails = [m.group() for i in _at_signs(blob) if (m := EMAIL.search(blob, max(0, i - 64), i + 256))]
    phones = [m for m in PHONE.findall(blob) if sum(c.isdigit() for c in m.decode()) >= 9]  # not a date
    # The service's own detector too: national and international numbers without separators.
    phones += [m.encode("latin-1") for m in phone_numbers(blob.decode("latin-1"))]
    return list(dict.fromkeys(emails + phones))


def _at_signs(blob: bytes) -> list[int]:
    found, i = [], blob.find(b"@")
    while i != -1:
        found.append(i)
        i = blob.find(b"@", i + 1)
    return found
