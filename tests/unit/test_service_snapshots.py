"""Snapshots of risk, strategy and watchdog state (SPEC §8), pure: what is captured comes back
exactly, a restored instance goes on like one that never stopped, replay is idempotent, and the
watchdog's restored timers and open alerts neither re-page nor forget."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from libs.clock import ManualClock
from libs.heartbeat import ComponentView
from libs.logging import get_logger
from libs.service_snapshots import snapshot_fits_stream
from proto.enums import AlertSeverity, ComponentState, OrderSource, OrderType, Side, StrategyState, TradingState
from proto.kv import TradingStateValue
from proto.messages import OrderApproved, OrderFilled, PositionChanged, SubmitOrder
from services.risk import snapshot as risk_snap
from services.risk.checks import RiskLimits
from services.risk.exposure import OrderRateWindow, PendingExposure
from services.risk.handlers import RiskService
from services.risk.trades import TradeTracker
from services.strategy import snapshot as strategy_snap
from services.strategy.config import instance_config
from services.strategy.liquidations import CascadeDetection, LiquidationTracker, TrackerState
from services.watchdog import snapshot as watchdog_snap
from services.watchdog.alerts import AlertNotice
from services.watchdog.evaluator import WatchdogEvaluator

S = 1_000_000_000
VENUE = "binance-usdm"


START = 1_700_000_000 * S


# --------------------------------------------------------------------------- risk


def _risk(clock: ManualClock) -> RiskService:
    limits = RiskLimits(symbols=frozenset({"BTCUSDT"}), max_position_qty=Decimal(1), max_order_notional=Decimal(10**6))
    state = TradingStateValue(state=TradingState.ACTIVE)
    return RiskService(None, get_logger("risk-test"), limits, VENUE, clock, state)  # type: ignore[arg-type]


def _order(key: str, side: Side, quantity: str, strategy: str | None = "imbalance") -> SubmitOrder:
    return SubmitOrder(
        client_order_id=f"c-{key}",
        idempotency_key=key,
        source=OrderSource.STRATEGY,
        symbol="BTCUSDT",
        side=side,
        order_type=OrderType.MARKET,
        quantity=Decimal(quantity),
        strategy=strategy,
    )


def _position(quantity: str, realized: str, ts: int, caused_by: str | None = None) -> PositionChanged:
    return PositionChanged(
        venue=VENUE,
        symbol="BTCUSDT",
        quantity=Decimal(quantity),
        average_entry_price=Decimal(60000),
        realized_pnl=Decimal(realized),
        caused_by_client_order_id=caused_by,
        ts_event_ns=ts,
    )


def _history(clock: ManualClock) -> list[Any]:
    t = clock.now
    entry = _order("a", Side.BUY, "0.1")
    pending = _order("b", Side.BUY, "0.2")
    return [
        _position("0", "0", t),
        OrderApproved(order=entry),
        OrderFilled(
            client_order_id=entry.client_order_id,
            venue_order_id=1,
            symbol="BTCUSDT",
            side=Side.BUY,
            price=Decimal(60000),
            quantity=Decimal("0.1"),
            cumulative_quantity=Decimal("0.1"),
            order_quantity=Decimal("0.1"),
            trade_id=1,
        ),
        _position("0.1", "0", t + 1, caused_by=entry.client_order_id),
        OrderApproved(order=pending),
    ]


def _state(service: RiskService) -> dict[str, Any]:
    snapshot = service.capture(service.orders_seq)
    return msgspec.to_builtins(msgspec.structs.replace(snapshot, taken_ns=0))


def test_risk_snapshot_when_restored_then_pending_trades_and_positions_equal() -> None:
    clock = ManualClock(START)
    original = _risk(clock)
    for seq, message in enumerate(_history(clock), start=1):
        original.replay_message(message, seq)
    assert original.pending.totals("BTCUSDT") == (Decimal("0.2"), Decimal(0))
    data = risk_snap.encode_snapshot(original.capture(original.orders_seq))

    restored = _risk(clock)
    restored.restore(risk_snap.decode_snapshot(data))
    assert _state(restored) == _state(original)
    assert restored.pending.totals("BTCUSDT") == (Decimal("0.2"), Decimal(0))
    # The open trade keeps its strategy: closing it at a loss is that strategy's loss (CB-3 input).
    update = restored.trades.on_position("BTCUSDT", Decimal(0), Decimal(-5), clock.now + 2, None)
    assert update is not None and update.closed is not None
    assert (update.closed.strategy, update.closed.pnl) == ("imbalance", Decimal(-5))


def test_risk_replay_when_messages_applied_twice_then_same_state_as_once() -> None:
    clock = ManualClock(START)
    once, twice = _risk(clock), _risk(clock)
    history = _history(clock)
    for seq, message in enumerate(history, start=1):
        once.replay_message(message, seq)
        twice.replay_message(message, seq)
    for seq, message in enumerate(history, start=1):  # a redelivered or overlapping range
        twice.replay_message(message, seq)
    assert _state(twice) == _state(once)


def test_pending_state_when_partially_filled_then_restored_with_open_quantity() -> None:
    pending = PendingExposure()
    pending.add(_order("p", Side.SELL, "0.5"))
    pending.on_fill("c-p", Decimal("0.2"))
    restored = PendingExposure.from_state(pending.to_state())
    assert restored.totals("BTCUSDT") == pending.totals("BTCUSDT") == (Decimal(0), Decimal("0.3"))


def test_pending_exposure_to_state_when_round_tripped_then_same_rules_as_add_and_fill() -> None:
    pending = PendingExposure()
    pending.add(_order("a", Side.BUY, "0.4"))
    state = pending.to_state()
    complete = msgspec.structs.replace(state[0], client_order_id="c-done", filled=Decimal("0.4"))
    duplicate = msgspec.structs.replace(state[0], quantity=Decimal("9"))

    restored = PendingExposure.from_state([*state, complete, duplicate])

    assert restored.to_state() == state  # a filled order is not pending; the first of a coid wins
    assert restored.totals("BTCUSDT") == (Decimal("0.4"), Decimal(0))


def test_trade_tracker_to_state_when_round_tripped_then_open_trade_kept_and_flat_symbol_has_none() -> None:
    tracker = TradeTracker()
    tracker.on_position("BTCUSDT", Decimal(0), Decimal(0), 1, None)
    tracker.on_position("BTCUSDT", Decimal("0.1"), Decimal(-1), 2, "trend")
    tracker.on_position("ETHUSDT", Decimal(0), Decimal(3), 3, None)
    state = tracker.to_state()
    assert [(s.symbol, s.trade.strategy if s.trade else None) for s in state] == [
        ("BTCUSDT", "trend"),
        ("ETHUSDT", None),
    ]

    restored = TradeTracker.from_state(state)

    assert restored.to_state() == state
    update = restored.on_position("BTCUSDT", Decimal(0), Decimal(-4), 4, None)
    assert update is not None and update.closed is not None
    assert (update.closed.strategy, update.closed.pnl) == ("trend", Decimal(-4))


def test_order_rate_window_to_state_when_times_expire_then_only_the_window_is_kept() -> None:
    rates = OrderRateWindow(window_ns=10)
    for ts in (1, 5, 12):
        rates.record("trend", ts)
    rates.record("old", 0)

    state = rates.to_state(now_ns=14)

    assert state == {"trend": [5, 12]}
    assert OrderRateWindow.from_state(state, window_ns=10).count("trend", 14) == 2


def test_liquidation_tracker_to_state_when_loaded_then_same_events_and_tapes() -> None:
    tracker = LiquidationTracker(CascadeDetection())
    t = 1_700_000_000 * S
    tracker.on_trade("BTCUSDT", t, Decimal(60000))
    for i in range(4):
        tracker.on_liquidation("BTCUSDT", t + i * S // 10, Side.SELL, Decimal(59800 - 100 * i), Decimal(2))
    state = tracker.to_state()
    assert list(state.events) == ["BTCUSDT"]

    loaded = LiquidationTracker(CascadeDetection())
    loaded.load_state(msgspec.json.decode(msgspec.json.encode(state), type=TrackerState))

    assert loaded.to_state() == state


def test_risk_snapshot_when_bytes_corrupt_then_decode_raises_value_error() -> None:
    with pytest.raises(ValueError):
        risk_snap.decode_snapshot(b'{"orders_seq": "x"}')


# --------------------------------------------------------------------------- strategy


@pytest.mark.parametrize(("name", "kind"), [("cascade-fade", "cascade_fade"), ("trend", "trend"), ("x", "imbalance")])
def test_strategy_snapshot_when_restored_then_goes_on_like_one_never_stopped(name: str, kind: str) -> None:
    config = {name: {"kind": kind}} if name == "x" else {}
    instance = instance_config(name, config, environ={})
    t = 1_700_000_000 * S

    def flush(strategy: Any, start: int, price: Decimal) -> None:
        strategy.on_trade("BTCUSDT", start, price, Decimal(1), True)
        for i in range(4):
            price -= Decimal(150)
            strategy.on_liquidation("BTCUSDT", start + (i + 1) * S // 10, Side.SELL, price, Decimal(2))
            strategy.on_trade("BTCUSDT", start + (i + 1) * S // 10, price, Decimal(2), True)

    reference = instance.build(state=StrategyState.SCANNING)
    flush(reference, t, Decimal(60000))
    data = strategy_snap.encode_snapshot(strategy_snap.capture(reference, instance.kind, 42, t))
    restored = instance.build()
    strategy_snap.restore(restored, strategy_snap.decode_snapshot(data))
    assert restored.state == StrategyState.SCANNING

    for strategy in (reference, restored):  # the same tail after the snapshot
        flush(strategy, t + 2 * S, Decimal(59000))
        strategy.advance(t + 5 * S)
    after = [strategy_snap.capture(s, instance.kind, 43, t) for s in (reference, restored)]
    assert after[0] == after[1]
    assert restored.active_events() == reference.active_events()
    if kind == "cascade_fade":
        assert [e["phase"] for e in restored.active_events()] == ["DECAYING"]


# --------------------------------------------------------------------------- watchdog


def _views(**states: ComponentState) -> dict[str, ComponentView]:
    names = {name: name.replace("_", "-") for name in states}
    return {names[name]: ComponentView(names[name], state, 1, None) for name, state in states.items()}


def _component_alerts(evaluation: Any) -> list[tuple[str, bool]]:
    return [(a.key, a.raised) for a in evaluation.alerts if a.key.startswith("component_down")]


def test_watchdog_evaluator_when_restored_then_open_alert_not_raised_again_and_cleared_one_resolved() -> None:
    clock = ManualClock(START)
    before = WatchdogEvaluator(clock, grace_ns=3 * S)
    clock.now += 4 * S
    first = before.evaluate(_views(gateway=ComponentState.DOWN, risk=ComponentState.READY))
    assert _component_alerts(first) == [("component_down:gateway", True)]
    data = watchdog_snap.encode_snapshot(
        watchdog_snap.WatchdogSnapshot(control_seq=7, taken_ns=clock.now, evaluator=before.export_state())
    )

    after = WatchdogEvaluator(clock, grace_ns=3 * S, initial_level=before.level)  # the level comes from KV
    after.restore_state(watchdog_snap.decode_snapshot(data).evaluator)
    # Within the grace period nothing is decided for components not heard from yet: no false DOWN.
    early = after.evaluate(_views(gateway=ComponentState.DOWN, risk=ComponentState.DOWN))
    assert early.components == [] and early.alerts == []
    clock.now += 4 * S
    still_down = after.evaluate(_views(gateway=ComponentState.DOWN, risk=ComponentState.READY))
    assert _component_alerts(still_down) == []  # gateway's alert is still open: not paged twice
    back = after.evaluate(_views(gateway=ComponentState.READY, risk=ComponentState.READY))
    assert _component_alerts(back) == [("component_down:gateway", False)]


def test_watchdog_snapshot_when_round_tripped_then_open_alerts_and_timers_equal() -> None:
    clock = ManualClock(START)
    evaluator = WatchdogEvaluator(clock, grace_ns=0)
    clock.now += S
    evaluator.evaluate(_views(market_data=ComponentState.DOWN))
    notice = AlertNotice(key="k", severity=AlertSeverity.P1, component="risk", title="t", details={"a": 1})
    snapshot = watchdog_snap.WatchdogSnapshot(
        control_seq=3, taken_ns=time.time_ns(), evaluator=evaluator.export_state(), open_alerts=[notice]
    )
    back = watchdog_snap.decode_snapshot(watchdog_snap.encode_snapshot(snapshot))
    assert back == snapshot
    assert "component_down_long:market-data" in back.evaluator.first_seen  # the 10 s EMERGENCY timer


def test_snapshot_fits_stream_when_ahead_or_older_than_retention_then_false_else_true() -> None:
    log = get_logger("test")
    assert snapshot_fits_stream(log, 100, 1, 150, "full replay")
    assert snapshot_fits_stream(log, 150, 1, 150, "full replay")  # nothing after it yet
    assert snapshot_fits_stream(log, 99, 100, 150, "full replay")  # the next message is the first kept
    assert not snapshot_fits_stream(log, 151, 1, 150, "full replay")  # stream reset since
    assert not snapshot_fits_stream(log, 98, 100, 150, "full replay")  # message 99 is gone
