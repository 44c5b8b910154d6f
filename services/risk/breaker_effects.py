"""Circuit breakers in the running service (SPEC §4): their inputs from followed events (position
changes for CB-1/CB-3, marks for CB-2, a strategy re-enabled as CB-3's reset), what a transition
does (halt and flatten, pause background work, disable or enable a strategy) before it is persisted,
published and alerted, their restore from KV at start, and the operator's reset endpoint.
"""

from __future__ import annotations

import msgspec

from libs.breaker import BreakerState
from libs.metrics import metrics_of
from proto import subjects
from proto.enums import AlertSeverity, StrategyMode, TradingState
from proto.messages import (
    AlertRaised,
    AlertResolved,
    BackgroundWorkPaused,
    BackgroundWorkResumed,
    BreakerStateChanged,
    DisableStrategy,
    EnableStrategy,
    MarkPrice,
    PositionChanged,
)
from proto.replies import BreakerResetReply, BreakerResetRequest, error_reply

from . import adapters, flattening, trading_control
from .breaker_rules import restore_breaker
from .breakers import (
    ABNORMAL_MARKET,
    RAPID_LOSS,
    RESOURCE_EXHAUSTION,
    STRATEGY_MALFUNCTION_PREFIX,
    BreakerChange,
    BreakerNotTripped,
    RiskBreaker,
)
from .core import RiskCore
from .state import apply
from .trading_control import RISK_OPERATOR
from .trading_state import TradingTrigger

_reset_request = msgspec.json.Decoder(BreakerResetRequest)

SEVERITY: dict[str, AlertSeverity] = {
    RAPID_LOSS: AlertSeverity.P0,
    ABNORMAL_MARKET: AlertSeverity.P1,
    RESOURCE_EXHAUSTION: AlertSeverity.P1,
}


async def on_position(risk: RiskCore, event: PositionChanged) -> None:
    """A position change: track it, and count its realized PnL for CB-1 and CB-3."""
    update = apply(risk.state, event)
    if update is None or risk.breakers is None:
        return
    now = risk.clock()
    changes: list[BreakerChange] = []
    rapid = risk.breakers.rapid_loss
    change = rapid.on_trade_update(update, now)
    if change is not None:
        changes.append(change)
    else:
        await _persist(risk, rapid, now)
    if update.closed is not None and update.closed.strategy is not None:
        breaker = risk.breakers.strategy(update.closed.strategy)
        change = breaker.on_closed_trade(update.closed.pnl, now)
        if change is not None:
            changes.append(change)
        else:
            await _persist(risk, breaker, now)
        risk.log.info(
            "trade_closed",
            symbol=update.closed.symbol,
            strategy=update.closed.strategy,
            pnl=str(update.closed.pnl),
            session_pnl=str(rapid.session_pnl),
            consecutive_losses=rapid.consecutive_losses,
        )
    for change in changes:
        await apply_breaker_change(risk, change)


async def on_mark(risk: RiskCore, mark: MarkPrice) -> None:
    """A mark price: the reference for notional checks and an input of CB-2."""
    apply(risk.state, mark)
    if risk.breakers is None:
        return
    now = risk.clock()
    market = risk.breakers.abnormal_market
    for change in (
        market.on_price(mark.symbol, mark.mark_price, now),
        market.on_funding(mark.symbol, mark.funding_rate, now) if mark.funding_rate is not None else None,
    ):
        if change is not None:
            await apply_breaker_change(risk, change)


async def on_strategy_enabled(risk: RiskCore, command: EnableStrategy) -> None:
    """An operator re-enabled a strategy (gateway): live, that is the manual reset of its CB-3; on
    paper the breaker stays open (the strategy trades on paper only, `paper`)."""
    risk.paper.on_enabled(command)
    if risk.breakers is None or command.mode == StrategyMode.PAPER:
        return
    breaker = risk.breakers.strategies.get(command.strategy)
    if breaker is None or not breaker.is_open:
        return
    change = breaker.reset(command.operator, command.reason or "strategy re-enabled", risk.clock())
    await apply_breaker_change(risk, change, announce_enable=False)


async def _persist(risk: RiskCore, breaker: RiskBreaker, now: int) -> None:
    """Save a breaker's counters (no state change) so a restart resumes them."""
    await adapters.write_breaker(risk.bus, breaker.snapshot(now))


async def apply_breaker_change(risk: RiskCore, change: BreakerChange, *, announce_enable: bool = True) -> None:
    """Act on a breaker transition, then persist it, publish it and raise/resolve its alert.

    The protective action comes first: a crash after it leaves the system safer, never less safe.
    """
    async with risk.breaker_lock:
        record = change.record
        breaker_id = change.breaker
        risk.log.warning(
            "breaker_state_changed",
            breaker=breaker_id,
            previous=change.previous.value,
            current=change.current.value,
            reason=change.reason,
            operator=change.operator,
        )
        strategy = record.details.get("strategy") if breaker_id.startswith(STRATEGY_MALFUNCTION_PREFIX) else None
        if change.tripped:
            metrics = metrics_of(risk.bus)
            if metrics is not None:
                metrics.breaker_tripped(breaker_id)
            await _on_trip(risk, change, strategy)
        elif change.current == BreakerState.CLOSED:
            await _on_close(risk, change, strategy, announce_enable)
        await adapters.write_breaker(risk.bus, record)
        await risk.bus.publish(
            subjects.evt_breaker(breaker_id),
            BreakerStateChanged(
                breaker=breaker_id,
                previous=change.previous.value,
                current=change.current.value,
                reason=change.reason,
                operator=change.operator,
                details=dict(record.details),
            ),
        )
        alert_key = f"breaker.{breaker_id}"
        if change.tripped:
            await risk.bus.publish(
                subjects.EVT_ALERT_RAISED,
                AlertRaised(
                    key=alert_key,
                    severity=SEVERITY.get(breaker_id, AlertSeverity.P1),
                    component=subjects.RISK,
                    title=f"{breaker_id} {record.title} tripped",
                    details={"reason": change.reason, "reset": record.reset_mode},
                ),
            )
        elif change.current == BreakerState.CLOSED:
            await risk.bus.publish(
                subjects.EVT_ALERT_RESOLVED,
                AlertResolved(key=alert_key, component=subjects.RISK, reason=change.reason),
            )


async def _on_trip(risk: RiskCore, change: BreakerChange, strategy: str | None) -> None:
    reason = f"{change.breaker} {change.record.title}: {change.reason}"
    tripped_at = change.record.tripped_at_ns or 0
    if change.breaker == RAPID_LOSS:
        if risk.trading.state != TradingState.HALTED:
            await trading_control.change_state(risk, TradingTrigger.HALT, RISK_OPERATOR, reason)
        await flattening.flatten(risk, f"{RAPID_LOSS}:{tripped_at}", reason)
    elif change.breaker == RESOURCE_EXHAUSTION:
        await risk.bus.publish(subjects.EVT_BACKGROUND_WORK, BackgroundWorkPaused(reason=change.reason))
        await adapters.write_background_work(risk.bus, True, change.reason, risk.clock())
    elif strategy is not None:
        command = DisableStrategy(strategy=strategy, operator=RISK_OPERATOR, reason=reason)
        await risk.bus.publish(
            subjects.cmd_strategy(strategy, "disable"), command, msg_id=f"disable:{change.breaker}:{tripped_at}"
        )
    # CB-2 needs no action here: the pre-trade checks read the breaker, and positions are kept.


async def _on_close(risk: RiskCore, change: BreakerChange, strategy: str | None, announce_enable: bool) -> None:
    if change.breaker == RESOURCE_EXHAUSTION:
        await risk.bus.publish(subjects.EVT_BACKGROUND_WORK, BackgroundWorkResumed(reason=change.reason))
        await adapters.write_background_work(risk.bus, False, change.reason, risk.clock())
    elif strategy is not None and announce_enable:
        operator = change.operator or RISK_OPERATOR
        command = EnableStrategy(strategy=strategy, operator=operator, reason=change.reason)
        await risk.bus.publish(subjects.cmd_strategy(strategy, "enable"), command)


async def load_breakers(risk: RiskCore, strategies: tuple[str, ...]) -> None:
    """Restore every breaker from KV (an unreadable record trips it: fail closed) and list them all."""
    board = risk.breakers
    if board is None:
        return
    for name in strategies:
        board.strategy(name)
    now = risk.clock()
    for breaker in board.all():
        record, error = await adapters.read_breaker(risk.bus, breaker.id)
        if record is not None and record.ts_ns < breaker.record.ts_ns:
            # KV is written at every change before anything else, so it is the newest unless it
            # was lost or rolled back: then the snapshot's record (restored in memory) stands.
            risk.log.warning(
                "breaker_kv_older_than_snapshot",
                breaker=breaker.id,
                kv_state=record.state.value,
                snapshot_state=breaker.state.value,
                action_taken="snapshot record kept and written back to KV",
            )
            await adapters.write_breaker(risk.bus, breaker.record)
        elif record is not None:
            restored = restore_breaker(board, breaker, record)
            risk.log.info("breaker_restored", breaker=breaker.id, state=restored.state.value)
        elif error is not None:
            risk.log.error("breaker_unreadable", breaker=breaker.id, error=error, action_taken="treated as OPEN")
            breaker.record = msgspec.structs.replace(
                breaker.record, state=BreakerState.OPEN, reason=f"unreadable persisted record: {error}", ts_ns=now
            )
            await adapters.write_breaker(risk.bus, breaker.record)
        elif breaker.record.ts_ns:
            risk.log.warning("breaker_missing_in_kv", breaker=breaker.id, action_taken="snapshot record written")
            await adapters.write_breaker(risk.bus, breaker.record)
        else:
            await adapters.write_breaker(risk.bus, breaker.snapshot(now))


async def reset_breaker(risk: RiskCore, payload: bytes) -> bytes:
    """`svc.risk.breaker_reset` (`BreakerResetRequest` → `BreakerResetReply`): manual reset, reason required.

    A CB-1 reset clears the breaker but leaves trading HALTED: the operator resumes explicitly.
    """
    try:
        request = _reset_request.decode(payload or b"{}")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return error_reply("bad_request", f"expected {{'breaker', 'operator', 'reason'}}: {exc}")
    if not request.breaker.strip():
        return error_reply("bad_request", "a breaker id is required")
    if not request.operator.strip():
        return error_reply("bad_request", "an operator is required")
    if not request.reason.strip():
        return error_reply("bad_request", "a reason is required")
    breaker = risk.breakers.get(request.breaker) if risk.breakers is not None else None
    if breaker is None:
        return error_reply("not_found", f"unknown breaker {request.breaker}")
    try:
        change = breaker.reset(request.operator, request.reason.strip(), risk.clock())
    except BreakerNotTripped as exc:
        return error_reply("not_tripped", str(exc))
    await apply_breaker_change(risk, change)
    halted = breaker.id == RAPID_LOSS and risk.trading.state == TradingState.HALTED
    reply = BreakerResetReply(
        breaker=breaker.id,
        state=change.current,
        previous=change.previous,
        trading_state=risk.trading.state,
        note="breaker cleared; trading stays HALTED until an operator resumes it" if halted else None,
    )
    return msgspec.json.encode(reply)
