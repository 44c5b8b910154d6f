"""Pure logic of the venue simulator: book, fill model, positions, faults, replay looping."""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.clock import ManualClock
from libs.recordings import DepthSnapshot, DepthUpdate, ReferenceBook, Trade
from services.venue_sim.adapters.replay import ReplaySymbol
from services.venue_sim.adapters.synthetic import SyntheticSource
from services.venue_sim.domain import BinanceError, BookHistoryError, Exchange, FaultError, FaultScheduler, OrderBook
from services.venue_sim.domain.market_events import DepthEvent
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


def _exchange(book: OrderBook, clock: ManualClock) -> Exchange:
    spec = spec_for("BTCUSDT")
    spec = SymbolSpec("BTCUSDT", "BTC", spec.tick_size, spec.step_size, spec.min_qty, spec.max_qty, D("1"))
    return Exchange(clock, {"BTCUSDT": spec}, {"BTCUSDT": book})


def _order(exchange: Exchange, **params: str) -> dict:
    defaults = {"symbol": "BTCUSDT", "newOrderRespType": "RESULT"}
    order, _ = exchange.place_order({**defaults, **params})
    return exchange.order_view(order)


def test_book_when_diffs_applied_then_history_returns_each_state() -> None:
    book = _book()
    book.apply([(D("100.0"), D("0"))], [(D("100.1"), D("5.000"))], 11)
    book.apply([(D("100.05"), D("1.000"))], [], 12)
    assert book.state_at(11).bids[0] == (D("99.9"), D("2.000"))
    assert book.state_at(11).asks[0] == (D("100.1"), D("5.000"))
    assert book.state_at(12).bids[0] == (D("100.05"), D("1.000"))
    with pytest.raises(BookHistoryError):
        book.state_at(9)


def test_book_diff_to_when_applied_then_reaches_the_target() -> None:
    book = _book()
    target_bids = [(D("99.9"), D("7.000")), (D("99.0"), D("1.000"))]
    target_asks = [(D("100.5"), D("1.000"))]
    bids, asks = book.diff_to(target_bids, target_asks)
    book.apply(bids, asks, 11)
    assert book.top_bids(10) == target_bids and book.top_asks(10) == target_asks


def test_market_buy_when_larger_than_best_then_one_fill_per_level() -> None:
    clock = ManualClock(START_NS)
    exchange = _exchange(_book(), clock)
    order = _order(exchange, side="BUY", type="MARKET", quantity="2.500")
    assert order["status"] == "FILLED"
    assert [(f.price, f.quantity) for f in exchange.fills] == [(D("100.1"), D("1.000")), (D("100.2"), D("1.500"))]
    position = exchange.position("BTCUSDT")
    assert position.quantity == D("2.5") and position.entry_price == (D("100.1") + D("100.2") * D("1.5")) / D("2.5")


def test_position_when_closed_at_higher_price_then_realized_pnl() -> None:
    clock = ManualClock(START_NS)
    book = _book()
    exchange = _exchange(book, clock)
    _order(exchange, side="BUY", type="MARKET", quantity="1.000")  # at 100.1
    book.apply([(D("101.0"), D("5.000"))], [], 11)
    _order(exchange, side="SELL", type="MARKET", quantity="1.000", reduceOnly="true")  # at 101.0
    position = exchange.position("BTCUSDT")
    assert position.quantity == 0 and position.realized_pnl == D("0.9")
    with pytest.raises(BinanceError) as rejected:
        _order(exchange, side="SELL", type="MARKET", quantity="1.000", reduceOnly="true")
    assert rejected.value.code == -2022


def test_resting_limit_when_opposite_best_crosses_then_filled_at_limit_as_maker() -> None:
    clock = ManualClock(START_NS)
    book = _book()
    exchange = _exchange(book, clock)
    order = _order(exchange, side="BUY", type="LIMIT", timeInForce="GTC", quantity="1.000", price="99.5")
    assert order["status"] == "NEW"
    book.apply([], [(D("99.4"), D("0.500"))], 11)
    exchange.on_book_update("BTCUSDT")
    fill = exchange.fills[-1]
    assert (fill.price, fill.quantity, fill.maker) == (D("99.5"), D("1.000"), True)
    assert exchange.orders[fill.order_id].status == "FILLED"


def test_marketable_limit_ioc_when_partly_fillable_then_rest_expired() -> None:
    exchange = _exchange(_book(), ManualClock(START_NS))
    order = _order(exchange, side="BUY", type="LIMIT", timeInForce="IOC", quantity="2.000", price="100.1")
    assert (order["status"], order["executedQty"]) == ("EXPIRED", "1.000")


def test_stop_market_when_mark_crosses_then_fills_as_market() -> None:
    exchange = _exchange(_book(), ManualClock(START_NS))
    exchange.on_mark_price("BTCUSDT", D("100.05"))
    order = _order(exchange, side="SELL", type="STOP_MARKET", quantity="1.000", stopPrice="99.0")
    assert order["status"] == "NEW"
    exchange.on_mark_price("BTCUSDT", D("98.9"))
    assert exchange.orders[order["orderId"]].status == "FILLED"
    assert exchange.fills[-1].price == D("100.0")
    with pytest.raises(BinanceError) as immediate:
        _order(exchange, side="SELL", type="STOP_MARKET", quantity="1.000", stopPrice="99.0")
    assert immediate.value.code == -2021


def test_countdown_when_expired_then_symbol_orders_cancelled() -> None:
    clock = ManualClock(START_NS)
    exchange = _exchange(_book(), clock)
    order = _order(exchange, side="BUY", type="LIMIT", timeInForce="GTC", quantity="1.000", price="96.0")
    exchange.arm_countdown("BTCUSDT", 1000)
    clock.advance(0.5)
    assert exchange.check_countdowns() == []
    clock.advance(0.6)
    assert exchange.check_countdowns() == ["BTCUSDT"]
    assert exchange.orders[order["orderId"]].status == "CANCELED"
    assert [e["o"]["X"] for e in exchange.outbox if e["e"] == "ORDER_TRADE_UPDATE"] == ["NEW", "CANCELED"]


def test_fault_when_after_messages_then_activates_and_count_limits_it() -> None:
    clock = ManualClock(START_NS)
    faults = FaultScheduler(clock, seed=1)
    fault = faults.add({"kind": "drop_depth", "symbol": "BTCUSDT", "after_messages": 2, "count": 2})
    data = {"e": "depthUpdate", "E": 1, "u": 5, "pu": 4}
    results = []
    for _ in range(6):
        faults.on_message("BTCUSDT")
        results.append(len(faults.transform("s", "BTCUSDT", "depth", data)))
    assert results == [1, 0, 0, 1, 1, 1]
    assert fault.state(clock()) == "expired"


def test_fault_when_duration_passes_then_expires() -> None:
    clock = ManualClock(START_NS)
    faults = FaultScheduler(clock, seed=1)
    faults.add({"kind": "outage", "duration_s": 2})
    assert faults.active("outage") is not None
    clock.advance(2.1)
    assert faults.active("outage") is None


def test_fault_reorder_and_duplicate_when_applied_then_frames_swapped_and_doubled() -> None:
    faults = FaultScheduler(ManualClock(START_NS), seed=1)
    faults.add({"kind": "reorder_depth"})
    assert faults.transform("s", "X", "depth", {"u": 1}) == []
    assert [f.data["u"] for f in faults.transform("s", "X", "depth", {"u": 2})] == [2, 1]
    faults.add({"kind": "duplicate_depth"})
    assert [f.data["u"] for f in faults.transform("s", "X", "depth", {"u": 3})] == [3, 3]


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "nope"},
        {"kind": "corrupt", "params": {"mode": "bad"}},
        {"kind": "latency", "params": {"ms": "x"}},
        {"kind": "drop_depth", "count": 0},
        {"kind": "ws_close", "extra": 1},
    ],
)
def test_fault_when_request_invalid_then_clear_error(spec: dict) -> None:
    with pytest.raises(FaultError):
        FaultScheduler(ManualClock(START_NS), seed=1).add(spec)


def test_order_side_faults_when_scheduled_then_defaults_and_condition_semantics() -> None:
    scheduler = FaultScheduler(ManualClock(START_NS), seed=1)
    server_error = scheduler.add({"kind": "order_http_5xx", "symbol": "BTCUSDT"})
    assert (server_error.params, server_error.count) == ({"status": 503, "placed": False}, 1)
    skew = scheduler.add({"kind": "clock_skew", "params": {"offset_ms": -3000}})
    assert skew.count is None and skew.params["offset_ms"] == -3000  # a condition: until deleted
    assert scheduler.take("order_http_5xx", "BTCUSDT") is server_error
    assert scheduler.take("order_http_5xx", "BTCUSDT") is None
    with pytest.raises(FaultError):
        scheduler.add({"kind": "order_http_5xx", "params": {"placed": "yes"}})
    with pytest.raises(FaultError):
        scheduler.add({"kind": "order_http_5xx", "params": {"status": 404}})


def test_place_order_when_client_order_id_of_open_order_reused_then_4116_duplicated() -> None:
    clock = ManualClock(START_NS)
    exchange = _exchange(_book(), clock)
    params = {
        "symbol": "BTCUSDT",
        "side": "BUY",
        "type": "LIMIT",
        "timeInForce": "GTC",
        "quantity": "0.1",
        "price": "96",  # resting, inside the PERCENT_PRICE band around the mid of 100.05
    }
    exchange.place_order({**params, "newClientOrderId": "dup-1"})
    with pytest.raises(BinanceError) as raised:
        exchange.place_order({**params, "newClientOrderId": "dup-1"})
    assert (raised.value.status, raised.value.code) == (400, -4116)
    assert len(exchange.orders) == 1


def test_place_order_when_client_order_id_of_finished_order_reused_then_accepted_like_binance() -> None:
    # Binance: newClientOrderId is "a unique id among open orders"; a client that resends a
    # finished order's id blindly gets a second order. Query by that id answers the newest.
    exchange = _exchange(_book(), ManualClock(START_NS))
    params = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.1"}
    first, _ = exchange.place_order({**params, "price": "96", "newClientOrderId": "again-1"})
    exchange.cancel_order({"symbol": "BTCUSDT", "origClientOrderId": "again-1"})
    second, _ = exchange.place_order({**params, "price": "97", "newClientOrderId": "again-1"})
    assert first.order_id != second.order_id and len(exchange.orders) == 2
    assert exchange.query_order({"symbol": "BTCUSDT", "origClientOrderId": "again-1"}) is second


def _recording() -> list:
    def update(first: int, final: int, previous: int, bids: list, asks: list, at: int) -> DepthUpdate:
        return DepthUpdate(at, "XUSDT", "x@depth", 1, 1, first, final, previous, tuple(bids), tuple(asks))

    return [
        update(5, 8, 4, [(D("1.0"), D("9"))], [], 1),  # before the snapshot and u < L: dropped
        DepthSnapshot(2, "XUSDT", 10, 1, 1, ((D("1.0"), D("1")), (D("0.9"), D("2"))), ((D("1.1"), D("1")),)),
        update(9, 12, 8, [(D("1.0"), D("3"))], [], 3),
        Trade(4, "XUSDT", 1, 1, 77, D("1.1"), D("1"), False),
        update(13, 15, 12, [(D("0.9"), D("0"))], [(D("1.2"), D("4"))], 5),
    ]


def test_replay_when_looping_then_ids_chain_and_each_loop_restarts_from_the_snapshot() -> None:
    replay = ReplaySymbol("XUSDT", _recording())
    book = OrderBook("XUSDT")
    book.reset(replay.start.bids, replay.start.asks, replay.start.last_update_id)
    reference = ReferenceBook("XUSDT")
    reference.apply(replay.start.bids, replay.start.asks)
    previous = None
    offsets = []
    depth_seen = 0
    for offset, event in replay.script(book):
        offsets.append(offset)
        if not isinstance(event, DepthEvent):
            continue
        if previous is not None:
            assert event.previous_final_update_id == previous
            assert event.first_update_id > previous
        previous = event.final_update_id
        book.apply(event.bids, event.asks, event.final_update_id)
        reference.apply(event.bids, event.asks)
        depth_seen += 1
        if depth_seen in (3, 6):  # right after each loop's join diff the book is the snapshot again
            assert reference.top(10) == (list(replay.start.bids), list(replay.start.asks))
        if depth_seen == 8:
            break
    assert offsets == sorted(offsets)
    assert book.top_bids(10) == reference.top(10)[0] and book.top_asks(10) == reference.top(10)[1]


def test_synthetic_when_same_seed_then_same_market_and_deep_book() -> None:
    def run(seed: int) -> list:
        source = SyntheticSource(["BTCUSDT"], seed=seed)
        book = OrderBook("BTCUSDT")
        start = source.start_book("BTCUSDT")
        book.reset(start.bids, start.asks, start.last_update_id)
        seen = []
        for _, event in source.script("BTCUSDT", book):
            if isinstance(event, DepthEvent):
                assert event.previous_final_update_id == book.last_update_id
                book.apply(event.bids, event.asks, event.final_update_id)
                seen.append((event.final_update_id, book.best_bid()))
                if len(seen) == 50:
                    break
        assert len(book.bids) >= 50 and len(book.asks) >= 50
        assert book.best_bid()[0] < book.best_ask()[0]
        return seen

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_sim_config_when_cascade_probability_set_then_synthetic_market_uses_it_and_bad_values_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from services.venue_sim.config import config_from
    from services.venue_sim.main import build_source

    calm = config_from(["--source", "synthetic"], {"BULWARK_SIM_CASCADE_PROBABILITY": "0"})
    source, _ = build_source(calm)
    assert isinstance(source, SyntheticSource) and source.cascade_probability == 0.0
    flag = config_from(["--source", "synthetic", "--cascade-probability", "0.5"], {})
    assert flag.cascade_probability == 0.5
    default, _ = build_source(config_from(["--source", "synthetic"], {}))
    assert isinstance(default, SyntheticSource) and default.cascade_probability > 0
    for bad in ("2", "-0.1", "often"):
        with pytest.raises(SystemExit):
            config_from(["--cascade-probability", bad], {})
    assert "a probability is between 0 and 1" in capsys.readouterr().err
