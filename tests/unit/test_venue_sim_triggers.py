"""The simulator's conditional orders (STOP_MARKET, TAKE_PROFIT_MARKET on the mark price) and the
partial-fill fault's cap: what the position service's protective orders are tested against."""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.clock import ManualClock
from services.venue_sim.domain import BinanceError, Exchange, OrderBook
from services.venue_sim.domain.orders import triggers
from services.venue_sim.domain.rules import SymbolSpec, spec_for

D = Decimal


START_NS = 1_700_000_000_000_000_000


def _book() -> OrderBook:
    book = OrderBook("BTCUSDT")
    book.reset(
        [(D("100.0"), D("1.000")), (D("99.9"), D("2.000")), (D("99.8"), D("3.000"))],
        [(D("100.1"), D("1.000")), (D("100.2"), D("2.000")), (D("100.3"), D("3.000"))],
        10,
    )
    return book


def _exchange(book: OrderBook) -> Exchange:
    spec = spec_for("BTCUSDT")
    spec = SymbolSpec("BTCUSDT", "BTC", spec.tick_size, spec.step_size, spec.min_qty, spec.max_qty, D("1"))
    exchange = Exchange(ManualClock(START_NS), {"BTCUSDT": spec}, {"BTCUSDT": book})
    exchange.on_mark_price("BTCUSDT", D("100.05"))
    return exchange


def _order(exchange: Exchange, **params: str) -> dict:
    order, _ = exchange.place_order({"symbol": "BTCUSDT", "newOrderRespType": "RESULT", **params})
    return exchange.order_view(order)


@pytest.mark.parametrize(
    ("order_type", "side", "mark", "expected"),
    [
        ("STOP_MARKET", "SELL", "98", True),
        ("STOP_MARKET", "SELL", "101", False),
        ("STOP_MARKET", "BUY", "101", True),
        ("TAKE_PROFIT_MARKET", "SELL", "101", True),
        ("TAKE_PROFIT_MARKET", "SELL", "98", False),
        ("TAKE_PROFIT_MARKET", "BUY", "98", True),
    ],
)
def test_triggers_when_mark_crosses_stop_then_by_type_and_side(
    order_type: str, side: str, mark: str, expected: bool
) -> None:
    assert triggers(order_type, side, D("100"), D(mark)) is expected


def test_take_profit_when_mark_rises_through_it_then_long_closed_and_stop_expires() -> None:
    exchange = _exchange(_book())
    _order(exchange, side="BUY", type="MARKET", quantity="1.000")
    stop = _order(exchange, side="SELL", type="STOP_MARKET", quantity="1.000", stopPrice="99.0", reduceOnly="true")
    take = _order(
        exchange, side="SELL", type="TAKE_PROFIT_MARKET", quantity="1.000", stopPrice="101.0", reduceOnly="true"
    )
    assert take["workingType"] == "MARK_PRICE" and take["status"] == "NEW"
    exchange.on_mark_price("BTCUSDT", D("101.2"))
    assert exchange.orders[take["orderId"]].status == "FILLED"
    assert exchange.position("BTCUSDT").quantity == 0
    # The stop triggers later on a position that is gone: reduce-only, nothing to fill, expired.
    exchange.on_mark_price("BTCUSDT", D("98.0"))
    assert exchange.orders[stop["orderId"]].status == "EXPIRED"
    assert exchange.position("BTCUSDT").quantity == 0


def test_take_profit_when_mark_already_beyond_then_2021_immediate_trigger() -> None:
    exchange = _exchange(_book())
    _order(exchange, side="BUY", type="MARKET", quantity="1.000")
    with pytest.raises(BinanceError) as refused:
        _order(exchange, side="SELL", type="TAKE_PROFIT_MARKET", quantity="1.000", stopPrice="100.0")
    assert refused.value.code == -2021


def test_partial_fill_cap_when_limit_rests_then_rest_fills_on_a_later_cross() -> None:
    book = _book()
    exchange = _exchange(book)
    order, _ = exchange.place_order(
        {
            "symbol": "BTCUSDT",
            "side": "BUY",
            "type": "LIMIT",
            "timeInForce": "GTC",
            "quantity": "1.000",
            "price": "100.3",
        },
        fill_ratio=D("0.5"),
    )
    assert (order.status, order.executed_qty) == ("PARTIALLY_FILLED", D("0.500"))
    book.apply([], [(D("100.1"), D("5.000"))], 11)
    exchange.on_book_update("BTCUSDT")
    assert (order.status, order.executed_qty) == ("FILLED", D("1.000"))
