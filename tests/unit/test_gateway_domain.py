"""Gateway pure rules: roles, order validation, fingerprints, idempotency verdicts, cursors."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from libs.settings import Settings
from proto.enums import OrderStatus
from proto.messages import OrderAccepted, OrderDenied, OrderFilled, OrderRejected, SubmitOrder
from services.gateway.api_models import DeadLetterRetryRequest, OrderRequest, parse_control_body
from services.gateway.auth import Principal, Role, TokenTable, authorize, parse_api_tokens, role_for_token
from services.gateway.domain import (
    Outcome,
    decode_cursor,
    encode_cursor,
    fingerprint,
    is_settled,
    judge_record,
    outcome_of,
    parse_dead_letter_status,
    parse_order_status,
    reason_class,
    verdict_error,
)
from services.gateway.errors import ApiError
from services.gateway.queries import DeadLetterFilter

SETTINGS = Settings(admin_token="a", operator_token="o", viewer_token="v")


@pytest.mark.parametrize(
    ("token", "required", "expected"),
    [
        ("a", Role.OPERATOR, Role.ADMIN),
        ("o", Role.OPERATOR, Role.OPERATOR),
        ("v", Role.VIEWER, Role.VIEWER),
        ("a", Role.VIEWER, Role.ADMIN),
    ],
)
def test_authorize_when_role_sufficient_then_role_returned(token: str, required: Role, expected: Role) -> None:
    principal = authorize(f"Bearer {token}", required, SETTINGS)

    assert principal.role == expected and principal.name == expected.label


@pytest.mark.parametrize(
    ("header", "required", "status"),
    [
        (None, Role.VIEWER, 401),
        ("", Role.VIEWER, 401),
        ("Basic a", Role.VIEWER, 401),
        ("Bearer nope", Role.VIEWER, 401),
        ("Bearer v", Role.OPERATOR, 403),
        ("Bearer o", Role.ADMIN, 403),
    ],
)
def test_authorize_when_token_missing_or_weak_then_401_or_403(header: str | None, required: Role, status: int) -> None:
    with pytest.raises(ApiError) as error:
        authorize(header, required, SETTINGS)

    assert error.value.status == status
    assert set(error.value.body()["error"]) == {"code", "message", "details"}


def test_role_for_token_when_tokens_unset_then_empty_token_never_matches() -> None:
    assert role_for_token("", Settings()) is None


def test_order_request_normalises_symbol_and_canonical_form() -> None:
    one = OrderRequest.model_validate({"symbol": "btcusdt", "side": "BUY", "type": "MARKET", "quantity": "1.0"})
    two = OrderRequest.model_validate({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "1"})

    assert one.symbol == "BTCUSDT"
    assert one.canonical() == two.canonical()
    assert fingerprint(one.canonical()) == fingerprint(two.canonical())
    assert one.canonical()["quantity"] == "1"


def test_fingerprint_when_any_field_differs_then_differs() -> None:
    base = OrderRequest.model_validate(
        {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "1", "price": "10"}
    )
    other = base.model_copy(update={"price": Decimal("11")})

    assert fingerprint(base.canonical()) != fingerprint(other.canonical())
    assert len(fingerprint(base.canonical())) == 64


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"side": "BUY", "type": "MARKET", "quantity": "1"}, "symbol"),
        ({"symbol": "BTC-USDT", "side": "BUY", "type": "MARKET", "quantity": "1"}, "symbol"),
        ({"symbol": "BTCUSDT", "side": "HOLD", "type": "MARKET", "quantity": "1"}, "side"),
        ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0"}, "quantity"),
        ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "abc"}, "quantity"),
        ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "NaN"}, "quantity"),
        ({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "1", "price": "-1"}, "price"),
        ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "1", "extra": 1}, "extra"),
    ],
)
def test_order_request_when_field_invalid_then_error_names_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as error:
        OrderRequest.model_validate(body)

    assert field in {str(part) for e in error.value.errors() for part in e["loc"]}


@pytest.mark.parametrize(
    "body",
    [
        {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "1"},
        {"symbol": "BTCUSDT", "side": "SELL", "type": "STOP_MARKET", "quantity": "1", "price": "5"},
    ],
)
def test_order_request_when_type_lacks_its_price_then_invalid(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        OrderRequest.model_validate(body)


def test_judge_record_rules() -> None:
    done = {"state": "done", "fingerprint": "f", "response": {"status": "NEW"}, "http_status": 201}

    assert judge_record(None, "f").action == "proceed"
    assert judge_record(done, "f").action == "replay"
    assert judge_record(done, "f").http_status == 201
    assert judge_record(done, "g").action == "conflict"
    assert judge_record({"state": "in_progress", "fingerprint": "f"}, "f").action == "in_progress"
    assert judge_record({"state": "in_progress", "fingerprint": "f"}, "g").action == "conflict"


def test_verdict_error_codes() -> None:
    conflict = verdict_error(judge_record({"state": "done", "fingerprint": "x", "response": {}}, "y"))
    busy = verdict_error(judge_record({"state": "in_progress", "fingerprint": "y"}, "y"))

    assert conflict is not None and (conflict.status, conflict.code) == (409, "idempotency_key_reused")
    assert busy is not None and (busy.status, busy.code) == (409, "request_in_progress")
    assert verdict_error(judge_record(None, "y")) is None


def test_cursor_round_trip_and_tampering() -> None:
    cursor = encode_cursor(123, "bwabc")

    assert decode_cursor(cursor, (int, str)) == [123, "bwabc"]
    for bad in ("zzz", "", encode_cursor("x", "y"), encode_cursor(1), "!!!!"):
        with pytest.raises(ApiError) as error:
            decode_cursor(bad, (int, str))
        assert error.value.status == 400


def test_parse_order_status() -> None:
    assert parse_order_status("filled") == OrderStatus.FILLED
    assert parse_order_status(None) is None
    with pytest.raises(ApiError) as error:
        parse_order_status("bogus")
    assert error.value.status == 422


def test_outcome_of_maps_events_for_this_order_only() -> None:
    order = SubmitOrder(
        client_order_id="c1",
        idempotency_key="k",
        source="OPERATOR",
        symbol="X",
        side="BUY",
        order_type="MARKET",
        quantity=Decimal(2),
    )
    fill = OrderFilled(
        client_order_id="c1",
        venue_order_id=1,
        trade_id=1,
        symbol="X",
        side="BUY",
        price=Decimal(1),
        quantity=Decimal(1),
        cumulative_quantity=Decimal(1),
        order_quantity=Decimal(2),
    )

    denied = outcome_of(OrderDenied(order=order, reason="halted"), "c1")
    assert denied is not None and (denied.status, denied.reason) == (OrderStatus.DENIED, "halted")
    rejected = outcome_of(OrderRejected(client_order_id="c1", symbol="X", reason="-2010"), "c1")
    assert rejected is not None and rejected.status == OrderStatus.REJECTED
    accepted = outcome_of(OrderAccepted(client_order_id="c1", venue_order_id=1, symbol="X", status="NEW"), "c1")
    assert accepted is not None and accepted.status == OrderStatus.NEW
    partial = outcome_of(fill, "c1")
    assert partial is not None and partial.status == OrderStatus.PARTIALLY_FILLED
    assert partial.filled_quantity == Decimal(1)
    assert outcome_of(OrderRejected(client_order_id="c2", symbol="X", reason="r"), "c1") is None


def test_is_settled_when_accepted_as_filled_without_quantity_then_waits_for_the_fills() -> None:
    assert not is_settled(Outcome(status=OrderStatus.FILLED))
    assert not is_settled(Outcome(status=OrderStatus.PARTIALLY_FILLED))
    assert is_settled(Outcome(status=OrderStatus.FILLED, filled_quantity=Decimal("0.002")))
    assert is_settled(Outcome(status=OrderStatus.NEW))
    assert is_settled(Outcome(status=OrderStatus.DENIED, reason="HALTED"))


# --------------------------------------------------------------------------- named tokens


def test_authorize_when_named_token_then_principal_carries_the_name() -> None:
    settings = Settings(admin_token="a", api_tokens="alice:operator:tok:with:colons, bob:viewer:b0b")
    table = TokenTable(settings)

    alice = authorize("Bearer tok:with:colons", Role.OPERATOR, table)
    admin = authorize("Bearer a", Role.ADMIN, table)
    with pytest.raises(ApiError) as weak:
        authorize("Bearer b0b", Role.OPERATOR, table)

    assert alice == Principal("alice", Role.OPERATOR)
    assert admin == Principal("admin", Role.ADMIN)
    assert weak.value.status == 403


@pytest.mark.parametrize(
    "spec",
    ["alice:operator", "alice:king:tok", ":operator:tok", "a b:operator:tok", "x:viewer:t,y:viewer:t"],
)
def test_parse_api_tokens_when_malformed_then_value_error(spec: str) -> None:
    with pytest.raises(ValueError, match="BULWARK_API_TOKENS"):
        parse_api_tokens(spec)


def test_parse_api_tokens_when_empty_entries_then_ignored() -> None:
    assert parse_api_tokens(" , ,") == {}
    assert parse_api_tokens("ops-1:ADMIN:s3cret") == {"s3cret": Principal("ops-1", Role.ADMIN)}


# --------------------------------------------------------------------------- control bodies


@pytest.mark.parametrize(
    ("raw", "content_type", "reason"),
    [
        (b"", None, ""),
        (b"  ", "application/json", ""),
        (b'{"reason": "maintenance"}', "application/json", "maintenance"),
        (b'{"reason": "curl -d"}', "application/x-www-form-urlencoded", "curl -d"),
        (b'{"reason": "no header"}', None, "no header"),
        (b'{"reason": "text"}', "text/plain", "text"),
        (b"reason=form+post", "application/x-www-form-urlencoded", "form post"),
        (b"null", "application/json", ""),
    ],
)
def test_parse_control_body_when_any_content_type_then_reason_read(
    raw: bytes, content_type: str | None, reason: str
) -> None:
    assert parse_control_body(raw, content_type).reason == reason


@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        (b"{broken", "application/json", 400),
        (b'{"why": "x"}', "application/json", 422),
        (b'{"reason": "' + b"x" * 600 + b'"}', None, 422),
        (b"[1]", None, 422),
        (b"--b\r\n", "multipart/form-data; boundary=b", 415),
    ],
)
def test_parse_control_body_when_bad_then_clear_error(raw: bytes, content_type: str | None, status: int) -> None:
    with pytest.raises(ApiError) as error:
        parse_control_body(raw, content_type)

    assert error.value.status == status


# --------------------------------------------------------------------------- dead-letter selection


def test_dead_letter_filter_when_fields_set_then_where_clause_and_args_line_up() -> None:
    args: list[object] = ["earlier"]
    selection = DeadLetterFilter(
        operation="cmd.order", reason="50%_off", status="PENDING", since_ns=5, until_ns=9, before_id=100
    )

    where = selection.where(args)

    assert where == (
        "WHERE (consumer = $2 OR starts_with(subject, $2)) AND reason ILIKE $3 AND status = $4 "
        "AND created_ns >= $5 AND created_ns < $6 AND id < $7"
    )
    assert args == ["earlier", "cmd.order", "%50\\%\\_off%", "PENDING", 5, 9, 100]
    assert DeadLetterFilter().where([]) == "" and DeadLetterFilter().empty


def test_dead_letter_retry_request_when_nothing_selected_then_refused() -> None:
    with pytest.raises(ValidationError):
        DeadLetterRetryRequest.model_validate({})

    by_ids = DeadLetterRetryRequest.model_validate({"ids": [3, 1, 3]}).filter()
    by_filter = DeadLetterRetryRequest.model_validate({"consumer": "risk-orders"}).filter()
    everything = DeadLetterRetryRequest.model_validate({"all": True}).filter()

    assert by_ids == DeadLetterFilter(ids=(3, 1))
    assert by_filter == DeadLetterFilter(consumer="risk-orders", status="PENDING")
    assert everything == DeadLetterFilter(status="PENDING")


def test_parse_dead_letter_status_and_reason_class() -> None:
    assert parse_dead_letter_status("pending") == "PENDING" and parse_dead_letter_status(None) is None
    with pytest.raises(ApiError):
        parse_dead_letter_status("LOST")
    assert reason_class("permanent: bad order") == "permanent"
    assert reason_class("TimeoutError: x: y") == "TimeoutError"
    assert reason_class("") == "unknown"
