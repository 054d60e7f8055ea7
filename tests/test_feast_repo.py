"""The real Feast repo on a temporary project: apply, materialize, online and offline reads."""

import pandas as pd
import pytest

from nexttouch.settings import Settings

pytestmark = pytest.mark.slow


def test_online_store_serves_the_latest_snapshot(built: Settings) -> None:
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(built.feature_repo))
    service = store.get_feature_service(built.feature_service)
    online = store.get_online_features(
        features=service, entity_rows=[{"customer_id": "C0000001"}, {"customer_id": "nobody"}]
    ).to_dict()
    offline = pd.read_parquet(built.offline_dir / "touch_history.parquet")
    latest = offline[offline["customer_id"] == "C0000001"].sort_values("event_timestamp").iloc[-1]
    # The online response does not keep request order of features: compare by name.
    at = online["customer_id"].index("C0000001")
    for name in ("tech_in_30d", "low_out_90d", "tenure_days", "days_since_low"):
        assert online[name][at] == pytest.approx(latest[name])
    profile = pd.read_parquet(built.raw_dir / "customers.parquet").set_index("customer_id").loc["C0000001"]
    assert online["region"][at] == profile["region"]
    assert online["push_opt_in"][at] == profile["push_opt_in"]
    gone = online["customer_id"].index("nobody")
    assert online["tech_in_30d"][gone] is None and online["region"][gone] is None


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
    got = store.get_historical_features(entity_df=entity, features=service).to_df().sort_values("row")
    assert got["tech_in_90d"].tolist() == [mine.iloc[49]["tech_in_90d"], mine.iloc[50]["tech_in_90d"]]
    assert got["days_since_tech"].tolist() == pytest.approx(
        [mine.iloc[49]["days_since_tech"], mine.iloc[50]["days_since_tech"]]
    )
