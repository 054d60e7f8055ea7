from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from nexttouch.catalog import Catalog
from nexttouch.schemas import DECISIONS_COLUMNS, EVENTS_COLUMNS, TOUCH_TYPES, check_columns
from nexttouch.settings import Settings
from nexttouch.simulate import TIME_ZONES, simulate, simulate_chunks, write_brand
from tests.conftest import END


def test_simulation_is_deterministic_for_a_seed(catalog: Catalog) -> None:
    a = simulate(catalog, 200, 30, END, seed=3)
    b = simulate(catalog, 200, 30, END, seed=3)
    c = simulate(catalog, 200, 30, END, seed=4)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.decisions, b.decisions)
    assert not a.events["occurred_at"].equals(c.events["occurred_at"])


def test_simulated_tables_meet_their_contracts(catalog: Catalog) -> None:
    brand = simulate(catalog, 300, 60, END, seed=5, decision_rate=0.2)
    check_columns(brand.events, EVENTS_COLUMNS, "events")
    check_columns(brand.decisions, DECISIONS_COLUMNS, "decisions")
    ev, dec = brand.events, brand.decisions
    assert ev["occurred_at"].between(pd.Timestamp(brand.start), pd.Timestamp(END), inclusive="left").all()
    assert set(ev["touch_type"]) <= set(TOUCH_TYPES)
    assert ev["event_id"].is_unique and dec["decision_id"].is_unique
    assert set(dec["action"]) == set(catalog.names)  # the logging policy explores every action
    assert ((dec["propensity"] > 0) & (dec["propensity"] <= 1)).all()
    assert set(dec["outcome"].unique()) == {0.0, 1.0}
    # every event arrives under a source key that the identity map resolves
    resolved = ev.merge(brand.identity, on=["source_system", "source_key"], how="left")
    assert resolved["customer_id"].notna().all()
    assert ev["source_system"].nunique() == 4
    # every customer's time zone is a real IANA zone, the one of its region
    zones = brand.customers["region"].map(TIME_ZONES)
    assert (brand.customers["time_zone"] == zones).all() and all(ZoneInfo(z) for z in zones.unique())


def test_contacts_respect_consent_in_the_log(catalog: Catalog) -> None:
    brand = simulate(catalog, 500, 60, END, seed=6, decision_rate=0.2)
    dec = brand.decisions.merge(brand.customers, on="customer_id")
    assert (dec.loc[dec["action"] == "push", "push_opt_in"] == 1).all()
    assert (dec.loc[dec["action"] == "advisor_call", "call_consent"] == 1).all()


def test_ground_truth_responds_to_affinity(catalog: Catalog) -> None:
    brand = simulate(catalog, 2000, 20, END, seed=7)
    lt, truth = brand.truth.latents, brand.truth
    idx = np.arange(2000)
    zero = np.zeros(2000)
    social = np.argsort(lt.social)
    p_invite = truth.p_success(idx, zero, zero, zero, "event_invite") - truth.p_success(idx, zero, zero, zero, "none")
    # customers with the highest social affinity gain more from an invitation than the lowest
    assert p_invite[social[-200:]].mean() > p_invite[social[:200]].mean() + 0.05


def test_ground_truth_values_policies_and_the_oracle(catalog: Catalog) -> None:
    brand = simulate(catalog, 2000, 60, END, seed=9, decision_rate=0.1)
    truth = brand.decision_truth
    assert len(truth) == len(brand.decisions)
    assert (truth["decision_id"] == brand.decisions["decision_id"]).all()
    # the simulated outcomes follow the true probabilities of the logged actions
    logged_p = truth[[f"p_{a}" for a in catalog.names]].to_numpy()[
        np.arange(len(truth)), pd.Index(catalog.names).get_indexer(brand.decisions["action"])
    ]
    assert brand.decisions["outcome"].mean() == pytest.approx(logged_p.mean(), abs=0.01)
    oracle = brand.oracle_actions(catalog)
    eligible = truth[[f"eligible_{a}" for a in catalog.names]].to_numpy()
    assert eligible[np.arange(len(oracle)), pd.Index(catalog.names).get_indexer(oracle)].all()
    v_oracle = brand.true_value(catalog, oracle)
    v_logged = brand.true_value(catalog, brand.decisions["action"])
    v_none = brand.true_value(catalog, np.full(len(truth), "none"))
    assert v_oracle > v_logged and v_oracle > v_none


def test_chunks_make_the_same_brand_whatever_their_size(catalog: Catalog) -> None:
    whole = simulate(catalog, 250, 20, END, seed=3, block=100)
    assert whole.customers["customer_id"].tolist()[-1] == "C0000250"
    for chunk, parts in ((100, 3), (200, 2), (250, 1)):
        chunks = list(simulate_chunks(catalog, 250, 20, END, 3, chunk=chunk, block=100))
        assert len(chunks) == parts
        for table in ("customers", "events", "decisions", "decision_truth"):
            joined = pd.concat([getattr(c, table) for c in chunks], ignore_index=True)
            pd.testing.assert_frame_equal(joined, getattr(whole, table))
        identity = pd.concat([c.identity for c in chunks]).sort_values(["source_system", "source_key"])
        expected = whole.identity.sort_values(["source_system", "source_key"])
        pd.testing.assert_frame_equal(identity.reset_index(drop=True), expected.reset_index(drop=True))
    # blocks are independent streams: another block size is another brand of the same seed
    other = simulate(catalog, 250, 20, END, seed=3, block=50)
    assert not other.events["occurred_at"].equals(whole.events["occurred_at"])
    assert whole.state is not None and len(whole.state.online) == 250


def test_written_brand_does_not_depend_on_the_chunk_size(catalog: Catalog, tmp_path) -> None:
    from nexttouch.settings import load_settings

    tables = {}
    for chunk in (100, 300):
        s: Settings = load_settings(project_dir=tmp_path / str(chunk), customers=230, days=20, seed=5)
        delivered = write_brand(s, catalog, END, s.landing_dir, chunk=chunk, block=100)
        assert delivered.customers == 230 and delivered.first_customers[0] == "C0000001"
        tables[chunk] = {
            name: pd.read_parquet(s.landing_dir / f"{name}.parquet")
            for name in ("customers", "identity", "events", "decisions")
        }
        assert delivered.events == len(tables[chunk]["events"]) and delivered.source_systems == 4
    for name, frame in tables[100].items():
        pd.testing.assert_frame_equal(frame, tables[300][name])
