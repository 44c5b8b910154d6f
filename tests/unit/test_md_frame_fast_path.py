"""Venue decimals on the fast path of `services.market_data.frames`: a short plain decimal is bounded
by its length alone, and whatever path a value takes, the answer is the full check's answer."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.market_data import frames
from services.market_data.frames import BadFrame, bounded_decimal, parse_depth_event, parse_levels

FULL_PATTERN = re.compile(r"-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?|-?\.[0-9]+([eE][-+]?[0-9]+)?")


def _reference(raw: Any) -> Decimal:
    """Every bound checked on every value, as the frames were parsed before the fast path."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise BadFrame("not a decimal")
    text = str(raw)
    if len(text) > frames.MAX_NUMBER_TEXT or not FULL_PATTERN.fullmatch(text):
        raise BadFrame("not a decimal")
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise BadFrame("not a decimal") from exc
    if not value:
        return Decimal(0)
    if len(value.as_tuple().digits) > frames.MAX_DIGITS or abs(value.adjusted()) > frames.MAX_ADJUSTED_EXPONENT:
        raise BadFrame("out of range")
    return value


def _outcome(function: Any, raw: Any) -> tuple[str, str]:
    try:
        value = function(raw)
    except BadFrame:
        return ("refused", "")
    return ("value", repr(value))


venue_text = st.text(alphabet="0123456789.-+eE _٣\x00", max_size=45) | st.from_regex(
    r"\A0\.0{0,40}1\Z|\A[1-9][0-9]{0,40}(\.[0-9]{0,12})?\Z"
)


@settings(max_examples=500, deadline=None)
@given(venue_text)
def test_bounded_decimal_when_any_text_then_same_answer_as_every_bound_checked(text: str) -> None:
    assert _outcome(lambda raw: bounded_decimal(raw, "value"), text) == _outcome(_reference, text)
    level = [text, "1.5"]
    try:
        parsed: Any = parse_levels([level])
    except BadFrame:
        parsed = "refused"
    try:
        expected: Any = [(_reference(text), Decimal("1.5"))]
        if expected[0][0] <= 0:
            expected = "refused"
    except BadFrame:
        expected = "refused"
    assert parsed == expected


@pytest.mark.parametrize(
    "text",
    ["0.000000000000000000000000000001", "1" + "0" * 30, "0." + "0" * 29 + "1", "-0.1", "1e5", "NaN", "1_0", " 1"],
)
def test_bounded_decimal_when_at_the_edges_then_same_answer(text: str) -> None:
    assert _outcome(lambda raw: bounded_decimal(raw, "value"), text) == _outcome(_reference, text)


def test_depth_frame_when_plain_prices_then_no_regex_per_value(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class Counting:
        def fullmatch(self, text: str) -> Any:
            calls.append(text)
            return FULL_PATTERN.fullmatch(text)

    monkeypatch.setattr(frames, "_DECIMAL_TEXT", Counting())
    frame = {
        "e": "depthUpdate",
        "E": 1723100000000,
        "s": "BTCUSDT",
        "U": 10,
        "u": 12,
        "pu": 9,
        "b": [["60000.1", "0.500"], ["59999.9", "0.000"]],
        "a": [["60000.2", "1.25"]],
    }
    event = parse_depth_event(frame)
    assert event.bids == [(Decimal("60000.1"), Decimal("0.500")), (Decimal("59999.9"), Decimal(0))]
    assert calls == []
    # A value off the fast path still gets the full check.
    with pytest.raises(BadFrame):
        parse_depth_event({**frame, "a": [["1e-40", "1"]]})
    assert calls == ["1e-40"]
