"""The bulk online reader returns exactly what Feast's `get_online_features` returns (SQLite and Redis)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from nexttouch.jobs.project import copy_feature_repo
from nexttouch.settings import Settings
from tests.conftest import END

if TYPE_CHECKING:
    from feast import FeatureStore

pytestmark = pytest.mark.slow


def _ids(settings: Settings) -> list[str]:
    """Known customers, unknown ones and duplicates, interleaved."""
    known = pd.read_parquet(settings.offline_dir / "customer_profile.parquet")["customer_id"].tolist()
    return ["nobody", *known[:50], known[3], "", known[0], "nobody", *known[50:], "c-unknown-9", known[7]]


def _feast(store: FeatureStore, refs: list[str], ids: list[str]) -> pd.DataFrame:
    got = store.get_online_features(features=refs, entity_rows=[{"customer_id": c} for c in ids])
    return pd.DataFrame(got.to_dict())


def _same(ours: pd.DataFrame, feast: pd.DataFrame) -> None:
    assert sorted(ours.columns) == sorted(feast.columns)
    cols = sorted(feast.columns)
    pd.testing.assert_frame_equal(ours[cols], feast[cols], check_exact=True)  # values and dtypes, by name


def _check_reader(settings: Settings, kind: str) -> None:
    from features.online_read import OnlineReader, read_online
    from nexttouch.feature_store import open_store

    store = open_store(settings)
    service = store.get_feature_service(settings.feature_service)
    reader = OnlineReader(store, service)
    assert reader.kind == kind
    ids = _ids(settings)
    feast = _feast(store, [f"{v}:{f}" for v, f in reader.refs], ids)
    ours = reader.read(ids)
    _same(ours, feast)
    assert ours["customer_id"].tolist() == ids
    unknown = [i for i, c in enumerate(ids) if c in ("nobody", "", "c-unknown-9")]
    assert ours.drop(columns="customer_id").iloc[unknown].isna().all().all()
    assert ours.drop(columns="customer_id").drop(index=unknown).notna().any(axis=1).all()
    assert "days_since_tech" not in ours  # on-demand features are computed, not stored
    typed = reader.frame(ids)  # the batch's typed frame: the same values, floats for numbers
    assert list(typed.columns) == list(ours.columns)
    pd.testing.assert_frame_equal(typed, ours, check_dtype=False, check_exact=True)
    refs = [f"{v}:{f}" for v, f in reader.refs]
    for c in ids:  # one customer at a time: the same Python values (decoded values are cached)
        got = store.get_online_features(features=refs, entity_rows=[{"customer_id": c}]).to_dict()
        assert reader.row(c) == {n: got[n][0] for n in reader.names}, c

    # A subset of a view's features, by reference; one customer; nobody at all.
    refs = ["touch_history:tech_in_30d", "customer_profile:" + reader.refs[-1][1], "contact_state:last_tech_at"]
    _same(read_online(store, refs, ids), _feast(store, refs, ids))
    # Views interleaved: every value under its own name, whatever order the views come in.
    profile = "customer_profile:" + reader.refs[-1][1]
    refs = ["touch_history:tech_in_30d", profile, "touch_history:spend_90d", "contact_state:last_tech_at"]
    refs += ["touch_history:tenure_days"]
    interleaved = OnlineReader(store, refs)
    want = _feast(store, refs, ids)
    _same(interleaved.read(ids), want)
    pd.testing.assert_frame_equal(interleaved.frame(ids), interleaved.read(ids), check_dtype=False, check_exact=True)
    one = store.get_online_features(features=refs, entity_rows=[{"customer_id": ids[1]}]).to_dict()
    assert interleaved.row(ids[1]) == {n: one[n][0] for n in interleaved.names}
    _same(reader.read(ids[1:2]), _feast(store, [f"{v}:{f}" for v, f in reader.refs], ids[1:2]))
    assert reader.read([]).shape == (0, len(reader.refs) + 1)

    with pytest.MonkeyPatch.context() as mp:  # many queries or pipelines per read: rows placed by offset
        mp.setattr("features.online_read.SQLITE_CHUNK", 7)
        mp.setattr("features.online_read.REDIS_CHUNK", 7)
        _same(reader.read(ids), feast)

    reader.kind = "feast"  # the fallback for other stores is Feast itself
    _same(reader.read(ids), feast)


def test_sqlite_bulk_read_equals_get_online_features(built: Settings) -> None:
    _check_reader(built, "sqlite")


@pytest.fixture(scope="module")
def on_redis(built: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The built project's features in Redis under a project name of its own, removed afterwards."""
    redis = pytest.importorskip("redis")
    from features.pipeline import feast_apply, materialize
    from nexttouch.feature_store import open_store

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379")
    base = tmp_path_factory.mktemp("online_read_redis")
    repo = copy_feature_repo(base)
    shutil.copytree(built.offline_dir, base / "data" / "offline")
    yaml = repo / "feature_store.redis.yaml"
    yaml.write_text(yaml.read_text().replace("project: nexttouch", f"project: nt_read_{uuid.uuid4().hex[:10]}"))
    settings = built.model_copy(update={"project_dir": base, "online_store": "redis", "redis_url": "127.0.0.1:6379"})
    feast_apply(settings)
    store = open_store(settings)
    try:
        materialize(settings, END)
        yield settings
    finally:
        store.teardown()


def test_redis_bulk_read_equals_get_online_features(on_redis: Settings) -> None:
    _check_reader(on_redis, "redis")


def test_numbers_read_from_their_wire_bytes_are_protobufs() -> None:
    """The typed frame reads stored numbers from their bytes; whatever it cannot read is left to protobuf."""
    import random

    import numpy as np
    from feast.protos.feast.types.Value_pb2 import Value

    from features.online_read import _scalars

    rng = random.Random(0)
    values = [Value(int64_val=v) for v in [0, 1, 127, 128, 300, 2**35, 2**63 - 1, -1, -(2**63)]]
    values += [Value(int32_val=v) for v in [0, 5, 2**31 - 1, -1]] + [Value(bool_val=True), Value(bool_val=False)]
    values += [Value(unix_timestamp_val=v) for v in [0, 1_700_000_000, -5]]
    values += [Value(double_val=v) for v in [0.0, -0.0, 1.5, 1e300, float("inf"), -2.5]] + [Value(float_val=1.1)]
    values += [Value(), Value(null_val=0), Value(string_val="7")]
    values += [Value(int64_val=rng.getrandbits(rng.randint(1, 63))) for _ in range(500)]
    values += [Value(double_val=rng.uniform(-1e6, 1e6)) for _ in range(500)]
    blobs = [v.SerializeToString() for v in values] + [b"\x20\x80", b"\x20", b"\x29\x00", b"\x20\x05\x01"]
    got, read = _scalars(blobs)
    for blob, value, ok in zip(blobs, got, read, strict=True):
        if ok:
            proto = Value.FromString(blob)
            want = float(getattr(proto, proto.WhichOneof("val")))
            assert value == want and np.signbit(value) == np.signbit(want), blob
    unread = [b for b, ok in zip(blobs, read, strict=True) if not ok]
    assert read.sum() == len(blobs) - 11  # negative ints (10-byte varints), empty, null, string, truncated, trailing
    assert Value(int64_val=-1).SerializeToString() in unread and b"" in unread


def test_stored_times_with_missing_ones_never_raise_a_spurious_float_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """pandas 2.x converts a float array's NaN seconds from uninitialised memory (pandas-dev/pandas#58419):
    with garbage there, ``pd.to_datetime(unit="s")`` raises FloatingPointError now and then, and a batch read
    became a store error for every customer. Garbage is made certain here."""
    import numpy as np
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.types import ValueType

    from features.online_read import _typed

    empty = np.empty

    def garbage(shape: object, dtype: object = float, *args: object, **kwargs: object) -> np.ndarray:
        out = empty(shape, dtype, *args, **kwargs)
        if np.dtype(dtype).kind == "f":
            out.fill(1e308)
        return out

    monkeypatch.setattr(np, "empty", garbage)
    seconds = np.array([1.7e9, np.nan])
    with pytest.raises(FloatingPointError):  # the pandas bug itself, made certain
        pd.to_datetime(seconds, unit="s")
    blobs = np.array([Value(unix_timestamp_val=1_700_000_000).SerializeToString(), None, b""], dtype=object)
    got = _typed(blobs, ValueType.UNIX_TIMESTAMP)
    assert got[0] == np.datetime64("2023-11-14T22:13:20", "ns") and np.isnat(got[1:]).all()
