"""The venue's rules (`libs.instruments`): parsing `exchangeInfo`, validating an order, rounding it
to the grid; property tests against the simulator's own order checks."""

from __future__ import annotations

import asyncio
from decimal import Decimal as D
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.clock import ManualClock
from libs.instruments import (
    LOT_SIZE,
    MARKET_LOT_SIZE,
    MAX_NUM_ORDERS,
    MIN_NOTIONAL,
    ORDER_TYPE,
    PERCENT_PRICE,
    PRICE_FILTER,
    STATUS,
    RulesParseError,
    parse_exchange_info,
    round_to_grid,
    rounded_or_violation,
    validate,
)
from libs.logging import get_logger
from proto.enums import OrderSource, OrderType, Side
from proto.kv import SymbolRulesValue, decode_value, encode_value
from proto.messages import SignalGenerated, SubmitOrder
from services.strategy.domain import Signal
from services.strategy.signals import IntentPublisher
from services.venue_sim.domain import BinanceError
from services.venue_sim.domain.book import OrderBook
from services.venue_sim.domain.exchange import Exchange
from services.venue_sim.domain.limits import UsageLimits
from services.venue_sim.domain.rules import spec_for
from services.venue_sim.routes.rest_market import MarketRoutes
from tests.unit.test_strategy_apply import MemoryBus

MARK = D("60000")


def _sim_exchange(symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")) -> Exchange:
    specs = {symbol: spec_for(symbol) for symbol in symbols}
    books = {symbol: OrderBook(symbol) for symbol in symbols}
    exchange = Exchange(ManualClock(1_700_000_000_000_000_000), specs, books, initial_balance=D(10) ** 12)
    return exchange


def _sim_exchange_info(exchange: Exchange) -> dict[str, Any]:
    """The simulator's own `GET /fapi/v1/exchangeInfo` body."""
    ctx = SimpleNamespace(
        exchange=exchange,
        engine=SimpleNamespace(feed=None, hub=None),
        now_ms=lambda: 0,
        limits=UsageLimits(exchange.clock),  # exchangeInfo's rateLimits are the simulator's configured limits
    )
    routes = MarketRoutes(ctx)  # type: ignore[arg-type]
    body: dict[str, Any] = asyncio.run(routes.exchange_info(None, {}))  # type: ignore[arg-type]
    return body


SIM = _sim_exchange()
RULES = parse_exchange_info(_sim_exchange_info(SIM), venue="binance-usdm")
BTC = RULES["BTCUSDT"]


def _order(**fields: Any) -> SubmitOrder:
    base: dict[str, Any] = {
        "client_order_id": "c1",
        "idempotency_key": "k1",
        "source": OrderSource.OPERATOR,
        "symbol": "BTCUSDT",
        "side": Side.BUY,
        "order_type": OrderType.MARKET,
        "quantity": D("0.002"),
    }
    return SubmitOrder(**{**base, **fields})


def test_parse_when_simulator_exchange_info_then_every_filter_is_read() -> None:
    assert BTC.status == "TRADING"
    assert (BTC.tick_size, BTC.step_size, BTC.min_qty, BTC.min_notional) == (D("0.1"), D("0.001"), D("0.001"), D(100))
    assert (BTC.market_step_size, BTC.multiplier_up, BTC.multiplier_down) == (D("0.001"), D("1.05"), D("0.95"))
    assert BTC.max_num_orders == 200
    assert (BTC.price_precision, BTC.quantity_precision) == (1, 3)
    assert "MARKET" in BTC.order_types
    assert decode_value(SymbolRulesValue, encode_value(BTC)) == BTC  # the KV round trip is exact


def test_parse_when_answer_is_not_exchange_info_then_clear_error() -> None:
    with pytest.raises(RulesParseError, match="symbols"):
        parse_exchange_info({"code": -1000})
    with pytest.raises(RulesParseError, match="PRICE_FILTER"):
        parse_exchange_info(
            {"symbols": [{"symbol": "X", "filters": [{"filterType": "PRICE_FILTER", "tickSize": "a"}]}]}
        )


def test_parse_when_spot_min_notional_then_read_from_min_notional_field() -> None:
    info = {"symbols": [{"symbol": "X", "filters": [{"filterType": "NOTIONAL", "minNotional": "5"}]}]}
    assert parse_exchange_info(info)["X"].min_notional == D(5)


@pytest.mark.parametrize(
    ("fields", "mark", "rule"),
    [
        ({"quantity": D("0.001")}, MARK, MIN_NOTIONAL),  # 60 USDT < 100
        ({"order_type": OrderType.LIMIT, "price": D("60000.05"), "time_in_force": None}, MARK, PRICE_FILTER),
        ({"order_type": OrderType.LIMIT, "price": D("60000.15")}, MARK, PRICE_FILTER),
        ({"quantity": D("0.0025")}, MARK, MARKET_LOT_SIZE),
        ({"order_type": OrderType.LIMIT, "price": D(60000), "quantity": D("0.0025")}, MARK, LOT_SIZE),
        ({"quantity": D("1001")}, MARK, MARKET_LOT_SIZE),
        ({"quantity": D(0)}, MARK, MARKET_LOT_SIZE),
        ({"order_type": OrderType.LIMIT, "price": D(70000)}, MARK, PERCENT_PRICE),
        ({"order_type": OrderType.LIMIT, "price": D(50000)}, MARK, PERCENT_PRICE),
        ({"price": D(60000)}, MARK, ORDER_TYPE),  # a price on a MARKET order
        ({"order_type": OrderType.LIMIT}, MARK, ORDER_TYPE),
        ({"order_type": OrderType.STOP_MARKET}, MARK, ORDER_TYPE),
    ],
)
def test_validate_when_order_breaks_a_rule_then_the_rule_is_named(fields: dict[str, Any], mark: D, rule: str) -> None:
    violation = validate(_order(**fields), BTC, mark)
    assert violation is not None and violation.rule == rule, violation


def test_validate_when_order_is_fine_then_none() -> None:
    assert validate(_order(), BTC, MARK) is None
    assert validate(_order(order_type=OrderType.LIMIT, price=D("60000.1")), BTC, MARK) is None
    # Reduce-only orders are exempt from MIN_NOTIONAL, as on Binance.
    assert validate(_order(quantity=D("0.001"), reduce_only=True), BTC, MARK) is None
    # No mark: a MARKET order's notional and the band cannot be checked, the grid still is.
    assert validate(_order(quantity=D("0.001")), BTC, None) is None
    assert validate(_order(quantity=D("0.0011")), BTC, None) is not None


def test_validate_when_symbol_not_trading_or_too_many_orders_then_named() -> None:
    halted = SymbolRulesValue(**{**{f: getattr(BTC, f) for f in BTC.__struct_fields__}, "status": "BREAK"})
    violation = validate(_order(), halted, MARK)
    assert violation is not None and violation.rule == STATUS and "BREAK" in violation.reason
    violation = validate(_order(), BTC, MARK, open_orders=200)
    assert violation is not None and violation.rule == MAX_NUM_ORDERS


def test_round_when_off_grid_then_quantity_down_and_price_passive() -> None:
    buy = round_to_grid(_order(order_type=OrderType.LIMIT, price=D("60000.19"), quantity=D("0.0029")), BTC)
    assert (buy.quantity, buy.price) == (D("0.002"), D("60000.1"))
    sell = round_to_grid(_order(side=Side.SELL, order_type=OrderType.LIMIT, price=D("60000.11")), BTC)
    assert sell.price == D("60000.2")
    on_grid = _order()
    assert round_to_grid(on_grid, BTC) is on_grid


def test_round_when_quantity_rounds_below_minimum_then_denied_with_reason() -> None:
    rounded, violation = rounded_or_violation(_order(quantity=D("0.0009")), BTC, MARK)
    assert rounded.quantity == 0
    assert violation is not None and violation.rule == MARKET_LOT_SIZE


# --------------------------------------------------------------------------- properties

prices = st.decimals(min_value=D("0.01"), max_value=D("200000"), places=3, allow_nan=False, allow_infinity=False)
quantities = st.decimals(min_value=D("0.0001"), max_value=D("2000"), places=4, allow_nan=False, allow_infinity=False)
marks = st.decimals(min_value=D("1"), max_value=D("200000"), places=2, allow_nan=False, allow_infinity=False)


@st.composite
def orders(draw: st.DrawFn) -> SubmitOrder:
    kind = draw(st.sampled_from([OrderType.MARKET, OrderType.LIMIT]))
    return _order(
        symbol=draw(st.sampled_from(["BTCUSDT", "ETHUSDT"])),
        side=draw(st.sampled_from([Side.BUY, Side.SELL])),
        order_type=kind,
        quantity=draw(quantities),
        price=draw(prices) if kind == OrderType.LIMIT else None,
        stop_loss=draw(st.none() | prices),
    )


@given(order=orders(), mark=marks)
@settings(max_examples=400)
def test_rounded_orders_always_validate_or_are_denied_with_a_reason(order: SubmitOrder, mark: D) -> None:
    rules = RULES[order.symbol]
    rounded, violation = rounded_or_violation(order, rules, mark)
    assert rounded.quantity <= order.quantity
    if order.price is not None and rounded.price is not None:
        # Never a worse price than asked for.
        assert rounded.price <= order.price if order.side == Side.BUY else rounded.price >= order.price
    if violation is None:
        assert validate(rounded, rules, mark) is None
    else:
        # What remains is never the grid: only sizes and prices the grid cannot fix.
        assert violation.rule in (MIN_NOTIONAL, PERCENT_PRICE, LOT_SIZE, MARKET_LOT_SIZE, PRICE_FILTER)
        assert violation.reason
        if violation.rule in (LOT_SIZE, MARKET_LOT_SIZE):
            assert "multiple" not in violation.reason and "decimals" not in violation.reason
        if violation.rule == PRICE_FILTER:
            assert "multiple" not in violation.reason and "decimals" not in violation.reason


def _sim_answer(exchange: Exchange, order: SubmitOrder, mark: D) -> BinanceError | None:
    params = {
        "symbol": order.symbol,
        "side": order.side.value,
        "type": order.order_type.value,
        "quantity": format(order.quantity, "f"),
        "newOrderRespType": "ACK",
    }
    if order.price is not None:
        params["price"] = format(order.price, "f")
        params["timeInForce"] = "GTC"
    exchange.mark_prices[order.symbol] = mark
    try:
        exchange.place_order(params)
    except BinanceError as exc:
        return exc
    return None


@given(order=orders(), mark=marks, data=st.data())
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_validate_agrees_with_the_simulators_own_checks(order: SubmitOrder, mark: D, data: st.DataObject) -> None:
    """Whatever `validate` accepts the simulator takes, whatever the simulator refuses `validate`
    refuses too, naming a rule of the same kind as the simulator's code. The band around the mark
    is Bulwark's (the simulator does not enforce PERCENT_PRICE): the mark is drawn inside it."""
    if order.order_type == OrderType.LIMIT and data.draw(st.booleans()):
        mark = order.price or mark  # a LIMIT at the mark: inside any band
    exchange = _sim_exchange()  # a fresh one each time: no order of an earlier example counts
    # An empty book: a LIMIT rests, a MARKET values at the mark, as `validate` does.
    violation = validate(order, RULES[order.symbol], mark)
    refused = _sim_answer(exchange, order, mark)
    if violation is not None and violation.rule == PERCENT_PRICE:
        return
    expected = {
        -1111: (PRICE_FILTER, LOT_SIZE, MARKET_LOT_SIZE),
        -4003: (LOT_SIZE, MARKET_LOT_SIZE),
        -4004: (LOT_SIZE, MARKET_LOT_SIZE),
        -4005: (LOT_SIZE, MARKET_LOT_SIZE),
        -4023: (LOT_SIZE, MARKET_LOT_SIZE),
        -4014: (PRICE_FILTER,),
        -4001: (PRICE_FILTER,),
        -4164: (MIN_NOTIONAL,),
    }
    if refused is None:
        assert violation is None, f"the simulator took an order validate refuses: {violation}"
    else:
        assert violation is not None, f"the simulator refused ({refused.code} {refused.msg}) what validate accepts"
        assert violation.rule in expected.get(refused.code, (violation.rule,)), (refused.code, violation)


# --------------------------------------------------------------------------- strategy sizing


def test_strategy_signal_when_venue_rules_known_then_published_on_the_grid() -> None:
    bus = MemoryBus()
    publisher = IntentPublisher(bus, get_logger("strategy"), "trend-1", "trend", "binance-usdm")  # type: ignore[arg-type]
    wish = Signal("BTCUSDT", Side.BUY, D("0.00299"), False, "entry", stop_loss=D("59880.07"), take_profit=D("60300.25"))

    before = asyncio.run(publisher.signal(wish))  # no rules published yet: as decided (risk still rounds)
    bus.kv["rules.binance-usdm.BTCUSDT"] = encode_value(BTC)
    after = asyncio.run(publisher.signal(wish))
    tiny = asyncio.run(publisher.signal(Signal("BTCUSDT", Side.BUY, D("0.0004"), False, "entry")))

    assert isinstance(before, SignalGenerated) and before.quantity == D("0.00299")
    assert (after.quantity, after.stop_loss, after.take_profit) == (D("0.002"), D("59880.1"), D("60300.3"))
    assert tiny.quantity == D("0.0004")  # nothing to round down to: risk denies it naming LOT_SIZE
