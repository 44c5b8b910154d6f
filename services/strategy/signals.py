"""Publishing what a strategy decided: a transition (KV `strategy.<name>` first, then
`StrategyStateChanged`), a signal (`SignalGenerated`, sized on the venue's grid from its rules in
KV `rules.<venue>.<symbol>`), a crash (`StrategyCrashed`) and alerts.

Nothing here decides or changes the state: the runner hands over the intents `apply` left and
applies what was published (a signal's id) afterwards.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nats.errors import Error as NatsError

from libs.bus import Bus
from libs.instruments import round_price, round_quantity
from libs.logging import Logger
from libs.stamping import Stamper
from libs.telemetry import signal_span
from proto import subjects
from proto.enums import AlertSeverity, OrderType
from proto.kv import StrategyCrashesValue, StrategyStateValue, SymbolRulesValue, decode_value
from proto.messages import AlertRaised, SignalGenerated, StrategyCrashed, StrategyStateChanged

from . import adapters
from .domain import Signal, Transition


class IntentPublisher:
    """Turns one instance's intents into bus messages.

    Args:
        bus: the connected bus.
        log: the service's logger.
        name: the instance's name.
        kind: the instance's kind (stored with its state).
        venue: the venue whose rules size the signals ("": published as decided; risk still
            rounds them to the grid).
        stamp: builds the messages (ids and times; default: wall clock and UUID4 ids).
    """

    def __init__(
        self, bus: Bus, log: Logger, name: str, kind: str, venue: str = "", stamp: Stamper | None = None
    ) -> None:
        self.bus = bus
        self.log = log
        self.name = name
        self.kind = kind
        self.venue = venue
        self.stamp = stamp or Stamper()

    async def on_grid(self, action: Signal) -> Signal:
        """The signal on the venue's grid: quantity DOWN to the step, protective levels to the
        nearest tick. Unchanged while the rules are unknown, or when the quantity would round to
        nothing (then risk denies it naming the venue's rule instead of this sending nothing)."""
        if not self.venue:
            return action
        key = subjects.key_symbol_rules(self.venue, action.symbol)
        try:
            entry = await self.bus.kv_get(key)
        except (NatsError, TimeoutError, OSError) as exc:
            self.log.warning("venue_rules_unreadable", key=key, error=f"{type(exc).__name__}: {exc}"[:300])
            return action
        rules = decode_value(SymbolRulesValue, entry[0]) if entry is not None else None
        if rules is None:
            return action
        quantity = round_quantity(action.quantity, rules, OrderType.MARKET)
        levels = {
            name: round_price(value, rules)
            for name in ("stop_loss", "take_profit")
            if (value := getattr(action, name)) is not None
        }
        return dataclasses.replace(action, quantity=quantity if quantity > 0 else action.quantity, **levels)

    async def transition(self, action: Transition, symbol: str | None, now_ns: int) -> None:
        """Persist the new state in KV, then announce it (`evt.strategy.<name>.state`)."""
        record = StrategyStateValue(
            state=action.current, reason=action.reason, symbol=symbol, ts_ns=now_ns, kind=self.kind
        )
        await adapters.write_strategy_state(self.bus, self.name, record)
        event = self.stamp(
            StrategyStateChanged,
            strategy=self.name,
            previous=action.previous,
            current=action.current,
            reason=action.reason,
            ts_event_ns=now_ns,
        )
        await self.bus.publish(subjects.evt_strategy_state(self.name), event)
        self.log.info(
            "strategy_state_changed",
            strategy=self.name,
            previous=action.previous.value,
            current=action.current.value,
            reason=action.reason,
        )

    async def signal(self, action: Signal) -> SignalGenerated:
        """Ask risk for a market order; returns the published signal (its id keys the order)."""
        action = await self.on_grid(action)
        signal = self.stamp(
            SignalGenerated,
            strategy=self.name,
            symbol=action.symbol,
            side=action.side,
            order_type=OrderType.MARKET,
            quantity=action.quantity,
            reduce_only=action.reduce_only,
            reason=action.reason,
            stop_loss=action.stop_loss,
            take_profit=action.take_profit,
            confidence=action.confidence,
        )
        with signal_span("strategy", self.name, action.symbol, signal.message_id):
            await self.bus.publish(subjects.evt_signal(self.name, action.symbol), signal, msg_id=signal.message_id)
        self.log.info(
            "signal_generated",
            strategy=self.name,
            signal_id=signal.message_id,
            symbol=action.symbol,
            side=action.side.value,
            quantity=str(action.quantity),
            reduce_only=action.reduce_only,
            stop_loss=str(action.stop_loss) if action.stop_loss is not None else None,
            take_profit=str(action.take_profit) if action.take_profit is not None else None,
            reason=action.reason,
        )
        return signal

    async def crash(self, event: StrategyCrashed, record: StrategyCrashesValue) -> None:
        """Persist the crash history (it survives restarts, FM-C2), then announce the crash."""
        await adapters.write_crash_record(self.bus, self.name, record)
        await self.bus.publish(subjects.evt_strategy_crashed(self.name), event)

    async def alert(self, key: str, severity: AlertSeverity, title: str, **details: Any) -> None:
        """Raise an alert, best effort: a crash is recorded and logged whether or not it goes out."""
        self.log.warning("alert_raised", key=key, title=title, **details)
        component = subjects.strategy_component(self.name)
        alert = self.stamp(AlertRaised, key=key, severity=severity, component=component, title=title, details=details)
        try:
            await self.bus.publish(subjects.EVT_ALERT_RAISED, alert)
        except Exception as exc:  # noqa: BLE001 - the crash is still recorded and logged; the alert is best effort
            self.log.warning("alert_publish_failed", key=key, error=f"{type(exc).__name__}: {exc}")
