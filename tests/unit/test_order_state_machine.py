"""The order state machine of the position service."""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.orders_model import (
    ORDER_TRANSITIONS,
    IllegalOrderTransition,
    OrderRecord,
    OrderTrigger,
    is_terminal,
    next_order_status,
    venue_trigger,
)
from proto.enums import OrderSource, OrderStatus, OrderType, Side
from services.position.adapters import order_params
from services.position.domain import plan_reconciliation

S = OrderStatus
T = OrderTrigger


def record(status: OrderStatus = S.PENDING_SUBMISSION, **kwargs: object) -> OrderRecord:
    fields: dict = {
        "client_order_id": "bw1",
        "idempotency_key": "k1",
        "source": OrderSource.OPERATOR,
        "venue": "binance-usdm",
        "symbol": "BTCUSDT",
        "side": Side.BUY,
        "order_type": OrderType.MARKET,
        "quantity": Decimal("1"),
        "status": status,
        "created_ns": 1,
        "updated_ns": 1,
    }
    fields.update(kwargs)
    return OrderRecord(**fields)


@pytest.mark.parametrize(
    ("path", "final"),
    [
        ([T.SUBMIT, T.FILL], S.FILLED),
        ([T.SUBMIT, T.ACCEPT, T.PARTIAL_FILL, T.FILL], S.FILLED),
        ([T.SUBMIT, T.AMBIGUOUS, T.FILL], S.FILLED),
        ([T.SUBMIT, T.AMBIGUOUS, T.SUBMIT, T.ACCEPT], S.NEW),
        ([T.SUBMIT, T.ACCEPT, T.REQUEST_CANCEL, T.CANCEL], S.CANCELED),
        ([T.SUBMIT, T.ACCEPT, T.REQUEST_CANCEL, T.FILL], S.FILLED),
        ([T.SUBMIT, T.REJECT], S.REJECTED),
        ([T.SUBMIT, T.NOT_SENT, T.SUBMIT, T.FILL], S.FILLED),
        ([T.DENY], S.DENIED),
    ],
)
def test_apply_when_legal_path_then_reaches_final_status(path: list[OrderTrigger], final: OrderStatus) -> None:
    order = record()
    for step, trigger in enumerate(path):
        order.apply(trigger, 10 + step)
    assert order.status == final
    assert order.updated_ns == 10 + len(path) - 1


@pytest.mark.parametrize("terminal", [S.FILLED, S.CANCELED, S.REJECTED, S.EXPIRED, S.DENIED])
def test_submit_when_terminal_then_illegal(terminal: OrderStatus) -> None:
    assert is_terminal(terminal)
    with pytest.raises(IllegalOrderTransition):
        next_order_status(terminal, T.SUBMIT)


def test_fill_when_already_filled_then_idempotent() -> None:
    assert next_order_status(S.FILLED, T.FILL) == S.FILLED


def test_deny_when_submitted_then_illegal() -> None:
    with pytest.raises(IllegalOrderTransition):
        next_order_status(S.SUBMITTED, T.DENY)


def test_table_when_inspected_then_no_terminal_state_moves_elsewhere() -> None:
    for (status, _trigger), target in ORDER_TRANSITIONS.items():
        if is_terminal(status):
            assert target == status


def test_venue_trigger_when_unrecognised_status_then_ambiguous() -> None:
    assert venue_trigger("FILLED") == T.FILL
    assert venue_trigger("NEW") == T.ACCEPT
    assert venue_trigger("SOMETHING") == T.AMBIGUOUS


def test_add_fill_when_same_trade_twice_then_counted_once() -> None:
    order = record()
    assert order.add_fill(7, Decimal("0.4"), Decimal("100"))
    assert not order.add_fill(7, Decimal("0.4"), Decimal("100"))
    assert order.add_fill(8, Decimal("0.6"), Decimal("110"))
    assert order.filled_quantity == Decimal("1.0")
    assert order.average_price == Decimal("106")
    assert order.remaining == 0


def test_order_params_when_limit_reduce_only_then_binance_names() -> None:
    params = order_params(record(order_type=OrderType.LIMIT, price=Decimal("100.5"), reduce_only=True))
    assert params == {
        "symbol": "BTCUSDT",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": "1",
        "newClientOrderId": "bw1",
        "newOrderRespType": "RESULT",
        "price": "100.5",
        "timeInForce": "GTC",
        "reduceOnly": "true",
    }


def test_plan_reconciliation_when_venue_has_unknown_order_then_adopt_and_resolve_missing() -> None:
    local = {"bwA": record(S.NEW, client_order_id="bwA"), "bwB": record(S.NEW, client_order_id="bwB")}
    venue_open = [{"clientOrderId": "bwA"}, {"clientOrderId": "external-1"}]
    plan = plan_reconciliation(local, venue_open, {"BTCUSDT": Decimal("1")}, {"BTCUSDT": Decimal("2")}, {"bwA", "bwB"})
    assert [o["clientOrderId"] for o in plan.adopt] == ["external-1"]
    assert plan.resolve == ["bwB"]
    assert plan.position_mismatches == {"BTCUSDT": (Decimal("1"), Decimal("2"))}


def test_not_sent_when_unknown_order_not_at_venue_then_back_to_pending_submission() -> None:
    order = record()
    for trigger in (T.SUBMIT, T.AMBIGUOUS, T.NOT_SENT):
        order.apply(trigger, 2)
    assert order.status == S.PENDING_SUBMISSION
