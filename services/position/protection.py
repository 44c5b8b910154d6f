"""Protective stops (FM-C2): the stop-loss and take-profit levels of an entry (durable in KV), the
reduce-only orders that carry them at the venue, sized to the position, and what happens when the
venue refuses one as already triggered (the position is closed at market).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import msgspec
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError

from libs.binance.errors import VenueError
from libs.errors import TransientError
from libs.ids import client_order_id_for
from libs.orders_model import OrderRecord, OrderTrigger, is_terminal
from proto.enums import AlertSeverity, ErrorClass, OrderSource, OrderStatus
from proto.messages import OrderRejected, SubmitOrder

from .adapters import VENUE_FAILURES
from .cancels import Cancels
from .core import Core
from .domain import (
    IMMEDIATE_TRIGGER_REASON,
    PROTECT_CLOSE_PREFIX,
    PROTECT_PREFIX,
    Protection,
    ProtectiveOrder,
    is_protective,
    plan_protection,
    protective_orders,
)
from .lookup import OrderLookup
from .submission import Submission


class ProtectiveStops:
    """Keeps each protected position's stop and take-profit at the venue.

    Args:
        core: the shared state and effects.
        submission: approves and sends the protective orders.
        cancels: cancels stale ones.
        lookup: numbers the attempts (fresh client order ids).
    """

    def __init__(self, core: Core, submission: Submission, cancels: Cancels, lookup: OrderLookup) -> None:
        self.core = core
        self.submission = submission
        self.cancels = cancels
        self.lookup = lookup
        self.given_up: set[str] = set()
        """Protective order stems the venue keeps refusing (alerted once)."""

    def _key(self, symbol: str) -> str:
        return f"protection.{self.core.venue}.{symbol}"

    async def set_protection(self, protection: Protection) -> None:
        """Remember (durably, in KV) the levels that protect the symbol's position."""
        self.core.ledger.protections[protection.symbol] = protection
        value = {
            "entry": protection.entry,
            "stop_loss": str(protection.stop_loss) if protection.stop_loss is not None else None,
            "take_profit": str(protection.take_profit) if protection.take_profit is not None else None,
        }
        await self.core.bus.kv_put(self._key(protection.symbol), msgspec.json.encode(value))
        self.core.protect_dirty.add(protection.symbol)

    async def _clear_protection(self, symbol: str) -> None:
        self.core.ledger.protections.pop(symbol, None)
        kv = await self.core.bus.kv()
        try:
            await kv.delete(self._key(symbol))
        except KeyNotFoundError:
            pass
        self.core.log.info("protection_cleared", symbol=symbol)

    async def load(self, fallback: Sequence[Protection] = ()) -> None:
        """Protective levels from KV (written before use, so authoritative); `fallback` (a snapshot's)
        only for a symbol whose KV record cannot be read."""
        core = self.core
        protections: dict[str, Protection] = {}
        core.ledger.protections = protections
        saved = {p.symbol: p for p in fallback}
        for symbol in core.symbols:
            try:
                entry = await core.bus.kv_get(self._key(symbol))
            except (NatsError, TimeoutError) as exc:
                core.log.warning("protection_read_failed", symbol=symbol, error=repr(exc), action_taken="snapshot's")
                if symbol in saved:
                    protections[symbol] = saved[symbol]
                continue
            if entry is None:
                continue
            try:
                raw = msgspec.json.decode(entry[0])
                protections[symbol] = Protection(
                    str(raw["entry"]),
                    symbol,
                    Decimal(raw["stop_loss"]) if raw.get("stop_loss") else None,
                    Decimal(raw["take_profit"]) if raw.get("take_profit") else None,
                )
            except (msgspec.DecodeError, KeyError, TypeError, ArithmeticError) as exc:
                core.log.error("protection_record_invalid", symbol=symbol, error=repr(exc), action_taken="ignored")

    async def maintain(self, *, all_symbols: bool = False) -> None:
        """Keep each protected position's reduce-only stop and take-profit at the venue, sized to it.

        Called under the order lock after fills, cancels, polls and reconciliation. Wanted orders
        are placed before stale ones are cancelled, so a resize never leaves the position bare;
        when the position is flat every protective order of the symbol is cancelled. Nothing is
        done while orders may not be sent (unreconciled, link down, lease lost).
        """
        core = self.core
        if not core.may_submit():
            return
        symbols = set(core.protect_dirty)
        if all_symbols:
            ledger = core.ledger
            symbols |= set(ledger.protections) | {o.symbol for o in ledger.orders.values() if is_protective(o)}
        core.protect_dirty.clear()
        for symbol in sorted(symbols):
            try:
                await self._protect_symbol(symbol)
            except (*VENUE_FAILURES, TransientError) as exc:
                core.protect_dirty.add(symbol)  # tried again at the next poll
                core.log.warning("protection_failed", symbol=symbol, error=f"{type(exc).__name__}: {exc}")

    async def _protect_symbol(self, symbol: str) -> None:
        ledger = self.core.ledger
        position = ledger.position(symbol).quantity
        protection = ledger.protections.get(symbol)
        if any(
            o.symbol == symbol and o.idempotency_key.startswith(PROTECT_CLOSE_PREFIX) and not is_terminal(o.status)
            for o in ledger.orders.values()
        ):
            return  # closing at market after a stop/take-profit refused as already triggered: wait for it
        wanted = protective_orders(protection, position)
        plan = plan_protection(wanted, ledger.orders, symbol, client_order_id_for)
        for item, planned in plan.place:
            if planned.startswith(PROTECT_PREFIX):
                key = await self.lookup.fresh_key(planned.rsplit(":", 1)[0])
            else:
                key = planned
            if not await self._place_protective(item, key):
                return  # closed at market instead; the rest follows the position at the next round
        for stem in plan.unavailable:
            if stem not in self.given_up:
                self.given_up.add(stem)
                await self.core.alert(
                    f"protection-unavailable:{stem}",
                    AlertSeverity.P1,
                    "the venue keeps refusing a protective order: position not protected",
                    symbol=symbol,
                    stem=stem,
                    position=str(position),
                )
        for coid in plan.cancel:
            await self.cancels.cancel(ledger.orders[coid], "protective order no longer matches the position")
        if position == 0 and protection is not None:
            entry = ledger.orders.get(protection.entry)
            if entry is None or is_terminal(entry.status):
                await self._clear_protection(symbol)

    async def _place_protective(self, item: ProtectiveOrder, key: str) -> bool:
        """Place one protective order; False when the venue refused it as already triggered (-2021)
        and the position is being closed at market instead."""
        coid = client_order_id_for(key)
        command = SubmitOrder(
            client_order_id=coid,
            idempotency_key=key,
            source=OrderSource.RISK,
            symbol=item.symbol,
            side=item.side,
            order_type=item.order_type,
            quantity=item.quantity,
            venue=self.core.venue,
            stop_price=item.stop_price,
            reduce_only=True,
            correlation_id=item.entry,
        )
        order = await self.submission.approve_own(command)
        self.core.log.info(
            "protective_order_placing",
            client_order_id=coid,
            symbol=item.symbol,
            type=item.order_type.value,
            quantity=str(item.quantity),
            stop_price=str(item.stop_price),
            entry=item.entry,
        )
        await self.submission.submit(order)
        return not (order.status == OrderStatus.REJECTED and (order.reason or "").startswith(IMMEDIATE_TRIGGER_REASON))

    async def triggered_at_placement(self, order: OrderRecord, exc: VenueError) -> None:
        """A stop or take-profit the venue refuses because the mark is already past it (-2021).

        Its level is passed: for a stop the loss limit, for a take-profit the target. Leaving the
        position without it is the one wrong answer, so the position is closed now with a reduce-only
        MARKET order (`protect-close:...`), as the venue would have done had the order rested.
        """
        core = self.core
        coid = order.client_order_id
        order.reason = f"{IMMEDIATE_TRIGGER_REASON} (code={exc.code} {exc.msg}): position closed at market instead"
        core.transition(order, OrderTrigger.REJECT)
        rejected = OrderRejected(
            client_order_id=coid,
            symbol=order.symbol,
            reason=order.reason,
            error_class=ErrorClass.PERMANENT.value,
            venue_code=exc.code,
        )
        await core.publish(core.order_subject("rejected", order), rejected, f"rejected:{coid}", coid)
        await core.save(order)
        position = core.ledger.position(order.symbol).quantity
        core.log.error(
            "protection_triggered_at_placement",
            client_order_id=coid,
            symbol=order.symbol,
            type=order.order_type.value,
            stop_price=str(order.stop_price),
            position=str(position),
            action_taken="close the position at market (reduce-only)",
        )
        await core.alert(
            core.scoped(f"protection-triggered:{order.symbol}"),
            AlertSeverity.P1,
            "protective order would trigger immediately: position closed at market",
            coid=coid,
            type=order.order_type.value,
            stop_price=str(order.stop_price),
            position=str(position),
        )
        if position == 0:
            return
        stem = order.idempotency_key[len(PROTECT_PREFIX) :].rsplit(":", 1)[0]  # <kind>:<entry>:<size>
        key = await self.lookup.fresh_key(f"{PROTECT_CLOSE_PREFIX}{stem}")
        command = self.submission.market_close(key, order.symbol, position, correlation_id=coid)
        close = await self.submission.approve_own(command)
        await self.submission.submit(close)
