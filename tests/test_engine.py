"""The decision engine with an injected model: scoring, answers and their JSON, one formatting."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from nexttouch.api import DecideBatchResponse, DecideResponse
from nexttouch.catalog import Catalog
from nexttouch.engine import DecisionEngine, FallbackCause, from_frame, from_row
from nexttouch.engine.answer import FIELDS, rounded
from nexttouch.engine.reasons import plain
from nexttouch.model import DecisionModel
from tests.test_decisions import ACTIVE, CALLER, _prefers_call

NOON = datetime(2026, 11, 2, 12, tzinfo=UTC)


def test_one_customer_scores_like_the_model_on_a_frame(catalog: Catalog, model: DecisionModel) -> None:
    rows = [
        ACTIVE,
        {"tech_in_30d": None, "push_opt_in": 1, "call_consent": None, "region": None},
        {"tech_in_30d": 7.5, "push_opt_in": 0, "call_consent": 1, "region": "atlantis"},  # unknown level
        {"tech_in_30d": "12", "push_opt_in": True, "call_consent": 0, "region": "south"},  # coerced like pandas
        {"region": "north"},  # missing features
    ]
    engine = DecisionEngine(catalog, model, "7", epsilon=0.0)
    frame = pd.DataFrame(rows).reindex(columns=model.inputs)
    expected = model.predict_all(frame)[:, [model.actions.index(a) for a in catalog.names]]
    for i, row in enumerate(rows):
        draft = engine.draft(["C"], from_row(row), NOON)
        np.testing.assert_allclose(
            draft.x[0], model.encode_columns(frame.iloc[[i]], model.numeric, model.categorical)[0]
        )
        np.testing.assert_allclose(draft.p[0], expected[i], rtol=1e-12)
    many = engine.draft(["C"] * len(rows), from_frame(frame), NOON)
    np.testing.assert_allclose(many.p, expected, rtol=1e-12)


def test_answers_are_the_response_models_json(catalog: Catalog, model: DecisionModel) -> None:
    """The service writes the answers to JSON directly: the same bytes as the validated response model."""
    from pydantic_core import to_json

    assert tuple(DecideResponse.model_fields) == FIELDS
    rows = [{**CALLER, "tech_in_30d": float(t)} for t in range(6)] + [ACTIVE, {**ACTIVE, "push_opt_in": 0.0}]
    at = datetime(2026, 11, 2, 13, 45, 10, 250_000, tzinfo=ZoneInfo("Europe/Paris"))
    engine = DecisionEngine(_prefers_call(catalog), model, "7", epsilon=0.3, seed=2)
    granted = iter([1, 0, 0, 0, 0, 0, 0, 0])
    causes = [None] * 7 + [FallbackCause.UNKNOWN_CUSTOMER]
    answers = engine.decide(
        [f"C{i}" for i in range(8)],
        from_frame(pd.DataFrame(rows)),
        at,
        [f"{i:032x}" for i in range(8)],
        take=lambda _a, _b, _at, want: min(want, next(granted)),
        causes=causes,
    )
    body = to_json({"decisions": answers})
    assert body == DecideBatchResponse.model_validate({"decisions": answers}).model_dump_json().encode()
    assert [a["fallback"] for a in answers] == [False] * 7 + [True]
    assert any("no capacity left" in r for a in answers for r in a["reasons"])


def test_only_one_eligible_action_is_said_plainly(catalog: Catalog, model: DecisionModel) -> None:
    strict = Catalog(actions=tuple(a.model_copy(update={"defer_quiet_hours": False}) for a in catalog.actions))
    engine = DecisionEngine(strict, model, "7", epsilon=0.0)
    night = datetime(2026, 11, 2, 23, tzinfo=UTC)  # no push, no call; the invite is capped
    row = {**ACTIVE, "low_out_30d": 5.0}
    (answer,) = engine.decide(["C1"], from_row(row), night, ["x"])
    assert answer["eligible"] == ["none"]
    assert "none is the only eligible action" in answer["reasons"]
    assert "highest net value" not in " ".join(answer["reasons"])
    (choice,) = [e for e in answer["explanation"] if e["code"] == "only_eligible"]
    assert (choice["action"], choice["value"]) == ("none", 0.0)
    removed = {
        e["action"]: (e["code"], e["feature"], e["value"]) for e in answer["explanation"] if "removed" in e["text"]
    }
    assert removed == {
        "push": ("quiet_hours", "time_zone", "UTC"),
        "event_invite": ("frequency_cap", "low_out_30d", 5.0),
        "advisor_call": ("quiet_hours", "time_zone", "UTC"),
    }
    assert "event_invite removed: 5 event invitations in the last 30 days (at most 2)" in answer["reasons"]


def test_feature_values_read_the_same_in_every_answer() -> None:
    assert [plain(v) for v in (25, 25.0, 1502.0, 1502.4, 2.2663194444444446, 0.5, "north", np.float32(3.0))] == [
        "25",
        "25",
        "1502",
        "1502",
        "2.27",
        "0.5",
        "north",
        "3",
    ]
    assert plain(float("nan")) == "missing"


def test_rounded_is_pythons_round() -> None:
    """Vectorised rounding gives exactly Python's round, half-way cases and scaling errors included."""
    rng = np.random.default_rng(4)
    halves = (np.arange(-20_000, 20_000) + 0.5) / 10_000  # x.xxxx5: scaling by 1e4 lands on both sides
    special = [0.00015, 2.675, 1.00005, -0.00005, 12.34565, 1e20, -1e-20, 0.0, -0.0, np.nan, np.inf, -np.inf]
    values = np.concatenate([rng.random(50_000), rng.normal(0, 500, 50_000), halves, halves / 100, special])
    for digits in (4, 6):
        got = rounded(values.reshape(-1, 2), digits).ravel()
        want = np.array([round(float(v), digits) for v in values])
        np.testing.assert_array_equal(got, want)
        assert (np.signbit(got) == np.signbit(want)).all()  # -0.0 stays -0.0
    assert rounded(np.array([1.99975]), 4)[0] == round(1.99975, 4) == 1.9997 != np.round(1.99975, 4)  # numpy's own


def test_a_retried_allocation_starts_over(catalog: Catalog, model: DecisionModel) -> None:
    """A log transaction that fails and runs again must not see the first attempt's capacity refusals."""
    engine = DecisionEngine(_prefers_call(catalog), model, "7", epsilon=0.0)
    draft = engine.draft(["A", "B"], from_frame(pd.DataFrame([CALLER, CALLER])), NOON)
    engine.allocate(draft, lambda _a, _b, _at, _want: 0)
    assert draft.refused
    engine.allocate(draft, lambda _a, _b, _at, want: want)
    assert not draft.refused
    assert [catalog.names[j] for j in draft.choice.action] == ["advisor_call", "advisor_call"]
