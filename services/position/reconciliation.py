"""Reconciliation with the venue (SPEC §6): its open orders and positions against ours, corrected
through events (unknown venue orders adopted as EXTERNAL, positions set to the venue's), before
any order is sent; at start-up, after the link comes back and after every user-stream reconnect.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal

from libs.orders_model import Position, is_terminal
from proto import subjects
from proto.enums import AlertSeverity, ConnectionState, OrderStatus
from proto.messages import PositionChanged

from .core import Core
from .domain import plan_reconciliation
from .execution import Execution
from .external import RECONCILIATION, ExternalOrders, update_from_answer
from .integrity import Integrity
from .protection import ProtectiveStops
from .submission import Submission
from .venue_port import VenuePort

ALL_SYMBOLS_OPEN_ORDERS_WEIGHT = 40
"""Weight of `GET /fapi/v1/openOrders` without a symbol; one symbol's costs 1."""


async def venue_open_orders(client: VenuePort, symbols: Iterable[str]) -> list[dict]:
    """The venue's open orders of `symbols`, one symbol per request.

    `GET /fapi/v1/openOrders` weighs 1 with a symbol and 40 without: the poll runs every second
    while the user-data stream is down, and 40 a second is the IP's whole 2400/min budget, which
    market-data's snapshots share (FM-N2). From 40 symbols on, the one request for all is cheaper.
    One request after the other, stopping at the first failure: a venue that is down costs the
    venue breaker one failure per poll, as before.

    Raises:
        VenueError, VenueTimeout, VenueUnreachable, BreakerOpen: as `open_orders`.
    """
    wanted = sorted(set(symbols))
    if not wanted or len(wanted) >= ALL_SYMBOLS_OPEN_ORDERS_WEIGHT:
        every = await client.open_orders()
        return [order for order in every if not wanted or order.get("symbol") in wanted]
    found: list[dict] = []
    for symbol in wanted:
        found.extend(await client.open_orders(symbol))
    return found


class Reconciliation:
    """Compares with the venue and corrects; the service is `reconciled` only after it succeeded."""

    def __init__(
        self,
        core: Core,
        execution: Execution,
        submission: Submission,
        integrity: Integrity,
        protection: ProtectiveStops,
    ) -> None:
        self.core = core
        self.execution = execution
        self.submission = submission
        self.integrity = integrity
        self.protection = protection
        self.external = ExternalOrders(core, execution)
        self.count = 0
        """Reconciliations done by this process."""

    async def reconcile(self, symbols: Sequence[str]) -> None:
        """Compare with the venue, correct through events, and only then mark reconciled.

        Runs at start-up, after the venue link comes back and after every user-stream reconnect;
        no order is sent until it has succeeded (SPEC §6).

        Raises:
            VenueError, VenueTimeout, VenueUnreachable, BreakerOpen, TransientError: the venue could not
                be asked; the service stays unreconciled and tries again.
        """
        core = self.core
        async with core.lock:
            ledger = core.ledger
            symbols = tuple(symbols) or core.symbols
            venue_open = await venue_open_orders(core.client, symbols)
            live = {coid: o for coid, o in ledger.orders.items() if not is_terminal(o.status)}
            plan = plan_reconciliation(live, venue_open, {}, {}, set(ledger.orders))
            for answer in plan.adopt:
                await self._adopt(answer)
            open_by_id = {str(o.get("clientOrderId")): o for o in venue_open}
            for coid, order in live.items():
                if coid in open_by_id:
                    await self.execution.apply_venue_order(order, open_by_id[coid])
                elif order.status == OrderStatus.PENDING_SUBMISSION:
                    continue  # sent by the poll once reconciled
                else:
                    await self.submission.query_and_apply(order)
            # Positions last, after every order's fills were fetched: the smallest window for a race.
            venue_positions_raw = await core.client.position_risk()
            venue_positions = {
                str(p["symbol"]): Decimal(str(p.get("positionAmt", "0")))
                for p in venue_positions_raw
                if p.get("symbol") in symbols and Decimal(str(p.get("positionAmt", "0"))) != 0
            }
            local_positions = {s: p.quantity for s, p in ledger.positions.items() if p.quantity != 0}
            entry_prices = {str(p["symbol"]): Decimal(str(p.get("entryPrice", "0"))) for p in venue_positions_raw}
            position_plan = plan_reconciliation({}, [], local_positions, venue_positions, set())
            for symbol, (local, remote) in position_plan.position_mismatches.items():
                await self._correct_position(symbol, local, remote, entry_prices.get(symbol, Decimal(0)))
            ledger.rebase()
            core.reconciled = True
            self.count += 1
            core.log.info(
                "reconciliation_done",
                adopted=len(plan.adopt),
                live_orders=len(live),
                position_corrections=len(position_plan.position_mismatches),
                number=self.count,
            )
            await core.set_link(ConnectionState.CONNECTED, "venue reachable and reconciled")
            await self.integrity.check_invariants(full=True)
            # Stops of open positions are re-established (or found, same ids) after every reconciliation.
            await self.protection.maintain(all_symbols=True)

    async def _adopt(self, answer: dict) -> None:
        """A venue open order nobody here sent: adopted as EXTERNAL through the event log, its fills
        booked as fills (the position then agrees with the venue's without a correction)."""
        await self.external.adopt(update_from_answer(answer), RECONCILIATION)

    async def _correct_position(self, symbol: str, local: Decimal, remote: Decimal, entry: Decimal) -> None:
        core = self.core
        previous = core.ledger.position(symbol)
        corrected = Position(remote, entry if remote != 0 else Decimal(0), previous.realized_pnl)
        now = core.clock()
        changed = core.stamp(
            PositionChanged,
            venue=core.venue,
            symbol=symbol,
            quantity=corrected.quantity,
            average_entry_price=corrected.average_entry_price,
            realized_pnl=corrected.realized_pnl,
        )
        seq = await core.publish(subjects.evt_position(core.venue, symbol), changed, f"reconcile:{symbol}:{now}")
        core.ledger.apply(changed, seq)  # memory follows the venue through the event, as a replay does
        await core.projections.upsert_position(core.venue, symbol, corrected, now, seq)
        await core.alert(
            core.scoped(f"reconcile-position:{symbol}"),
            AlertSeverity.P1,
            "local position differs from the venue; corrected to the venue",
            symbol=symbol,
            local=str(local),
            venue=str(remote),
        )
