"""Liquidation events: detection from forced orders, price displacement and open interest, and the
ACTIVE → DECAYING → EXPIRED lifecycle (with a re-ignition and the FM-N1 clear)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.fsm import next_state
from proto.enums import Side
from services.strategy.liquidations import (
    EVENT_TRANSITIONS,
    CascadeDetection,
    EventPhase,
    EventTrigger,
    IllegalEventTransition,
    LiquidationTracker,
)

NS = 1_000_000_000
SYMBOL = "BTCUSDT"
DETECTION = CascadeDetection(min_liquidations=3, min_displacement_pct=Decimal("0.3"), quiet_s=2, decay_s=30)


def long_flush(tracker: LiquidationTracker, start_s: float = 10, count: int = 4, step_pct: str = "0.15") -> None:
    """Longs liquidated: SELL forced orders while the price falls `step_pct` % per 200 ms."""
    price = Decimal(60000)
    tracker.on_trade(SYMBOL, int((start_s - 5) * NS), price)
    for i in range(count):
        ts = int((start_s + i * 0.2) * NS)
        price = price * (1 - Decimal(step_pct) / 100)
        tracker.on_liquidation(SYMBOL, ts, Side.SELL, price, Decimal("1.5"))
        tracker.on_trade(SYMBOL, ts, price)


def test_burst_when_price_displaced_then_active_event_against_longs() -> None:
    tracker = LiquidationTracker(DETECTION)
    long_flush(tracker)
    [event] = tracker.active()
    assert (event.phase, event.direction, event.symbol) == (EventPhase.ACTIVE, Side.SELL, SYMBOL)
    assert event.liquidations == 4 and event.quantity == Decimal("6.0")
    assert event.start_price == Decimal(60000) and event.extreme_price < Decimal(59700)
    assert event.displacement_pct() > Decimal("0.5")


def test_burst_when_price_did_not_move_then_no_event() -> None:
    tracker = LiquidationTracker(DETECTION)
    long_flush(tracker, step_pct="0.01")
    assert tracker.active() == []


def test_single_liquidation_when_isolated_then_no_event() -> None:
    tracker = LiquidationTracker(DETECTION)
    long_flush(tracker, count=1, step_pct="1")
    assert tracker.active() == []


def test_burst_when_open_interest_drops_then_event_without_displacement() -> None:
    tracker = LiquidationTracker(CascadeDetection(min_displacement_pct=Decimal(50), min_oi_drop_pct=Decimal(1)))
    tracker.on_open_interest(SYMBOL, 1 * NS, Decimal(80000))
    long_flush(tracker, step_pct="0.01")
    assert tracker.active() == []
    tracker.on_open_interest(SYMBOL, 11 * NS, Decimal(79000))
    [event] = tracker.active()
    assert event.oi_drop_pct() == Decimal("1.25")


def test_lifecycle_when_quiet_then_decaying_then_expired() -> None:
    tracker = LiquidationTracker(DETECTION)
    long_flush(tracker)
    tracker.advance(11 * NS)
    assert tracker.active()[0].phase == EventPhase.ACTIVE
    tracker.advance(13 * NS)  # last forced order at 10.6 s, quiet for 2 s
    assert tracker.active()[0].phase == EventPhase.DECAYING
    tracker.advance(42 * NS)
    assert tracker.active()[0].phase == EventPhase.DECAYING
    tracker.advance(43 * NS)
    assert tracker.active() == []
    phases = [(c.previous, c.current) for c in tracker.drain_changes()]
    assert phases == [
        (None, EventPhase.ACTIVE),
        (EventPhase.ACTIVE, EventPhase.DECAYING),
        (EventPhase.DECAYING, EventPhase.EXPIRED),
    ]


def test_lifecycle_when_liquidations_resume_while_decaying_then_active_again() -> None:
    tracker = LiquidationTracker(DETECTION)
    long_flush(tracker)
    tracker.advance(13 * NS)
    tracker.on_liquidation(SYMBOL, 14 * NS, Side.SELL, Decimal(59500), Decimal(2))
    [event] = tracker.active()
    assert event.phase == EventPhase.ACTIVE and event.liquidations == 5 and event.extreme_price == Decimal(59500)


def test_clear_when_link_dropped_then_events_and_tape_forgotten() -> None:
    tracker = LiquidationTracker(DETECTION)
    long_flush(tracker, count=2)  # a burst in progress, not yet a cascade
    tracker.clear([SYMBOL], 11 * NS, "link DISCONNECTED")
    long_flush(tracker, start_s=11, count=2)  # two more after the gap do not complete the old burst
    assert tracker.active() == []
    long_flush(tracker, start_s=12)
    tracker.clear(None, 13 * NS, "resync")
    assert tracker.active() == []
    assert tracker.drain_changes()[-1].current == EventPhase.EXPIRED


def test_opposite_cascade_when_event_live_then_replaces_it() -> None:
    tracker = LiquidationTracker(DETECTION)
    long_flush(tracker)
    price = Decimal(59000)
    for i in range(4):
        ts = int((20 + i * 0.2) * NS)
        price = price * Decimal("1.002")
        tracker.on_liquidation(SYMBOL, ts, Side.BUY, price, Decimal(1))
        tracker.on_trade(SYMBOL, ts, price)
    [event] = tracker.active()
    assert event.direction == Side.BUY


def test_event_table_when_expired_then_terminal() -> None:
    assert not any(phase == EventPhase.EXPIRED for phase, _ in EVENT_TRANSITIONS)
    with pytest.raises(IllegalEventTransition):
        next_state(EVENT_TRANSITIONS, EventPhase.EXPIRED, EventTrigger.LIQUIDATION, IllegalEventTransition)
