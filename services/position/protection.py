"""Protective stops (FM-C2): the reduce-only orders that carry an entry's stop-loss and take-profit
levels (`ProtectionLevels`) at the venue, sized to the position, replaced when it changes and
cancelled when it is flat. A protective order the venue refuses as already triggered is closed at
market by `Submission` (the placement's error); the next round then follows the position.
"""

from __future__ import annotations

from libs.errors import TransientError
from libs.ids import client_order_id_for
from libs.orders_model import is_terminal
from proto.enums import AlertSeverity, OrderSource, OrderStatus
from proto.messages import SubmitOrder

from .adapters import VENUE_FAILURES
from .cancels import Cancels
from .core import Core
from .domain import (
    IMMEDIATE_TRIGGER_REASON,
    PROTECT_CLOSE_PREFIX,
    PROTECT_PREFIX,
    ProtectiveOrder,
    is_protective,
    plan_protection,
    protective_orders,
)
from .lookup import OrderLookup
from .protection_levels import ProtectionLevels
from .submission import Submission

GIVEN_UP_KEPT = 1_000
"""Stems of refused protective orders remembered (one per protected entry; bounded, issue 15)."""


def newly_given_up(given_up: dict[str, None], stem: str, keep: int = GIVEN_UP_KEPT) -> bool:
    """Remember that the venue keeps refusing the protective order `stem`; True the first time
    (alert then). At most `keep` stems are remembered: the oldest is forgotten first (and alerted
    again should the venue refuse it again)."""
    if stem in given_up:
        return False
    given_up[stem] = None
    while len(given_up) > keep:
        del given_up[next(iter(given_up))]
    return True


class ProtectiveStops:
    """Keeps each protected position's stop and take-profit at the venue.

    Args:
        core: the shared state and effects.
        levels: the levels to carry (forgotten once the position is flat and its entry finished).
        submission: approves and sends the protective orders.
        cancels: cancels stale ones.
        lookup: numbers the attempts (fresh client order ids).
    """

    def __init__(
        self, core: Core, levels: ProtectionLevels, submission: Submission, cancels: Cancels, lookup: OrderLookup
    ) -> None:
        self.core = core
        self.levels = levels
        self.submission = submission
        self.cancels = cancels
        self.lookup = lookup
        self.given_up: dict[str, None] = {}
        """Protective order stems the venue keeps refusing (alerted once), the newest `GIVEN_UP_KEPT`."""

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
            if newly_given_up(self.given_up, stem):
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
                await self.levels.forget(symbol)

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
