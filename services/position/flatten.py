"""Flatten (SPEC §5): in EMERGENCY_MODE / HARD_SHUTDOWN no entry order stays open and every
position closes; a reduce-only MARKET backstop for positions the venue still shows after risk's
own flatten had its grace period. The mode itself (`Core.refresh_degradation`) follows KV.
"""

from __future__ import annotations

from decimal import Decimal

from libs.errors import TransientError
from libs.orders_model import is_terminal

from .adapters import VENUE_FAILURES
from .cancels import Cancels
from .core import Core
from .domain import flatten_stem, is_protective
from .integrity import Integrity
from .lookup import OrderLookup
from .protection import ProtectiveStops
from .submission import Submission

FLATTEN_GRACE_NS = 3_000_000_000
"""Risk's own flatten goes first; after this, positions the venue still shows are closed here."""


class Flattener:
    """Cancels entries and closes what risk's flatten left open."""

    def __init__(
        self,
        core: Core,
        submission: Submission,
        cancels: Cancels,
        lookup: OrderLookup,
        integrity: Integrity,
        protection: ProtectiveStops,
    ) -> None:
        self.core = core
        self.submission = submission
        self.cancels = cancels
        self.lookup = lookup
        self.integrity = integrity
        self.protection = protection

    async def enforce(self) -> None:
        """SPEC §5 in EMERGENCY_MODE / HARD_SHUTDOWN: no entry order stays open, every position closes.

        Entries (non-reduce-only orders, queued or live) are cancelled at once. Risk flattens through
        this service (reduce-only MARKET orders it approves); as a backstop, a symbol the venue still
        shows a position for `FLATTEN_GRACE_NS` later, with no reduce-only order in flight, gets a
        reduce-only MARKET order for the venue's quantity. Reduce-only: it can never open or flip a
        position, whatever risk sent meanwhile. Protective stops stay until the position is flat
        (`ProtectiveStops.maintain` cancels them then).
        """
        core = self.core
        if not core.flattening() or not core.may_submit():
            return
        async with core.lock:
            orders = core.ledger.orders
            for order in list(orders.values()):
                if is_terminal(order.status) or order.reduce_only or is_protective(order):
                    continue
                try:
                    await self.cancels.cancel(order, "flatten: no entries in EMERGENCY_MODE/HARD_SHUTDOWN")
                except (*VENUE_FAILURES, TransientError) as exc:
                    core.log.warning("flatten_cancel_failed", client_order_id=order.client_order_id, error=str(exc))
            since = core.flatten_since
            if since is not None and core.clock() - since >= FLATTEN_GRACE_NS:
                for row in await core.client.position_risk():
                    symbol = str(row.get("symbol"))
                    quantity = Decimal(str(row.get("positionAmt", "0")))
                    if quantity == 0 or symbol not in core.symbols:
                        continue
                    in_flight = any(
                        o.symbol == symbol and o.reduce_only and not is_protective(o) and not is_terminal(o.status)
                        for o in orders.values()
                    )
                    if not in_flight:
                        await self._place_flatten(symbol, quantity)
            await self.integrity.check_invariants()
            await self.protection.maintain(all_symbols=True)

    async def _place_flatten(self, symbol: str, venue_quantity: Decimal) -> None:
        core = self.core
        key = await self.lookup.fresh_key(f"{flatten_stem(core.component, core.flatten_key)}{symbol}")
        command = self.submission.market_close(key, symbol, venue_quantity, correlation_id=key)
        order = await self.submission.approve_own(command)
        core.log.error(
            "flatten_backstop", symbol=symbol, quantity=str(venue_quantity), client_order_id=order.client_order_id
        )
        await self.submission.submit(order)
