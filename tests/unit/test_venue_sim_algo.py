"""Conditional orders of the simulated Algo Service: checks at placement, triggers on the last or
the mark price, the MARKET order a trigger places and the ALGO_UPDATE events (pure)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.clock import ManualClock
from services.venue_sim.domain import BinanceError, Exchange, FaultScheduler, OrderBook
from services.venue_sim.domain.rules import SymbolSpec, spec_for

D = Decimal
STOP = {"symbol": "BTCUSDT", "algoType": "CONDITIONAL", "side": "SELL", "type": "STOP_MARKET", "quantity": "0.010"}


def _exchange() -> Exchange:
    book = OrderBook("BTCUSDT")
    book.reset([(D("100.0"), D("5.000"))], [(D("100.1"), D("5.000"))], 10)
    spec = spec_for("BTCUSDT")
    spec = SymbolSpec("BTCUSDT", "BTC", spec.tick_size, spec.step_size, spec.min_qty, spec.max_qty, D("1"))
    exchange = Exchange(ManualClock(1_700_000_000_000_000_000), {"BTCUSDT": spec}, {"BTCUSDT": book})
    exchange.on_mark_price("BTCUSDT", D("100.05"))
    return exchange


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"algoType": ""}, -1102),
        ({"algoType": "VP"}, -1130),
        ({"type": "TRAILING_STOP_MARKET"}, -1116),
        ({"triggerPrice": ""}, -1102),
        ({"triggerPrice": "99.95"}, -1111),  # finer than the price precision
        ({"triggerPrice": "100.5"}, -2021),  # a sell stop above the last price would trigger at once
        ({"closePosition": "true"}, -1106),  # with a quantity
        ({"workingType": "INDEX_PRICE"}, -1130),
    ],
)
def test_algo_order_when_parameters_break_a_rule_then_binance_code(changes: dict[str, str], code: int) -> None:
    params = {**STOP, "triggerPrice": "99.0", **changes}
    with pytest.raises(BinanceError) as refused:
        _exchange().place_algo({k: v for k, v in params.items() if v}, D("100.0"))
    assert refused.value.code == code


def test_algo_order_when_last_price_crosses_then_market_order_and_updates_in_order() -> None:
    exchange = _exchange()
    placed = exchange.place_algo({**STOP, "triggerPrice": "99.5", "clientAlgoId": "sl-1"}, D("100.0"))
    exchange.outbox.clear()
    exchange.check_algo_orders({"BTCUSDT": D("99.6")})
    assert placed.status == "NEW" and not exchange.outbox
    exchange.check_algo_orders({"BTCUSDT": D("99.5")})
    statuses = [e["o"]["X"] for e in exchange.outbox if e["e"] == "ALGO_UPDATE"]
    assert statuses == ["TRIGGERING", "TRIGGERED", "FINISHED"]
    actual = exchange.orders[placed.actual_order_id or 0]
    assert (actual.type, actual.side, actual.status, actual.executed_qty) == ("MARKET", "SELL", "FILLED", D("0.010"))
    assert exchange.position("BTCUSDT").quantity == D("-0.010")
    assert exchange.algo_view(placed)["algoStatus"] == "FINISHED"


def test_algo_order_when_mark_price_working_type_then_last_price_ignored() -> None:
    exchange = _exchange()
    placed = exchange.place_algo({**STOP, "triggerPrice": "99.5", "workingType": "MARK_PRICE"}, D("100.0"))
    exchange.check_algo_orders({"BTCUSDT": D("90")})
    assert placed.status == "NEW"
    exchange.on_mark_price("BTCUSDT", D("99.4"))
    exchange.check_algo_orders({"BTCUSDT": D("100")})
    assert placed.status == "FINISHED"


def test_algo_order_when_reduce_only_and_no_position_then_rejected_with_reason() -> None:
    exchange = _exchange()
    placed = exchange.place_algo({**STOP, "triggerPrice": "99.5", "reduceOnly": "true"}, D("100.0"))
    exchange.check_algo_orders({"BTCUSDT": D("99.0")})
    assert placed.status == "REJECTED" and placed.reject_reason == "ReduceOnly Order is rejected."
    with pytest.raises(BinanceError) as gone:
        exchange.cancel_algo({"algoId": str(placed.algo_id)})
    assert gone.value.code == -2011


def test_algo_order_when_stop_stuck_triggering_fault_then_stays_triggering_without_market_order() -> None:
    clock = ManualClock(1_700_000_000_000_000_000)
    faults = FaultScheduler(clock, seed=1)
    exchange = _exchange()
    exchange.hold_trigger = lambda order: faults.take("stop_stuck_triggering", order.symbol) is not None
    faults.add({"kind": "stop_stuck_triggering", "symbol": "BTCUSDT"})
    stuck = exchange.place_algo({**STOP, "triggerPrice": "99.5", "clientAlgoId": "sl-1"}, D("100.0"))
    exchange.outbox.clear()
    exchange.check_algo_orders({"BTCUSDT": D("99.5")})
    exchange.check_algo_orders({"BTCUSDT": D("99.0")})  # never triggered twice, never forwarded later
    assert [e["o"]["X"] for e in exchange.outbox if e["e"] == "ALGO_UPDATE"] == ["TRIGGERING"]
    assert exchange.algo_view(stuck)["algoStatus"] == "TRIGGERING" and exchange.algo_view(stuck)["actualOrderId"] == ""
    assert not exchange.orders and exchange.algo.open_orders("BTCUSDT") == []
    with pytest.raises(BinanceError) as refused:
        exchange.cancel_algo({"clientAlgoId": "sl-1"})
    assert refused.value.code == -2011
    # The fault is used up (count 1): the next stop triggers as usual.
    other = exchange.place_algo({**STOP, "triggerPrice": "98.5", "clientAlgoId": "sl-2"}, D("99.0"))
    exchange.check_algo_orders({"BTCUSDT": D("98.5")})
    assert other.status == "FINISHED" and other.actual_order_id is not None
