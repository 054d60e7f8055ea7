"""The training set equals the straightforward Feast query: one entity row per decision, merged back."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from nexttouch.catalog import Catalog
from nexttouch.feature_store import open_store
from nexttouch.settings import Settings
from training import dataset
from training.dataset import label_decisions, training_set

pytestmark = pytest.mark.slow


def _reference(settings: Settings, labelled: pd.DataFrame) -> pd.DataFrame:
    """The former implementation: every decision (with its id) in one query, joined back on decision_id."""
    entity = labelled[["decision_id", "customer_id", "decided_at"]].rename(columns={"decided_at": "event_timestamp"})
    entity["request_at"] = entity["event_timestamp"]
    store = open_store(settings)
    service = store.get_feature_service(settings.feature_service)
    features = store.get_historical_features(entity_df=entity, features=service).to_df()
    features = features.drop(columns=["customer_id", "request_at"]).rename(columns={"event_timestamp": "decided_at"})
    out = labelled[["decision_id", "customer_id", "action", "propensity", "outcome"]].merge(
        features, on="decision_id", how="left", validate="one_to_one"
    )
    return out.sort_values(["decided_at", "decision_id"], ignore_index=True)


@pytest.mark.parametrize("rows_per_query", [None, 97])
def test_training_set_equals_one_query_per_decision(
    built: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch, rows_per_query: int | None
) -> None:
    import ibis

    decisions = pd.read_parquet(built.raw_dir / "decisions.parquet")
    # Decisions of the same customer at the same time share an entity row; some have no feedback.
    twins = decisions.sample(30, random_state=3).assign(outcome=np.nan)
    twins["decision_id"] = "twin-" + twins["decision_id"].astype(str)
    decisions = pd.concat([decisions, twins], ignore_index=True).sample(frac=1.0, random_state=4)
    if rows_per_query:  # many slices, each boundary inside some customer's decisions
        monkeypatch.setattr(dataset, "ENTITY_ROWS_PER_QUERY", rows_per_query)
    backend = ibis.options.default_backend

    got = training_set(built, decisions, catalog)
    assert ibis.options.default_backend is backend  # the query's own DuckDB connection is gone again

    labelled, _ = label_decisions(built, decisions, catalog)
    pd.testing.assert_frame_equal(got, _reference(built, labelled), check_exact=True)
    assert len(got) == len(labelled) > 3 * (rows_per_query or 0)
    assert got["decision_id"].str.startswith("twin-").sum() > 0
    assert got["spend_90d"].isna().any() and got["spend_90d"].notna().any()  # before / after the first snapshot


def test_duplicate_decision_ids_are_refused(built: Settings) -> None:
    decisions = pd.read_parquet(built.raw_dir / "decisions.parquet").head(20)
    with pytest.raises(ValueError, match="decision_id"):
        training_set(built, pd.concat([decisions, decisions.head(1)], ignore_index=True))


def test_no_labelled_decision_gives_an_empty_frame_with_every_column(built: Settings) -> None:
    decisions = pd.read_parquet(built.raw_dir / "decisions.parquet").head(20).assign(outcome=np.nan)
    got = training_set(built, decisions)  # no catalog: nothing is attributed, no row is labelled
    labelled, _ = label_decisions(built, decisions, None)
    assert got.empty and got.attrs["open_window"] == 20
    assert list(got.columns) == list(_reference(built, labelled).columns)


def test_each_decision_gets_the_history_of_the_days_before_it(built: Settings, catalog: Catalog) -> None:
    """A decision's history features are its customer's snapshot at the start of its day: all touches before it."""
    from features.touch_features import TOUCH_FEATURES

    data = training_set(built, pd.read_parquet(built.raw_dir / "decisions.parquet"), catalog)
    history = [c for c in TOUCH_FEATURES if c.endswith(("_all", "_decayed")) or c == "days_observed"]
    assert len(history) > 20 and set(history) <= set(data.columns)
    snapshots = pd.read_parquet(built.offline_dir / "touch_history.parquet")
    sample = data.sample(300, random_state=0)
    day = pd.to_datetime(sample["decided_at"], utc=True).dt.floor("D").astype(snapshots["event_timestamp"].dtype)
    want = (
        sample[["customer_id"]]
        .assign(event_timestamp=day.to_numpy())
        .merge(snapshots, on=["customer_id", "event_timestamp"], how="left", validate="many_to_one")
    )
    has_snapshot = want[history[0]].notna().to_numpy()  # decisions on the first day have none yet
    assert has_snapshot.mean() > 0.9
    for name in history:
        got, expected = sample[name].to_numpy(float)[has_snapshot], want[name].to_numpy(float)[has_snapshot]
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=name)
    assert sample["days_observed"].max() > 90  # not a 90-day window


def test_the_training_set_on_disk_reads_as_the_frame_in_any_range(
    built: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """Written from many Feast slices into small row groups, it reads back as the frame: whole, by range, in batches."""
    decisions = pd.read_parquet(built.raw_dir / "decisions.parquet")
    frame = training_set(built, decisions, catalog)
    monkeypatch.setattr(dataset, "ENTITY_ROWS_PER_QUERY", 997)
    monkeypatch.setattr(dataset, "ROW_GROUP_ROWS", 500)
    on_disk = dataset.write_training_set(built, decisions, tmp_path / "set", catalog)
    assert len(on_disk) == len(frame) > 5_000 and on_disk.open_window == frame.attrs["open_window"]
    assert pq.read_metadata(on_disk.path).num_row_groups > 10
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["training_set.parquet"]  # parts removed
    pd.testing.assert_frame_equal(on_disk.read(), frame, check_exact=True)
    view = on_disk.rows(1_234, 4_321)
    want = frame.iloc[1_234:4_321].reset_index(drop=True)
    pd.testing.assert_frame_equal(view.read(), want, check_exact=True)
    pd.testing.assert_frame_equal(view.read(100, 200), want.iloc[100:200].reset_index(drop=True), check_exact=True)
    batches = list(view.batches(rows=777, columns=["decision_id", "outcome"]))
    assert [len(b) for b in batches] == [777, 777, 777, 756]
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), want[["decision_id", "outcome"]])
    assert len(on_disk.rows(5, 5)) == 0 and on_disk.rows(5, 5).read().columns.tolist() == frame.columns.tolist()


def test_a_model_from_the_training_set_on_disk_is_the_model_from_the_frame(
    built: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """LightGBM reads the training period a batch at a time and makes the same model, calibration and
    metrics as from the whole frame; the best single action's values summed by batch are the same."""
    from training.evaluate import fit_single_values
    from training.train import fit

    decisions = pd.read_parquet(built.raw_dir / "decisions.parquet")
    frame = training_set(built, decisions, catalog)
    monkeypatch.setattr(dataset, "ROW_GROUP_ROWS", 600)
    on_disk = dataset.write_training_set(built, decisions, tmp_path / "set", catalog)
    in_memory = fit(frame, catalog, rounds=60)
    monkeypatch.setattr(dataset, "BATCH_ROWS", 1_000)  # several batches for the Sequence and the sums
    streamed = fit(on_disk, catalog, rounds=60)
    assert streamed.model.booster.model_to_string() == in_memory.model.booster.model_to_string()
    assert streamed.metrics == in_memory.metrics and streamed.constant == in_memory.constant
    assert streamed.model.categorical == in_memory.model.categorical
    assert streamed.model.calibration.maps == in_memory.model.calibration.maps
    pd.testing.assert_frame_equal(streamed.test, in_memory.test.reset_index(drop=True), check_exact=True)
    assert len(streamed.train) == len(in_memory.train) and isinstance(streamed.train, dataset.TrainingSet)
    p = in_memory.model.predict_all(in_memory.test)
    np.testing.assert_array_equal(streamed.model.predict_all(streamed.test), p)
    fit_rows = on_disk.rows(0, len(streamed.train) + len(streamed.valid))
    fit_frame = pd.concat([in_memory.train, in_memory.valid], ignore_index=True)
    np.testing.assert_allclose(
        fit_single_values(streamed.model, fit_rows, catalog),
        fit_single_values(in_memory.model, fit_frame, catalog),
        rtol=1e-12,
    )


def test_labels_of_some_customers_are_their_labels_among_all(built: Settings, catalog: Catalog) -> None:
    """Labelling reads the success touches of the decisions' customers only; the labels and the open
    windows are those the whole decision log gets (the history is known up to anyone's latest touch)."""
    decisions = pd.read_parquet(built.raw_dir / "decisions.parquet").assign(outcome=np.nan)
    some = decisions["customer_id"].isin(decisions["customer_id"].drop_duplicates().sample(frac=0.2, random_state=5))
    everyone, _ = label_decisions(built, decisions, catalog)
    few, open_window = label_decisions(built, decisions.loc[some], catalog)
    expected = everyone.loc[everyone["decision_id"].isin(decisions.loc[some, "decision_id"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(few, expected, check_exact=True)
    assert 0 < len(few) < len(everyone) and open_window > 0
    assert few["outcome"].eq(1.0).any() and few["outcome"].eq(0.0).any()


def test_training_reads_the_latest_decisions_of_a_longer_log(tmp_path) -> None:
    rng = np.random.default_rng(5)
    decided = pd.Timestamp("2026-05-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 400, 2_000), unit="min")
    log = pd.DataFrame({"decision_id": [f"d{i}" for i in range(2_000)], "decided_at": decided.astype("M8[us, UTC]")})
    path = tmp_path / "decisions.parquet"
    log.to_parquet(path, row_group_size=300)
    latest = dataset.latest_decisions(path, 500)
    cutoff = log["decided_at"].sort_values(ascending=False).iloc[499]
    assert len(latest) >= 500 and set(latest["decision_id"]) == set(log.loc[log["decided_at"] >= cutoff, "decision_id"])
    assert latest.dtypes.equals(log.dtypes)
    assert len(dataset.latest_decisions(path, 2_000)) == 2_000  # a log within the bound is read whole
