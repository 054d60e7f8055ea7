"""Locks every replica shares, on the real Redis (127.0.0.1:6379, db 9) and PostgreSQL (127.0.0.1:5432): processes
with project and lock directories of their own, as on two hosts, exclude each other."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from nexttouch.catalog import Catalog
from nexttouch.locks import redis_client
from nexttouch.settings import Settings, load_settings
from serving.server import PROJECT_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.service]

REDIS = "127.0.0.1:6379,db=9"


def _child(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def _expect(child: subprocess.Popen[str], word: str) -> str:
    line = child.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith(word), f"child said {line!r}, exit {child.poll()}"
    return line


@pytest.mark.parametrize("store", ["postgres", "redis"])
def test_a_retrain_on_another_host_is_refused_while_one_runs(
    store: str, tmp_path: Path, catalog: Catalog, request: pytest.FixtureRequest
) -> None:
    from nexttouch.jobs.nightly import RetrainLocked, retrain, retrain_lock

    shared = (
        {"decision_log_url": request.getfixturevalue("database")}
        if store == "postgres"
        else {"online_store": "redis", "redis_url": REDIS, "model_name": f"locktest_{uuid.uuid4().hex[:8]}"}
    )
    here, there = tmp_path / "host-a", tmp_path / "host-b"  # no directory in common
    holder = _child(
        "import sys\n"
        "from nexttouch.jobs.nightly import retrain_lock\n"
        "from nexttouch.settings import load_settings\n"
        f"with retrain_lock(load_settings(project_dir={str(there)!r}, **{shared!r})):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    try:
        _expect(holder, "held")
        settings = load_settings(project_dir=here, **shared)
        with pytest.raises(RetrainLocked, match=rf"another retrain is running \(.*pid {holder.pid}\b"):
            retrain(settings, catalog, date(2026, 11, 1))
        assert not (here / "data" / "retrain").exists()  # refused before any step
        if store == "postgres":  # PostgreSQL drops the lock with the session of a killed holder
            holder.send_signal(signal.SIGKILL)
        else:  # the Redis lock expires a minute after a killed holder: here the holder lets go
            holder.communicate("done\n", timeout=10)
        holder.wait(timeout=10)
        deadline = time.monotonic() + 10
        while True:
            try:
                with retrain_lock(settings):
                    break
            except RetrainLocked:
                assert time.monotonic() < deadline, "the lock outlived its holder"
                time.sleep(0.2)
    finally:
        holder.kill()
        holder.wait()


def test_the_redis_lock_names_its_holder_and_stays_held_past_its_expiry_while_renewed() -> None:
    from nexttouch.locks import Locked, redis_client, redis_lock

    client = redis_client(REDIS)
    name = f"nexttouch:test:{uuid.uuid4().hex[:8]}"
    with redis_lock(client, name, ttl_s=0.6, renew=True):
        time.sleep(1.5)  # more than twice the expiry
        with pytest.raises(Locked, match=r"held by pid \d+ on .* since "), redis_lock(client, name, ttl_s=0.6):
            pass
    with redis_lock(client, name, ttl_s=0.6):  # released at the end of the block
        pass
    assert client.exists(name) == 0


@pytest.fixture
def redis_repo(built: Settings, tmp_path: Path) -> Iterator[Settings]:
    """The built project's feature repo and offline data with a Redis online store of its own (db 9)."""
    from features.pipeline import feast_apply
    from nexttouch.jobs.project import copy_feature_repo

    project = tmp_path / "repo"
    copy_feature_repo(project)
    shutil.copytree(built.offline_dir, project / "data" / "offline")
    (project / "data" / "feast").mkdir(parents=True)
    yaml = project / "features" / "feature_store.redis.yaml"
    name = f"nt_locks_{uuid.uuid4().hex[:10]}"
    yaml.write_text(yaml.read_text().replace("project: nexttouch", f"project: {name}"))
    settings = load_settings(project_dir=project, online_store="redis", redis_url=REDIS)
    feast_apply(settings)
    yield settings
    client = redis_client(REDIS)
    for key in client.scan_iter(match=f"*{name}*".encode()):  # Feast's keys end with the project's name
        client.delete(key)


def test_contact_state_updates_from_two_hosts_never_lose_each_others_touches(
    redis_repo: Settings, tmp_path: Path
) -> None:
    """Host B reads a customer's contact state, then writes it back slowly (a slow network); host A posts a
    touch of another tier in between. A lock per host lets B's write drop A's touch; a shared one cannot."""
    from nexttouch.api import EventsRequest
    from nexttouch.feature_store import open_store
    from serving.contact_state import ContactUpdater

    customer = f"LOCK{uuid.uuid4().hex[:8]}"
    low_at = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
    tech_at = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    refs = ["contact_state:last_tech_at", "contact_state:last_low_at"]
    host_b = _child(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from nexttouch.api import EventsRequest\n"
        "from nexttouch.feature_store import open_store\n"
        "from nexttouch.settings import load_settings\n"
        "from serving.contact_state import ContactUpdater\n"
        f"store = open_store(load_settings(project_dir={str(redis_repo.project_dir)!r}, online_store='redis', "
        f"redis_url={REDIS!r}))\n"
        "class SlowNetwork:\n"
        "    config, project = store.config, store.project\n"
        "    def get_online_features(self, **kw):\n"
        "        out = store.get_online_features(**kw)\n"
        "        print('read', flush=True)\n"
        "        return out\n"
        "    def push(self, *args, **kw):\n"
        "        time.sleep(3)\n"
        "        store.push(*args, **kw)\n"
        f"store.get_online_features(features={refs!r}, entity_rows=[{{'customer_id': 'warm-up'}}])\n"
        f"updater = ContactUpdater(SlowNetwork(), lambda e: None, lambda _s, key: key, timeout_s=30, retry_s=600, "
        f"lock=Path({str(tmp_path / 'host-b.lock')!r}))\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        f"event = {{'event_id': 'b-1', 'customer_id': {customer!r}, 'occurred_at': {low_at.isoformat()!r}, "
        "'touch_type': 'event_attended'}\n"
        "answer = updater.apply(EventsRequest.model_validate({'events': [event]}))\n"
        "print('done', answer.online_update_deferred, flush=True)\n"
        "updater.close()\n"
    )
    store = open_store(redis_repo)
    store.get_online_features(features=refs, entity_rows=[{"customer_id": "warm-up"}])
    kept: list[pd.DataFrame] = []
    lock_a = tmp_path / "host-a.lock"
    host_a = ContactUpdater(store, kept.append, lambda _s, key: key, timeout_s=20, retry_s=600, lock=lock_a)
    try:
        _expect(host_b, "ready")
        host_b.stdin.write("go\n")  # type: ignore[union-attr]
        host_b.stdin.flush()  # type: ignore[union-attr]
        _expect(host_b, "read")  # B has read the state and is writing it back
        event = {"event_id": "a-1", "customer_id": customer, "occurred_at": tech_at, "touch_type": "app_session"}
        answer = host_a.apply(EventsRequest.model_validate({"events": [event]}))
        assert answer.online_update_deferred is False
        assert _expect(host_b, "done").split() == ["done", "False"]
        host_b.wait(timeout=30)
    finally:
        host_a.close()
        host_b.kill()
        host_b.wait()
    state = store.get_online_features(features=refs, entity_rows=[{"customer_id": customer}]).to_dict()
    got = {k: pd.Timestamp(state[k][0]) if state[k][0] is not None else None for k in ("last_tech_at", "last_low_at")}
    assert got == {"last_tech_at": pd.Timestamp(tech_at), "last_low_at": pd.Timestamp(low_at)}, json.dumps(
        {k: str(v) for k, v in got.items()}
    )
