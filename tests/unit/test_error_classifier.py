"""Every real Binance error response in data/binance is classified into its failure-mode class."""

from __future__ import annotations

import json

import pytest

from libs.binance.classify import call_with_retries, classify, classify_venue_error, retry_policy
from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
from libs.recordings import RECORDINGS_DIR
from proto.enums import ErrorClass

ERRORS = RECORDINGS_DIR / "error_responses.jsonl"

EXPECTED = {
    -1021: (ErrorClass.RECOVERABLE, "clock_skew"),
    -4003: (ErrorClass.PERMANENT, "invalid_order"),
    -4164: (ErrorClass.PERMANENT, "invalid_order"),
}


def _recorded() -> list[tuple[int | None, int | None, str]]:
    rows = []
    for line in ERRORS.read_text().splitlines():
        record = json.loads(line)
        if "body" in record:
            body = json.loads(record["body"])
            rows.append((record["http_status"], body["code"], body["msg"]))
        else:
            rows.append((record["http_status"], record["code"], record["body_msg_only"]))
    return rows


def test_classify_when_each_recorded_response_then_spec_class() -> None:
    rows = _recorded()
    assert len(rows) == 6
    for status, code, msg in rows:
        found = classify_venue_error(status, code, msg)
        if code == -1003:
            # Rate limit (429) or IP ban (418, "banned"): both back off, neither is dead-lettered.
            assert found.error_class is ErrorClass.RECOVERABLE
            assert found.reason == ("ip_banned" if "banned" in msg else "rate_limited")
        else:
            assert (found.error_class, found.reason) == EXPECTED[code], (status, code, msg)


@pytest.mark.parametrize(
    ("status", "code", "error_class", "reason", "ambiguous"),
    [
        (401, -2015, ErrorClass.PERMANENT, "auth", False),
        (401, -2014, ErrorClass.PERMANENT, "auth", False),
        (400, -1022, ErrorClass.PERMANENT, "auth", False),
        (400, -2010, ErrorClass.PERMANENT, "invalid_order", False),
        (400, -2011, ErrorClass.PERMANENT, "unknown_order", False),
        (400, -2013, ErrorClass.PERMANENT, "unknown_order", False),
        (400, -2019, ErrorClass.PERMANENT, "insufficient_funds", False),
        (429, -1015, ErrorClass.RECOVERABLE, "rate_limited", False),
        (418, -1003, ErrorClass.RECOVERABLE, "ip_banned", False),
        (503, -1006, ErrorClass.TRANSIENT, "ambiguous_outcome", True),
        (408, -1007, ErrorClass.TRANSIENT, "ambiguous_outcome", True),
        (502, None, ErrorClass.TRANSIENT, "venue_5xx", True),
    ],
)
def test_classify_when_documented_code_then_spec_class(
    status: int, code: int | None, error_class: ErrorClass, reason: str, ambiguous: bool
) -> None:
    found = classify(VenueError(status, code, "x"))
    assert (found.error_class, found.reason, found.ambiguous) == (error_class, reason, ambiguous)


def test_classify_when_transport_failure_then_timeout_is_ambiguous_and_refused_is_not() -> None:
    assert classify(VenueTimeout()).ambiguous
    assert not classify(VenueUnreachable()).ambiguous
    assert classify(OSError(28, "No space left on device")).error_class is ErrorClass.CRITICAL


async def test_transient_policy_when_ambiguous_then_never_retried() -> None:
    calls = 0

    async def place() -> None:
        nonlocal calls
        calls += 1
        raise VenueTimeout()

    with pytest.raises(VenueTimeout):
        await retry_policy(ErrorClass.TRANSIENT)(place)
    assert calls == 1


async def test_recoverable_policy_when_rate_limited_then_retries_and_succeeds() -> None:
    calls = 0

    async def query() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise VenueError(429, -1003, "Too many requests")
        return "ok"

    assert await retry_policy(ErrorClass.RECOVERABLE)(query) == "ok"
    assert calls == 3


async def test_call_with_retries_when_permanent_then_one_attempt() -> None:
    calls = 0

    async def query() -> None:
        nonlocal calls
        calls += 1
        raise VenueError(401, -2015, "Invalid API-key")

    with pytest.raises(VenueError):
        await call_with_retries(query)
    assert calls == 1


async def test_call_with_retries_when_given_a_lambda_then_awaits_and_retries_it() -> None:
    calls = 0

    async def query(symbol: str) -> str:
        nonlocal calls
        calls += 1
        if calls < 2:
            raise VenueUnreachable()
        return symbol

    assert await call_with_retries(lambda: query("BTCUSDT")) == "BTCUSDT"
    assert calls == 2
