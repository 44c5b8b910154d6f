"""The simulator's abnormal-market faults for CB-2: depth collapse, funding jump and price shift (pure)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.clock import ManualClock
from services.venue_sim.adapters.synthetic import SyntheticSource
from services.venue_sim.domain.book import OrderBook
from services.venue_sim.domain.faults import FaultError, FaultScheduler
from services.venue_sim.domain.market_events import DepthEvent, TradeEvent
from services.venue_sim.domain.price_shift import PriceShift, shift_progress, shift_ticks

START_NS = 1_000_000_000


def test_depth_collapse_when_active_then_quantities_scaled_and_removals_kept() -> None:
    faults = FaultScheduler(ManualClock(START_NS), seed=1)
    faults.add({"kind": "depth_collapse", "symbol": "ETHUSDT", "params": {"factor": "0.01"}})
    data = {"u": 5, "b": [["100.00", "20.5"], ["99.99", "0"]], "a": [["100.01", "3"]]}
    (frame,) = faults.transform("s", "ETHUSDT", "depth", data)
    assert frame.data["b"] == [["100.00", "0.205"], ["99.99", "0"]]
    assert frame.data["a"] == [["100.01", "0.03"]]
    assert frame.data["u"] == 5
    (other,) = faults.transform("s", "BTCUSDT", "depth", data)
    assert other.data["b"][0] == ["100.00", "20.5"]


def test_funding_jump_when_active_then_mark_frames_carry_the_rate_until_it_expires() -> None:
    clock = ManualClock(START_NS)
    faults = FaultScheduler(clock, seed=1)
    faults.add({"kind": "funding_jump", "duration_s": 2, "params": {"rate": "0.01"}})
    mark = {"e": "markPriceUpdate", "p": "3000", "r": "0.00010000"}
    assert faults.transform("s", "ETHUSDT", "markPrice", mark)[0].data["r"] == "0.01"
    assert faults.transform("s", "ETHUSDT", "depth", {"u": 1})[0].data == {"u": 1}
    clock.advance_ns(3_000_000_000)
    assert faults.transform("s", "ETHUSDT", "markPrice", mark)[0].data["r"] == "0.00010000"


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "depth_collapse", "params": {"factor": "1.5"}},
        {"kind": "depth_collapse", "params": {"factor": "abc"}},
        {"kind": "funding_jump", "params": {"rate": True}},
        {"kind": "funding_jump", "params": {"rate": "NaN"}},
        {"kind": "price_shift", "params": {"pct": 0}},
        {"kind": "price_shift", "params": {"pct": "150"}},
        {"kind": "price_shift", "params": {"over_s": -1}},
        {"kind": "price_shift", "params": {"over_s": "soon"}},
        {"kind": "price_shift", "params": {"direction": "sideways"}},
    ],
)
def test_market_fault_when_parameter_invalid_then_refused(spec: dict[str, object]) -> None:
    with pytest.raises(FaultError):
        FaultScheduler(ManualClock(START_NS), seed=1).add(spec)


def test_price_shift_when_scheduled_then_one_shot_with_defaults() -> None:
    fault = FaultScheduler(ManualClock(START_NS), seed=1).add({"kind": "price_shift", "symbol": "ethusdt"})
    assert fault.params == {"pct": "25", "direction": "up", "over_s": 5.0}
    assert (fault.symbol, fault.count) == ("ETHUSDT", 1)


def test_price_shift_when_time_passes_then_move_handed_over_linearly_and_exactly_once() -> None:
    clock = ManualClock(START_NS)
    fault = FaultScheduler(clock, seed=1).add({"kind": "price_shift", "params": {"pct": "25", "over_s": 2}})
    total = shift_ticks(Decimal("3000.00"), Decimal("25"), True, Decimal("0.01"))
    shift = PriceShift({"ETHUSDT": total, "BTCUSDT": -7})
    assert total == 75_000
    steps = []
    for _ in range(25):  # 100 ms ticks, past the 2 s of the shift
        steps.append(shift.due(shift_progress(fault, clock.now)))
        clock.advance_ns(100_000_000)
    assert steps[0] == {}  # nothing is due at activation
    assert steps[10] == {"ETHUSDT": 3750}  # 5 % of the move per 100 ms
    assert shift.applied_ticks == {"ETHUSDT": 75_000, "BTCUSDT": -7}
    half_way = [sum(step.get(symbol, 0) for step in steps[:11]) for symbol in ("ETHUSDT", "BTCUSDT")]
    assert half_way == [37_500, -3]  # truncated toward zero: never past the total
    assert sum(step.get("ETHUSDT", 0) for step in steps) == 75_000
    assert sum(step.get("BTCUSDT", 0) for step in steps) == -7
    assert shift.done and all(step == {} for step in steps[21:])


def test_price_shift_when_over_zero_then_whole_move_at_once() -> None:
    fault = FaultScheduler(ManualClock(START_NS), seed=1).add({"kind": "price_shift", "params": {"over_s": 0}})
    assert shift_progress(fault, fault.created_ns) == 1.0
    assert shift_ticks(Decimal("100"), Decimal("10"), False, Decimal("0.01")) == -1000


def test_synthetic_move_when_requested_then_next_step_ladder_regenerated_at_the_new_level() -> None:
    source = SyntheticSource(["ETHUSDT"], seed=3)
    start = source.start_book("ETHUSDT")
    book = OrderBook("ETHUSDT")
    book.reset(start.bids, start.asks, start.last_update_id)
    script = source.script("ETHUSDT", book)
    before = book.mid()
    assert before is not None
    source.move("ETHUSDT", 75_000)  # + 750.00 USDT
    trades = []
    for _ in range(40):  # one 100 ms step: the depth diff, then its trades
        offset, event = next(script)
        if offset > 100_000_000:
            break
        if isinstance(event, DepthEvent):
            book.apply(event.bids, event.asks, event.final_update_id)
        elif isinstance(event, TradeEvent):
            trades.append(event.price)
    after = book.mid()
    assert after is not None and Decimal("740") < after - before < Decimal("760")
    best_bid, best_ask = book.best_bid(), book.best_ask()
    assert best_bid is not None and best_ask is not None and best_bid[0] < best_ask[0]
    assert len(book.levels(True)) == 60 and len(book.levels(False)) == 60  # the old ladder is gone
    assert all(abs(price - after) < 1 for price in trades)
