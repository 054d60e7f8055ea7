"""Feature labels: every input of the default feature service reads as a fact about the customer."""

import numpy as np

from features.touch_features import TOUCH_FEATURES
from nexttouch.engine.reasons import machine_value
from nexttouch.feature_labels import LABELS, describe, span
from nexttouch.touches import NEVER, RECENCY_FEATURES

PROFILE = ("region", "time_zone", "segment", "push_opt_in", "call_consent")  # the simulated brand's profile


def test_every_default_feature_has_a_label() -> None:
    assert set(TOUCH_FEATURES) | set(RECENCY_FEATURES) | set(PROFILE) == set(LABELS)
    for name in LABELS:
        words = name in ("region", "segment", "time_zone")
        for value in (0.0, 1.0, 3.0, 0.42, None):
            text = describe(name, "north" if words and value is not None else value)
            assert "_" not in text and not text.startswith(f"{name.replace('_', ' ')}:"), (name, text)


def test_labels_say_what_an_advisor_reads() -> None:
    assert describe("days_since_low", 52.9) == "no event, invitation or store visit for 7 weeks"
    assert describe("days_since_low", 0.4) == "last event, invitation or store visit today"
    assert describe("days_since_tech", NEVER) == "no app visit or push on record"
    assert describe("push_open_rate_90d", 0.8) == "opens about 80% of the pushes (last 90 days)"
    assert describe("push_open_rate_90d", np.nan) == "no pushes to answer (last 90 days)"
    assert describe("tech_out_7d", 3) == "3 pushes in the last 7 days"
    assert describe("tech_out_7d", 1) == "1 push in the last 7 days"
    assert describe("high_out_90d", 0) == "no advisor calls in the last 90 days"
    assert describe("tenure_days", np.int64(1502)) == "customer for 4 years"
    assert describe("tenure_days", np.float32(1502.0)) == "customer for 4 years"
    assert describe("push_opt_in", 1) == "opted in to pushes"
    assert describe("call_consent", None) == "no consent to advisor calls on record"
    assert describe("region", "north") == "region north"
    assert describe("store_visit_organic_decayed", 2.438) == "about 2.4 recent store visits on their own"
    assert describe("push_opened_linked_decayed", 0.04) == "no recent pushes opened in answer to a contact"
    assert [span(d) for d in (1, 13.9, 14, 69, 70, 400, 800)] == [
        "1 day",
        "13 days",
        "2 weeks",
        "9 weeks",
        "2 months",
        "13 months",
        "2 years",
    ]


def test_a_feature_without_a_label_reads_as_its_name_and_value() -> None:
    assert describe("loyalty_points", 1502.0) == "loyalty points: 1502"
    assert describe("loyalty_points", 2.2663) == "loyalty points: 2.27"
    assert describe("loyalty_points", None) == "loyalty points: missing"
    assert describe("tenure_days", "soon") == "tenure days: soon"  # not the number the label expects


def test_machines_get_plain_json_values() -> None:
    assert [machine_value(v) for v in (np.int64(3), np.float32(0.5), "north", None, np.nan, True)] == [
        3.0,
        0.5,
        "north",
        None,
        None,
        1.0,
    ]
    assert machine_value(2.2663194444444446) == 2.2663
