"""The production profile for real: the same feature repo with Redis (127.0.0.1:6379) online."""

import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from nexttouch.catalog import Catalog
from nexttouch.settings import Settings
from tests.conftest import END

pytestmark = [pytest.mark.slow, pytest.mark.service]


@pytest.fixture
def redis_project(project: Settings) -> Settings:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
    yaml = project.feature_repo / "feature_store.redis.yaml"
    # A project name of its own, so parallel runs never share keys.
    yaml.write_text(yaml.read_text().replace("project: nexttouch", f"project: nt_test_{uuid.uuid4().hex[:10]}"))
    return project.model_copy(update={"online_store": "redis"})


def test_materialize_push_and_read_back_from_redis(redis_project: Settings, catalog: Catalog) -> None:
    from features.pipeline import build_offline, feast_apply, materialize
    from nexttouch.api import EventsRequest
    from nexttouch.feature_store import open_store
    from nexttouch.ingest import ingest
    from nexttouch.simulate import write_brand
    from serving.contact_state import ContactUpdater
    from serving.online_features import OnlineFeatures

    s = redis_project
    write_brand(s, catalog, END, s.landing_dir)
    ingest(s, catalog, s.landing_dir, now=END)
    build_offline(s, END, s.days)
    feast_apply(s)
    store = open_store(s)
    assert store.config.online_store.type == "redis"
    try:
        materialize(s, END)
        online = OnlineFeatures(s)
        snapshots = pd.read_parquet(s.offline_dir / "touch_history.parquet")
        latest = snapshots[snapshots["event_timestamp"] == snapshots["event_timestamp"].max()].set_index("customer_id")
        for cid in ("C0000001", "C0000007", "C0000100"):
            got = online.read(cid)
            assert got is not None
            for name in ("tech_in_30d", "low_in_90d", "omo_online_to_offline_90d"):
                assert got[name] == pytest.approx(latest.loc[cid, name]), (cid, name)
            last = latest.loc[cid, "last_tech_at"]
            assert (pd.Timestamp(got["last_tech_at"]) if got["last_tech_at"] else pd.NaT) == (
                last.floor("s") if pd.notna(last) else pd.NaT
            )
        assert online.read("nobody") is None

        # A touch posted to the service goes to Redis through the Feast push source and reads back at once.
        called_at = datetime.now(UTC) - timedelta(hours=1)
        kept: list[pd.DataFrame] = []
        updater = ContactUpdater(online.store, kept.append, lambda _system, key: key)  # knows every customer
        event = {"event_id": "redis-push-1", "occurred_at": called_at, "customer_id": "C0000007"}
        answer = updater.apply(EventsRequest.model_validate({"events": [{**event, "touch_type": "advisor_call"}]}))
        updater.close()
        assert (answer.customers_updated, answer.online_update_deferred, len(kept)) == (1, False, 1)
        got = online.read("C0000007")
        assert pd.Timestamp(got["last_high_at"]) == pd.Timestamp(called_at).floor("s")
        assert pd.Timestamp(got["last_contact_at"]) == pd.Timestamp(called_at).floor("s")
        assert got["days_since_high"] == pytest.approx(1 / 24, abs=0.01)
        assert got["tech_in_30d"] == pytest.approx(latest.loc["C0000007", "tech_in_30d"])  # other views untouched
    finally:
        store.teardown()  # removes this project's keys from Redis
