"""The real Feast repo on a temporary project: apply, materialize, online and offline reads."""

import numpy as np
import pandas as pd
import pytest

from nexttouch.settings import Settings

pytestmark = pytest.mark.slow


def test_online_store_serves_the_latest_snapshot(built: Settings) -> None:
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(built.feature_repo))
    service = store.get_feature_service(built.feature_service)
    now = pd.Timestamp("2026-11-01T12:00:00Z")
    online = store.get_online_features(
        features=service,
        entity_rows=[{"customer_id": "C0000001", "request_at": now}, {"customer_id": "nobody", "request_at": now}],
    ).to_dict()
    offline = pd.read_parquet(built.offline_dir / "touch_history.parquet")
    latest = offline[offline["customer_id"] == "C0000001"].sort_values("event_timestamp").iloc[-1]
    # The online response does not keep request order of features: compare by name.
    at = online["customer_id"].index("C0000001")
    for name in ("tech_in_30d", "low_out_90d", "tenure_days", "push_open_rate_all", "app_like_organic_decayed"):
        assert online[name][at] == pytest.approx(latest[name])
    assert online["days_observed"][at] == latest["days_observed"] > 90  # all history, not a 90-day window
    # recency is computed at request time from the last-touch time (on-demand feature view)
    expected = (now - latest["last_low_at"]).total_seconds() / 86400 if pd.notna(latest["last_low_at"]) else 999.0
    assert online["days_since_low"][at] == pytest.approx(expected)
    profile = pd.read_parquet(built.raw_dir / "customers.parquet").set_index("customer_id").loc["C0000001"]
    assert online["region"][at] == profile["region"]
    assert online["time_zone"][at] == profile["time_zone"]  # IANA name: a text profile feature like region
    assert online["push_opt_in"][at] == profile["push_opt_in"]
    gone = online["customer_id"].index("nobody")
    assert online["tech_in_30d"][gone] is None and online["region"][gone] is None
    assert online["days_since_tech"][gone] == 999.0


def test_historical_features_are_point_in_time(built: Settings) -> None:
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(built.feature_repo))
    service = store.get_feature_service(built.feature_service)
    snapshots = pd.read_parquet(built.offline_dir / "touch_history.parquet")
    mine = snapshots[snapshots["customer_id"] == "C0000002"].set_index("event_timestamp").sort_index()
    day = mine.index[50]
    entity = pd.DataFrame(
        {
            "customer_id": ["C0000002", "C0000002"],
            # just before a snapshot -> the previous day's row; exactly at it -> that row
            "event_timestamp": [day - pd.Timedelta(seconds=1), day],
            "row": [0, 1],
        }
    )
    entity["request_at"] = entity["event_timestamp"]
    got = store.get_historical_features(entity_df=entity, features=service).to_df().sort_values("row")
    assert got["tech_in_90d"].tolist() == [mine.iloc[49]["tech_in_90d"], mine.iloc[50]["tech_in_90d"]]
    assert got["last_tech_at"].tolist() == [mine.iloc[49]["last_tech_at"], mine.iloc[50]["last_tech_at"]]
    for name in ("push_sent_all", "push_open_rate_all", "store_visit_linked_decayed", "days_observed"):
        assert got[name].tolist() == pytest.approx([mine.iloc[49][name], mine.iloc[50][name]], rel=1e-6), name
    assert got["days_since_tech"].iloc[1] == pytest.approx(
        (day - mine.iloc[50]["last_tech_at"]).total_seconds() / 86400
    )


def test_online_features_equal_offline_features_at_the_same_time(built: Settings) -> None:
    from feast import FeatureStore

    from tests.conftest import END

    store = FeatureStore(repo_path=str(built.feature_repo))
    service = store.get_feature_service(built.feature_service)
    ids = [f"C{i:07d}" for i in range(1, 41)]
    at = pd.Timestamp(END)
    online = pd.DataFrame(
        store.get_online_features(
            features=service, entity_rows=[{"customer_id": c, "request_at": at} for c in ids]
        ).to_dict()
    )
    entity = pd.DataFrame({"customer_id": ids, "event_timestamp": at, "request_at": at})
    offline = store.get_historical_features(entity_df=entity, features=service).to_df()
    online, offline = online.set_index("customer_id").sort_index(), offline.set_index("customer_id").sort_index()
    names = [c for c in online.columns]
    assert len(names) > 30
    for name in names:
        if name in ("request_at",):
            continue
        if pd.api.types.is_datetime64_any_dtype(offline[name]):
            assert pd.to_datetime(online[name], utc=True).tolist() == offline[name].tolist(), name
        elif pd.api.types.is_numeric_dtype(offline[name]):
            np.testing.assert_allclose(online[name].astype(float), offline[name].astype(float), rtol=1e-6, err_msg=name)
        else:
            assert online[name].tolist() == offline[name].tolist(), name


def test_touches_after_a_decision_do_not_change_its_training_features(project: Settings, catalog) -> None:
    """Leakage: plant touches right after each decision; that decision's training row stays the same."""
    from features.pipeline import build_offline, feast_apply
    from features.touch_features import RESPONSES
    from nexttouch.ingest import ingest
    from nexttouch.schemas import TOUCH_TYPES
    from nexttouch.simulate import write_brand
    from tests.conftest import END
    from training.dataset import training_set

    write_brand(project, catalog, END, project.landing_dir)
    ingest(project, catalog, project.landing_dir, now=END)
    build_offline(project, END, project.days)
    feast_apply(project)
    decisions = pd.read_parquet(project.raw_dir / "decisions.parquet")
    before = training_set(project, decisions).set_index("decision_id").sort_index()
    snapshots_before = pd.read_parquet(project.offline_dir / "touch_history.parquet")

    events = pd.read_parquet(project.raw_dir / "events.parquet")
    # each customer's last decision, so that no planted touch precedes another checked decision
    sample = decisions.sort_values("decided_at").groupby("customer_id").tail(1).sample(200, random_state=1)
    # A purchase, and touches that move the history features: answers to decisions, a like.
    types = np.resize(["purchase", "push_opened", "store_visit", "app_like", "event_attended"], len(sample))
    planted = pd.DataFrame(
        {
            "event_id": [f"planted-{i}" for i in range(len(sample))],
            "occurred_at": (sample["decided_at"] + pd.Timedelta(seconds=1)).to_numpy(),
            "source_system": "store",
            "source_key": "planted",
            "touch_type": types,
            "tier": [TOUCH_TYPES[t].tier for t in types],
            "direction": [TOUCH_TYPES[t].direction for t in types],
            "amount": 5000.0,
            "decision_id": np.resize([None, "planted", "planted", None, "planted"], len(sample)),
            "customer_id": sample["customer_id"].to_numpy(),
        }
    )
    pd.concat([events, planted], ignore_index=True).to_parquet(project.raw_dir / "events.parquet", index=False)
    build_offline(project, END, project.days)
    after = training_set(project, decisions).set_index("decision_id").sort_index()

    # The customer's own features stay; the population's response rates (the rates' priors) move only
    # for decisions after the first planted touch's day, whoever they are about.
    rates = [f"{name}_rate_all" for name in RESPONSES]
    own = before.columns.difference(rates)
    pd.testing.assert_frame_equal(before.loc[sample["decision_id"], own], after.loc[sample["decision_id"], own])
    earlier = before.index[before["decided_at"] < planted["occurred_at"].min().floor("D")]
    assert len(earlier) > len(before) / 4
    pd.testing.assert_frame_equal(before.loc[earlier], after.loc[earlier])
    # ...while the planted touches are in the features of later snapshots
    snapshots = pd.read_parquet(project.offline_dir / "touch_history.parquet")
    assert snapshots["spend_90d"].max() >= 5000.0
    history = ["push_open_rate_all", "call_visit_rate_all", "event_attend_rate_all", "app_like_organic_all"]
    history += ["push_opened_linked_decayed", "store_visit_linked_decayed", "app_like_organic_decayed"]
    moved = (snapshots[history] != snapshots_before[history]).sum()
    assert (moved > 0).all(), moved


def test_a_brands_own_profile_columns_become_model_features(project: Settings, catalog) -> None:
    from features.pipeline import build_offline, feast_apply
    from nexttouch.ingest import ingest
    from nexttouch.simulate import write_brand
    from tests.conftest import END
    from training.dataset import training_set
    from training.train import fit

    write_brand(project, catalog, END, project.landing_dir)
    customers = pd.read_parquet(project.landing_dir / "customers.parquet")
    rng = np.random.default_rng(0)
    customers["vip_score"] = rng.normal(size=len(customers)).round(2)
    customers["favourite_model"] = rng.choice(["suv", "sedan", "ev"], len(customers))
    customers.to_parquet(project.landing_dir / "customers.parquet", index=False)
    ingest(project, catalog, project.landing_dir, now=END)
    build_offline(project, END, project.days)
    feast_apply(project)

    data = training_set(project, pd.read_parquet(project.raw_dir / "decisions.parquet"))
    assert data["favourite_model"].notna().all() and data["vip_score"].notna().all()
    model = fit(data, catalog).model
    assert "vip_score" in model.numeric
    assert model.categorical["favourite_model"] == ["ev", "sedan", "suv"]


@pytest.mark.parametrize("engine", ["embedded", "dask"])
def test_the_pipelines_partitions_give_the_features_of_all_customers_at_once(
    built: Settings, tmp_path, engine: str, request: pytest.FixtureRequest
) -> None:
    """build_offline featurises customers by partition, with the population's priors summed over them:
    the same rows as all customers at once, on either engine."""
    from features.online_load import latest_path
    from features.pipeline import build_offline
    from features.touch_features import build_touch_features
    from tests.conftest import END

    scheduler = request.getfixturevalue("dask_scheduler") if engine == "dask" else None
    settings = built.model_copy(update={"project_dir": tmp_path, "data_memory_gib": 0.02, "dask_scheduler": scheduler})
    settings.raw_dir.parent.mkdir(parents=True)
    settings.raw_dir.symlink_to(built.raw_dir)
    build = build_offline(settings, END, built.days)
    assert build.partitions > 3
    key = ["customer_id", "event_timestamp"]
    written = pd.read_parquet(settings.offline_dir / "touch_history.parquet")
    got = written.sort_values(key, ignore_index=True)
    assert written[key].equals(got[key])  # partitions are ranges of customers: the file is in customer order
    events = pd.read_parquet(built.raw_dir / "events.parquet")
    customers = pd.read_parquet(built.raw_dir / "customers.parquet")
    want = build_touch_features(events, customers, END, built.days, every_days=built.snapshot_every_days)
    want = want.sort_values(key, ignore_index=True)
    assert want["push_open_rate_all"].nunique() > 100
    pd.testing.assert_frame_equal(got, want.astype(got.dtypes.to_dict()), check_exact=True)
    latest = pd.read_parquet(latest_path(settings.offline_dir / "touch_history.parquet"))
    assert latest["customer_id"].is_unique and len(latest) == len(customers)
    last = want.groupby("customer_id", as_index=False).tail(1).sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(latest.sort_values(key, ignore_index=True), last.astype(latest.dtypes.to_dict()))
    profile = pd.read_parquet(settings.offline_dir / "customer_profile.parquet").sort_values("customer_id")
    assert profile["customer_id"].tolist() == sorted(customers["customer_id"])
    whole = pd.read_parquet(built.offline_dir / "customer_profile.parquet").sort_values("customer_id")
    pd.testing.assert_frame_equal(profile.reset_index(drop=True), whole.reset_index(drop=True), check_dtype=False)
