"""Labels, and training against a temporary MLflow tracking store: the run, its metrics, the champion alias."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from nexttouch.catalog import Catalog
from nexttouch.registry_io import load_version
from nexttouch.settings import Settings
from nexttouch.tracking import configure_mlflow
from training.dataset import attribute_outcomes

T0 = datetime(2026, 10, 1, tzinfo=UTC)


def test_outcomes_are_attributed_within_the_window_and_open_windows_are_left_out(catalog: Catalog) -> None:
    """push: success_touch push_opened within 2 days (catalog); as_of = 10 days after T0."""
    h = timedelta(hours=1)
    decisions = pd.DataFrame(
        {
            "decision_id": ["fb", "hit", "late", "before", "closed", "open", "open_hit", "other", "prev", "next"],
            "customer_id": ["A", "B", "C", "D", "E", "F", "G", "H", "I", "I"],
            "decided_at": [T0, T0, T0, T0, T0, T0 + 9 * 24 * h, T0 + 9 * 24 * h, T0, T0, T0 + h],
            "action": ["push"] * 7 + ["event_invite", "push", "push"],
            "propensity": 0.5,
            "outcome": [0.0, *[np.nan] * 9],
        }
    )
    events = pd.DataFrame(
        {
            "customer_id": ["A", "B", "C", "D", "G", "H", "I"],
            "occurred_at": pd.Series(  # microseconds, as Feast-ready parquet has them; decisions are in ns
                [T0 + h, T0 + 47 * h, T0 + 49 * h, T0 - h, T0 + 9 * 24 * h + h, T0 + h, T0 + 2 * h]
            ).astype("datetime64[us, UTC]"),
            "touch_type": ["push_opened"] * 7,
            "decision_id": [None] * 6 + ["prev"],  # the opened push names its decision
        }
    )
    labelled, still_open = attribute_outcomes(decisions, events, catalog, as_of=T0 + 10 * 24 * h)
    got = labelled.set_index("decision_id")["outcome"].to_dict()
    # feedback wins; a touch inside 2 days is a success; after it, before the decision, or the wrong
    # touch type for the action is not, nor a touch that names another decision; "open" (window ends
    # after as_of, no touch yet) has no label.
    assert got == {
        **{"fb": 0.0, "hit": 1.0, "late": 0.0, "before": 0.0, "closed": 0.0, "open_hit": 1.0, "other": 0.0},
        **{"prev": 1.0, "next": 0.0},
    }
    assert still_open == 1


def test_attributed_labels_match_the_simulated_outcomes(catalog: Catalog) -> None:
    """Pushes and invites succeed only through their success touch (never organic) in the simulator:
    attribution from the event log must give back exactly the outcomes it recorded."""
    from nexttouch.simulate import simulate

    brand = simulate(catalog, 300, 40, T0, seed=5, decision_rate=0.2)
    keys = brand.identity.astype(object)
    events = brand.events.astype({"source_system": object, "source_key": object, "touch_type": object})
    events = events.merge(keys, on=["source_system", "source_key"])
    decisions = brand.decisions.astype({"customer_id": object, "action": object})
    hidden = decisions.assign(outcome=np.nan)
    labelled, still_open = attribute_outcomes(hidden, events, catalog, as_of=brand.end + timedelta(days=3))
    assert still_open == 0 and len(labelled) == len(decisions)
    both = labelled.merge(decisions[["decision_id", "outcome"]], on="decision_id", suffixes=("", "_true"))
    for action in ("push", "event_invite"):
        one = both.loc[both["action"] == action]
        assert len(one) > 50 and (one["outcome"] == one["outcome_true"]).all(), action


def test_features_constant_in_the_training_period_are_not_model_inputs(catalog: Catalog) -> None:
    """All-zero touch counts and an unknown tenure (a brand without events or sign-up dates) are left
    out; a column that varies only after the training period has nothing to teach the booster either."""
    from training.train import fit

    rng = np.random.default_rng(0)
    n = 2000
    action = rng.choice(catalog.names, n)
    region = rng.choice(["north", "south"], n)
    late = np.where(np.arange(n) < 0.7 * n, 1.0, rng.random(n))
    frame = pd.DataFrame(
        {
            "decision_id": [f"d{i}" for i in range(n)],
            "customer_id": [f"c{i % 500}" for i in range(n)],
            "decided_at": pd.date_range(T0, periods=n, freq="h"),
            "action": action,
            "propensity": 0.25,
            "outcome": (rng.random(n) < np.where((action == "push") & (region == "north"), 0.6, 0.1)).astype(float),
            "region": region,
            "tech_in_30d": 0,
            "tenure_days": np.nan,
            "segment": "all",
            "varies_late": late,
        }
    )
    result = fit(frame, catalog, rounds=20)
    assert result.model.inputs == ["region"]
    assert result.constant == ["tech_in_30d", "tenure_days", "varies_late", "segment"]


def test_metrics_are_named_by_section_without_copies() -> None:
    from training.registry import grouped

    flat = {
        "valid_auc": 0.7,
        "best_iteration": 40.0,
        "train_rows": 900.0,
        "test_auc": 0.6,
        "test_qini_event_invite": 0.1,
        "policy_best_single_dr_low": 7.0,
        "policy_best_single_ips_high": 9.0,  # in policy_values.csv
        "policy_new_true": 8.0,
        "ope_dr_error_new": 0.2,  # DR minus true: both are there
        "paired_new_vs_best_single_differ": 0.3,
        "share_of_oracle_margin_new": 0.5,
        "single_value_push": 2.0,
        "test_ece": float("nan"),
    }
    assert grouped(flat) == {
        "valid/auc": 0.7,
        "valid/best_iteration": 40.0,
        "data/train_rows": 900.0,
        "test/auc": 0.6,
        "test_by_action/event_invite/qini": 0.1,
        "policy_value/best_single/dr_low": 7.0,
        "policy_value/new/true": 8.0,
        "paired/new_vs_best_single/differ": 0.3,
        "oracle_share/margin_new": 0.5,
        "single_action_value/push": 2.0,
    }


@pytest.mark.slow
def test_run_metrics_and_champion_alias(built: Settings) -> None:
    configure_mlflow(built)
    assert (
        built.resolved_tracking_uri.startswith("sqlite:///") and str(built.project_dir) in built.resolved_tracking_uri
    )
    client = MlflowClient()
    champion = client.get_model_version_by_alias(built.model_name, "champion")
    run = client.get_run(champion.run_id)
    metrics = run.data.metrics
    assert {"valid/auc", "valid/logloss", "valid/best_iteration", "data/train_rows"} <= set(metrics)
    assert 0.5 < metrics["valid/auc"] <= 1.0
    assert metrics["valid/logloss"] > 0
    assert run.data.tags["feature_service"] == built.feature_service
    assert run.data.tags["catalog"] == "none,push,event_invite,advisor_call"
    assert run.info.artifact_uri.startswith((built.mlruns_dir / "artifacts").as_uri())
    # the prior of per-customer learning is fitted with every model and travels with it
    fitted = {k.removeprefix("valid/own_affinity_sd_"): v for k, v in metrics.items() if "own_affinity_sd_" in k}
    assert set(fitted) >= {"none", "push"} and all(0 <= v < 5 for v in fitted.values())
    model = load_version(built, champion.version)
    assert model.affinity_sd and set(model.affinity_sd) >= {"none", "push"}


@pytest.mark.slow
def test_every_run_logs_its_evaluation(built: Settings, catalog: Catalog) -> None:
    """Per-action quality, policy values with intervals (and the truth: the brand is simulated), plots, report."""
    configure_mlflow(built)
    client = MlflowClient()
    run = client.get_run(client.get_model_version_by_alias(built.model_name, "champion").run_id)
    m, catalog_names = run.data.metrics, catalog.names
    for action in ("none", "push", "event_invite", "advisor_call"):
        assert 0.5 < m[f"test_by_action/{action}/auc"] <= 1 and 0 <= m[f"test_by_action/{action}/ece"] < 0.2
    for policy in ("new", "logging", "best_single", "rules", "random", "oracle", "ceiling"):
        p = f"policy_value/{policy}"
        assert m[f"{p}/dr_low"] <= m[f"{p}/dr"] <= m[f"{p}/dr_high"] and f"{p}/true" in m
    assert m["policy_value/oracle/true"] >= m["policy_value/new/true"] > m["policy_value/random/true"]
    assert "oracle_share/margin_new" in m and "oracle_share/margin_ceiling" in m
    assert "paired/new_vs_best_single/diff" in m and run.data.params["gate_tolerance"] == str(built.gate_tolerance)
    # Every metric sits in a section of the UI, none is a copy of another (the gate's numbers, DR - true).
    assert all("/" in k for k in m) and not any(k.startswith(("gate", "ope_")) or "ips_low" in k for k in m)
    assert run.data.tags["gate"] in ("passed", "refused") and run.data.tags["best_single_action"] in catalog_names
    files = {f.path for f in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {
        f"evaluation/{name}" for name in ("report.md", "calibration.png", "uplift.png", "policy_value.png")
    } <= files
    assert "calibration" in run.data.params and run.data.params["monotone_constraints"]
    # Readable in the UI: a name, the verdict and the report as the description with its figures, a learning curve.
    assert run.info.run_name.startswith("train 20")
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("**Gate ") and "## Policy value" in note and "# Decision model evaluation" not in note
    figure = f"![calibration](get-artifact?path=evaluation%2Fcalibration.png&run_uuid={run.info.run_id})"
    assert figure in note.splitlines()
    for period in ("train", "valid"):
        curve = client.get_metric_history(run.info.run_id, f"learning_curve/{period}_logloss")
        assert [p.step for p in curve] == list(range(1, len(curve) + 1)) and len(curve) >= m["valid/best_iteration"]
        assert min(p.value for p in curve) < curve[0].value


@pytest.mark.slow
def test_the_experiment_opens_as_model_training_and_says_what_it_holds(built: Settings, catalog: Catalog) -> None:
    configure_mlflow(built)
    client = MlflowClient()
    run = client.get_run(client.get_model_version_by_alias(built.model_name, "champion").run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "Next best action: catalog.yaml (none, push, event_invite, advisor_call)"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    description = experiment.tags["mlflow.note.content"]
    assert f"`{built.model_name}`" in description and "none, push, event_invite, advisor_call" in description
    assert f"#/experiments/{experiment.experiment_id}?workflowType=machine_learning" in description


@pytest.mark.slow
def test_registered_model_loads_as_pyfunc_with_the_same_scores(built: Settings) -> None:
    import mlflow
    import pandas as pd

    from nexttouch.touches import recency_frame
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


def test_constant_features_and_levels_read_a_batch_at_a_time_are_those_of_the_whole_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training import dataset
    from training.dataset import FrameRows
    from training.train import constant_columns, feature_columns

    nan = float("nan")
    frame = pd.DataFrame(
        {
            "all_missing": [nan] * 7,
            "one_value": [2.0] * 7,
            "missing_then_value": [nan, nan, nan, 1.0, 1.0, 1.0, 1.0],  # each batch constant, the frame not
            "value_then_other": [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0],
            "varies_in_a_batch": [1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            "text_one": ["a"] * 7,
            "text_missing_later": ["a", "a", "a", None, None, None, "b"],
            "decided_at": pd.date_range("2026-01-01", periods=7, tz="UTC"),
        }
    )
    columns = [c for c in frame.columns if c != "decided_at"]
    monkeypatch.setattr(dataset, "BATCH_ROWS", 3)
    assert constant_columns(FrameRows(frame), columns) == constant_columns(frame, columns)
    assert constant_columns(frame, columns) == ["all_missing", "one_value", "text_one"]
    assert feature_columns(FrameRows(frame)) == feature_columns(frame)
    assert feature_columns(frame)[1] == {"text_one": ["a"], "text_missing_later": ["a", "b"]}
