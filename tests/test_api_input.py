"""Request bodies refuse what would poison the log or the nightly job: times out of range or out of the window,
numbers for times, personal data, control characters and free text, loose outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from pydantic import ValidationError

from nexttouch import personal_data
from nexttouch.api import DecideBatchRequest, DecideRequest, EventsRequest, FeedbackRequest, TimeBounds
from nexttouch.simulate import customer_ids

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)
BOUNDS = TimeBounds(NOW, timedelta(hours=24), timedelta(days=730))


def _refused(model: type, body: dict, needle: str, bounds: TimeBounds | None = BOUNDS) -> None:
    with pytest.raises(ValidationError) as err:
        model.model_validate(body, context=bounds.context() if bounds else None)
    assert needle in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "at",
    [
        "9999-12-31T12:00:00Z",
        "9999-12-31T23:30:00-05:00",  # overflows when converted to UTC
        "0001-01-01T00:30:00+01:00",  # likewise, below year 1
        "1500-01-01T00:00:00Z",
        "2300-01-01T00:00:00Z",
    ],
)
def test_times_no_stage_can_hold_are_refused_even_without_a_window(at: str) -> None:
    event = {"event_id": "e", "occurred_at": at, "customer_id": "C1", "touch_type": "app_like"}
    for model, body in (
        (DecideRequest, {"customer_id": "C0000001", "at": at}),
        (DecideBatchRequest, {"customers": [{"customer_id": "C0000001"}], "at": at}),
        (FeedbackRequest, {"decision_id": "d1", "outcome": 1, "at": at}),
        (EventsRequest, {"events": [event]}),
    ):
        _refused(model, body, "must be between 1900-01-01 and 2200-01-01", bounds=None)


@pytest.mark.parametrize("at", [99999999999999, 1764000000, 1764000000.5, True])
def test_a_number_is_not_a_time(at: object) -> None:
    _refused(DecideRequest, {"customer_id": "C0000001", "at": at}, "ISO 8601 date-time string")


OUTSIDE = [timedelta(days=-36000), timedelta(hours=-25), timedelta(hours=25), timedelta(days=1200)]


@pytest.mark.parametrize("offset", OUTSIDE)
def test_at_outside_the_window_is_refused_and_the_window_named(offset: timedelta) -> None:
    at = (NOW + offset).isoformat()
    _refused(DecideRequest, {"customer_id": "C1", "at": at}, "outside the allowed window of 24 h")
    _refused(DecideBatchRequest, {"customers": [{"customer_id": "C1"}], "at": at}, "NEXTTOUCH_AT_WINDOW_HOURS")


def test_at_inside_the_window_is_taken() -> None:
    for offset in (timedelta(hours=-23), timedelta(0), timedelta(hours=23)):
        at = NOW + offset
        body = DecideRequest.model_validate({"customer_id": "C1", "at": at.isoformat()}, context=BOUNDS.context())
        assert body.at == at


def test_events_older_than_the_configured_age_are_refused() -> None:
    event = {"event_id": "e1", "customer_id": "C1", "touch_type": "app_like"}
    old = (NOW - timedelta(days=731)).isoformat()
    _refused(EventsRequest, {"events": [{**event, "occurred_at": old}]}, "more than 730 days ago")
    recent = (NOW - timedelta(days=700)).isoformat()
    EventsRequest.model_validate({"events": [{**event, "occurred_at": recent}]}, context=BOUNDS.context())


@pytest.mark.parametrize("outcome", [True, False, 1.0, 0.0, "1", None])
def test_feedback_outcome_is_the_integer_0_or_1_only(outcome: object) -> None:
    _refused(FeedbackRequest, {"decision_id": "d1", "outcome": outcome}, "outcome")


def test_feedback_outcome_in_the_future_is_refused() -> None:
    later = (NOW + timedelta(hours=1)).isoformat()
    _refused(FeedbackRequest, {"decision_id": "d1", "outcome": 1, "at": later}, "at is in the future")
    assert FeedbackRequest.model_validate({"decision_id": "d1", "outcome": 0}).outcome == 0


PHONES = [
    "07946095811",
    "00447946095822",
    "+447946095800",
    "+44 20 7946 0958",
    "+44 (0) 20 7946 0958",
    "020 7946 0958",
    "(030) 1234-5678",
    "0049 30 12345678",
    "+1 (212) 555-0123",
    "212-555-0123",
    "(212) 555 0123",
    "06 12 34 56 78",
]
NOT_PHONES = [
    "C0000001",
    "crm-00001a2b",
    "app-00001234",
    "ev-0123456789",
    "0193a7b2c3d4e5f67a8b9c0d1e2f3a4b",
    "2026-11-01 10:00:00",
    "2026-11-01T09:30:00+01:00",
    "12345678",
    "0000123456",  # a zero-padded numeric id
    "0.1234567891",
    "summer-2026",
]


@pytest.mark.parametrize("phone", PHONES)
def test_phone_numbers_national_and_international_are_found(phone: str) -> None:
    assert personal_data.find(phone) == "a phone number"
    assert personal_data.find(f"call me on {phone}.") == "a phone number"


@pytest.mark.parametrize("value", NOT_PHONES)
def test_ids_dates_and_numbers_are_not_phone_numbers(value: str) -> None:
    assert personal_data.find(value) is None


def test_the_projects_own_ids_are_not_personal_data() -> None:
    from serving.decision_log import new_decision_ids

    ids = [*customer_ids(2000), *new_decision_ids(2000), *(f"crm-{n:08x}" for n in range(0, 2**32, 2**20))]
    assert not personal_data.mask(pd.Series(ids)).any()
    assert personal_data.mask(pd.Series([*PHONES, "jane.doe@example.com", None, "C1"])).tolist() == [True] * 13 + [
        False,
        False,
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"customer_id": "07946095811"},
        {"customer_id": "00447946095822"},
        {"source": {"system": "crm", "key": "07946095866"}},
        {"customer_id": "C1", "context": {"note": "call me on 07946095844"}},
    ],
)
def test_phone_numbers_are_refused_as_ids_keys_and_context(body: dict) -> None:
    _refused(DecideRequest, body, "personal data is refused")


@pytest.mark.parametrize(
    ("context", "needle"),
    [
        ({"note": "a\x00b"}, "control character"),
        ({"n\x00": "b"}, "control character"),
        ({"note": "Jane Doe"}, "free text"),
        ({"note": "please call Jane tomorrow"}, "free text"),
    ],
)
def test_context_labels_are_printable_single_words(context: dict, needle: str) -> None:
    _refused(DecideRequest, {"customer_id": "C1", "context": context}, needle)


def test_labels_with_dates_and_dashes_pass() -> None:
    context = {"campaign": "summer-2026", "seen": "2026-11-01 10:00:00", "ref": "12345678", "at": "a@b"}
    assert DecideRequest.model_validate({"customer_id": "C1", "context": context}).context == context
