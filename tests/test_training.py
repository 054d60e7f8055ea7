"""Training against a temporary MLflow tracking store: the run, its metrics, the champion alias."""

import pytest
from mlflow import MlflowClient

from nexttouch.settings import Settings
from nexttouch.tracking import configure_mlflow

pytestmark = pytest.mark.slow


def test_run_metrics_and_champion_alias(built: Settings) -> None:
    configure_mlflow(built)
    assert (
        built.resolved_tracking_uri.startswith("sqlite:///") and str(built.project_dir) in built.resolved_tracking_uri
    )
    client = MlflowClient()
    champion = client.get_model_version_by_alias(built.model_name, "champion")
    run = client.get_run(champion.run_id)
    metrics = run.data.metrics
    assert {"valid_auc", "valid_logloss", "best_iteration", "train_rows"} <= set(metrics)
    assert 0.5 < metrics["valid_auc"] <= 1.0
    assert metrics["valid_logloss"] > 0
    assert run.data.tags["feature_service"] == built.feature_service
    assert run.data.tags["catalog"] == "none,push,event_invite,advisor_call"
    assert run.info.artifact_uri.startswith((built.mlruns_dir / "artifacts").as_uri())


def test_registered_model_loads_as_pyfunc_with_the_same_scores(built: Settings) -> None:
    import mlflow
    import pandas as pd

    from features.touch_features import recency_frame
    from serving.champion import load_champion

    configure_mlflow(built)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{built.model_name}@champion")
    champion = load_champion(built)
    rows = (
        pd.read_parquet(built.offline_dir / "touch_history.parquet")
        .tail(5)
        .merge(
            pd.read_parquet(built.offline_dir / "customer_profile.parquet").drop(columns="event_timestamp"),
            on="customer_id",
        )
    )
    rows = rows.join(recency_frame(rows.assign(request_at=rows["event_timestamp"])))
    via_pyfunc = pyfunc.predict(rows[champion.model.inputs].astype(dict.fromkeys(champion.model.numeric, float)))
    raw = champion.model.predict_all(rows)
    assert list(via_pyfunc.columns) == [f"p_{a}" for a in champion.model.actions]
    assert via_pyfunc.to_numpy() == pytest.approx(raw)
    assert (built.models_dir / built.model_name / f"v{champion.version}").is_dir()
