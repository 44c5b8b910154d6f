"""Risk and the venue's rules, in memory: `svc.risk.validate_order` (what the gateway asks) and the
decision of a strategy order off the grid (rounded, then approved on the grid)."""

from __future__ import annotations

import asyncio
from decimal import Decimal as D

import msgspec

from proto import subjects
from proto.enums import HotStateStatus, OrderSource, OrderType, Side, TradingState
from proto.kv import TradingStateValue, encode_value
from proto.messages import OrderApproved, OrderDenied, SubmitOrder
from proto.replies import ErrorReply, OrderRulesReply, OrderRulesRequest, decode_reply
from services.risk import decisions, venue_rules
from tests.unit.test_instruments import BTC
from tests.unit.test_risk_contracts import MemoryBus, service

RULES_KEY = subjects.key_symbol_rules("binance-usdm", "BTCUSDT")


def _ask(bus: MemoryBus, body: bytes) -> OrderRulesReply | ErrorReply:
    risk = service(bus, TradingStateValue(state=TradingState.ACTIVE))
    risk.state.mark_prices["BTCUSDT"] = D(60000)

    async def no_touch(_risk: object, _symbol: str) -> tuple[None, None]:
        return None, None

    raw = asyncio.run(venue_rules.serve_validate_order(risk, body, touch=no_touch))
    return decode_reply(OrderRulesReply, raw)


def _request(**fields: object) -> bytes:
    base: dict[str, object] = {"symbol": "BTCUSDT", "side": Side.BUY, "order_type": OrderType.MARKET}
    return msgspec.json.encode(OrderRulesRequest(**{**base, "quantity": D("0.002"), **fields}))  # type: ignore[arg-type]


def test_validate_order_when_rules_published_then_the_broken_rule_is_named() -> None:
    bus = MemoryBus({RULES_KEY: encode_value(BTC)})
    small = _ask(bus, _request(quantity=D("0.001")))
    fine = _ask(bus, _request())
    off_tick = _ask(bus, _request(order_type=OrderType.LIMIT, price=D("60000.05")))

    assert isinstance(small, OrderRulesReply) and small.rule == "MIN_NOTIONAL" and "100" in small.reason
    assert isinstance(fine, OrderRulesReply) and fine.rule is None and fine.checked
    assert isinstance(off_tick, OrderRulesReply) and off_tick.rule == "PRICE_FILTER"


def test_validate_order_when_rules_unknown_or_request_bad_then_said_so() -> None:
    unknown = _ask(MemoryBus(), _request(quantity=D("0.001")))
    garbage = _ask(MemoryBus({RULES_KEY: encode_value(BTC)}), b'{"symbol": 3}')
    unreadable = _ask(MemoryBus({RULES_KEY: b"not json"}), _request(quantity=D("0.001")))

    assert isinstance(unknown, OrderRulesReply) and unknown.rule is None and not unknown.checked
    assert isinstance(garbage, ErrorReply) and garbage.error.code == "bad_request"
    assert isinstance(unreadable, OrderRulesReply) and not unreadable.checked


def test_decide_when_strategy_order_off_the_grid_then_approved_rounded_and_operator_order_denied() -> None:
    bus = MemoryBus({RULES_KEY: encode_value(BTC)})
    risk = service(bus, TradingStateValue(state=TradingState.ACTIVE))
    risk.state.mark_prices["BTCUSDT"] = D(60000)
    risk.hot_state["BTCUSDT"] = HotStateStatus.VALID
    risk.state_builder.heard(risk.monotonic())

    def order(source: OrderSource, coid: str) -> SubmitOrder:
        return SubmitOrder(
            client_order_id=coid,
            idempotency_key=coid,
            source=source,
            symbol="BTCUSDT",
            side=Side.BUY,
            order_type=OrderType.MARKET,
            quantity=D("0.00299"),
            strategy="trend-1" if source == OrderSource.STRATEGY else None,
        )

    strategy = asyncio.run(decisions.decide(risk, order(OrderSource.STRATEGY, "s1")))
    operator = asyncio.run(decisions.decide(risk, order(OrderSource.OPERATOR, "o1")))

    assert isinstance(strategy, OrderApproved), strategy
    assert strategy.order.quantity == D("0.002")
    assert isinstance(operator, OrderDenied) and operator.reason.startswith("venue rule MARKET_LOT_SIZE"), operator


def _entry_and_exit(coid: str, side: Side, *, reduce_only: bool = False) -> SubmitOrder:
    return SubmitOrder(
        client_order_id=coid,
        idempotency_key=coid,
        source=OrderSource.OPERATOR,
        symbol="BTCUSDT",
        side=side,
        order_type=OrderType.MARKET,
        quantity=D("0.002"),
        reduce_only=reduce_only,
    )


def _risk_without_rules(*, required: bool) -> tuple[MemoryBus, object]:
    bus = MemoryBus()
    risk = service(bus, TradingStateValue(state=TradingState.ACTIVE))
    risk.rules_required = required
    risk.state.mark_prices["BTCUSDT"] = D(60000)
    risk.hot_state["BTCUSDT"] = HotStateStatus.VALID
    risk.state_builder.heard(risk.monotonic())
    risk.state.positions[risk.state.book("binance-usdm", "BTCUSDT")] = D("0.004")
    return bus, risk


def test_decide_when_rules_expected_but_not_loaded_then_entries_denied_and_exits_go() -> None:
    bus, risk = _risk_without_rules(required=True)

    entry = asyncio.run(decisions.decide(risk, _entry_and_exit("e1", Side.BUY)))  # type: ignore[arg-type]
    reduce_only = asyncio.run(decisions.decide(risk, _entry_and_exit("x1", Side.SELL, reduce_only=True)))  # type: ignore[arg-type]
    shrinking = asyncio.run(decisions.decide(risk, _entry_and_exit("x2", Side.SELL)))  # type: ignore[arg-type]

    assert isinstance(entry, OrderDenied) and entry.reason.startswith("venue rules not loaded"), entry
    assert isinstance(reduce_only, OrderApproved), reduce_only
    assert isinstance(shrinking, OrderApproved), shrinking
    # Once published, the same entry is judged by them (and approved: it breaks none).
    bus.kv[RULES_KEY] = encode_value(BTC)
    again = asyncio.run(decisions.decide(risk, _entry_and_exit("e2", Side.BUY)))  # type: ignore[arg-type]
    assert isinstance(again, OrderApproved), again


def test_decide_when_rules_not_expected_and_not_loaded_then_the_venue_judges() -> None:
    _, risk = _risk_without_rules(required=False)
    entry = asyncio.run(decisions.decide(risk, _entry_and_exit("e1", Side.BUY)))  # type: ignore[arg-type]
    assert isinstance(entry, OrderApproved), entry


def test_validate_order_when_rules_expected_but_not_loaded_then_reason_says_so() -> None:
    bus = MemoryBus()
    risk = service(bus, TradingStateValue(state=TradingState.ACTIVE))
    risk.rules_required = True

    async def no_touch(_risk: object, _symbol: str) -> tuple[None, None]:
        return None, None

    raw = asyncio.run(venue_rules.serve_validate_order(risk, _request(), touch=no_touch))
    reply = decode_reply(OrderRulesReply, raw)
    assert isinstance(reply, OrderRulesReply) and not reply.checked and reply.reason == "venue rules not loaded"
