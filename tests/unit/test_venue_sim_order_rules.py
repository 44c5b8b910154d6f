"""The simulator refuses what Binance refuses: one-way orders in hedge mode (-4061), LIMIT prices
outside the PERCENT_PRICE band around the mark (-4016 above, -4024 below); and its exchangeInfo lists
TAKE_PROFIT_MARKET, so risk lets an operator's take-profit through to the simulator."""

from __future__ import annotations

import asyncio
from decimal import Decimal as D
from types import SimpleNamespace
from typing import Any

import pytest

from libs.clock import ManualClock
from libs.instruments import PERCENT_PRICE, parse_exchange_info, validate
from proto.enums import OrderSource, OrderType, Side
from proto.messages import SubmitOrder
from services.venue_sim.domain import BinanceError
from services.venue_sim.domain.book import OrderBook
from services.venue_sim.domain.exchange import Exchange
from services.venue_sim.domain.limits import UsageLimits
from services.venue_sim.domain.rules import spec_for
from services.venue_sim.routes.rest_account_modes import AccountModeRoutes
from services.venue_sim.routes.rest_market import MarketRoutes

LIMIT = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.010"}


def _exchange(mark: str = "60000") -> Exchange:
    book = OrderBook("BTCUSDT")
    book.reset([(D("59999.9"), D("5"))], [(D("60000.1"), D("5"))], 1)
    exchange = Exchange(
        ManualClock(1_700_000_000_000_000_000), {"BTCUSDT": spec_for("BTCUSDT")}, {"BTCUSDT": book}, D(10) ** 9
    )
    exchange.on_mark_price("BTCUSDT", D(mark))
    return exchange


def _code(exchange: Exchange, params: dict[str, str]) -> int:
    with pytest.raises(BinanceError) as raised:
        exchange.place_order(params)
    assert raised.value.status == 400
    return raised.value.code


def _ctx(exchange: Exchange) -> Any:
    return SimpleNamespace(
        exchange=exchange,
        engine=SimpleNamespace(feed=None, hub=None),
        now_ms=lambda: 0,
        limits=UsageLimits(exchange.clock),
        log=SimpleNamespace(info=lambda *a, **k: None),
    )


def _operator_order(**fields: Any) -> SubmitOrder:
    base: dict[str, Any] = {"source": OrderSource.OPERATOR, "symbol": "BTCUSDT", "side": Side.BUY}
    return SubmitOrder(client_order_id="op-1", idempotency_key="op-1", quantity=D("0.010"), **{**base, **fields})


def test_order_when_hedge_mode_then_one_way_order_4061_and_one_way_mode_takes_it() -> None:
    exchange = _exchange()
    modes = AccountModeRoutes(_ctx(exchange))
    body = asyncio.run(modes.set_position_mode(None, {"dualSidePosition": "true"}))  # type: ignore[arg-type]
    assert body == {"code": 200, "msg": "success"}
    assert _code(exchange, {**LIMIT, "price": "59000"}) == -4061
    assert _code(exchange, {**LIMIT, "price": "59000", "positionSide": "BOTH"}) == -4061
    # Conditional orders of the Algo Service as well, and nothing was recorded.
    algo = {"symbol": "BTCUSDT", "side": "SELL", "type": "STOP_MARKET", "quantity": "0.010"}
    with pytest.raises(BinanceError) as raised:
        exchange.place_algo({**algo, "algoType": "CONDITIONAL", "triggerPrice": "59000"}, None)
    assert raised.value.code == -4061
    assert not exchange.orders and not exchange.algo.orders
    # Hedge-mode positions are not simulated: refused, never filled as one-way.
    assert _code(exchange, {**LIMIT, "price": "59000", "positionSide": "LONG"}) == -4084

    asyncio.run(modes.set_position_mode(None, {"dualSidePosition": "false"}))  # type: ignore[arg-type]
    order, _ = exchange.place_order({**LIMIT, "price": "59000"})
    assert order.status == "NEW"
    assert _code(exchange, {**LIMIT, "price": "59000", "positionSide": "SHORT"}) == -4061
    assert _code(exchange, {**LIMIT, "price": "59000", "positionSide": "UP"}) == -4060


@pytest.mark.parametrize(
    ("side", "price", "code"),
    [("BUY", "63000.1", -4016), ("SELL", "63000.1", -4016), ("BUY", "56999.9", -4024), ("SELL", "56999.9", -4024)],
)
def test_limit_when_outside_percent_price_band_then_refused_with_binance_code(side: str, price: str, code: int) -> None:
    exchange = _exchange()
    assert _code(exchange, {**LIMIT, "side": side, "price": price}) == code
    assert not exchange.orders


def test_limit_when_on_the_band_edges_or_market_then_accepted() -> None:
    exchange = _exchange()
    for side, price in (("BUY", "63000.0"), ("SELL", "63000.0"), ("BUY", "57000.0"), ("SELL", "57000.0")):
        order, _ = exchange.place_order({**LIMIT, "side": side, "price": price})
        assert order.order_id in exchange.orders
    market, _ = exchange.place_order({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.010"})
    assert market.status == "FILLED"


def test_band_when_mark_moves_then_follows_the_mark_and_message_names_the_cap() -> None:
    exchange = _exchange("50000")
    with pytest.raises(BinanceError) as raised:
        exchange.place_order({**LIMIT, "price": "53000"})
    assert (raised.value.code, raised.value.msg) == (-4016, "Limit price can't be higher than 52500.0.")


def test_exchange_info_when_read_by_risk_then_take_profit_market_allowed_and_band_matches() -> None:
    exchange = _exchange()
    body = asyncio.run(MarketRoutes(_ctx(exchange)).exchange_info(None, {}))  # type: ignore[arg-type]
    entry = body["symbols"][0]
    assert entry["orderTypes"] == ["LIMIT", "MARKET", "STOP_MARKET", "TAKE_PROFIT_MARKET"]
    rules = parse_exchange_info(body, venue="binance-usdm")["BTCUSDT"]
    take_profit = _operator_order(
        side=Side.SELL, order_type=OrderType.TAKE_PROFIT_MARKET, stop_price=D("61000.0"), reduce_only=True
    )
    assert validate(take_profit, rules, D(60000)) is None
    # Risk's band is the simulator's: what one refuses, the other does.
    too_high = _operator_order(order_type=OrderType.LIMIT, price=D("63000.1"))
    violation = validate(too_high, rules, D(60000))
    assert violation is not None and violation.rule == PERCENT_PRICE
    assert _code(exchange, {**LIMIT, "price": "63000.1"}) == -4016
