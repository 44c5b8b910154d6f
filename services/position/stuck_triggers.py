"""Protective orders stuck in the venue's trigger (FM-C2): a stop or take-profit the Algo Service
reports triggered — `TRIGGERING` (forwarded to the matching engine) or `TRIGGERED` without the MARKET
order it places (`actualOrderId`) — for longer than `BULWARK_STOP_TRIGGER_TIMEOUT_S`.

The system then believes the position is protected while nothing at the venue will close it: the
level was crossed, the exit the trader planned did not happen. `trigger_watch.TriggerWatch` (pure,
`Core.triggers`) remembers since when each of our conditional orders has been seen in that state, fed
by the `ALGO_UPDATE` events and by every query answer of the order; `StuckTriggers.check` runs every
poll round under the order lock and, for each one past the bound that a fresh query still shows stuck:

- raises a P1 alert `protection-stuck:<symbol>` (runbook `docs/runbooks/protection-stuck.md`);
- closes the position with a reduce-only MARKET order (`protect-close:...`), as the stop would have:
  its level was reached, and a trader who set a stop wants out at that point, not a second stop
  placed below a price that has already passed it (the venue would refuse it as -2021 anyway);
  reduce-only, so it can never open a position the other way;
- gives the stuck order up here: CANCELED locally with the reason (the venue cannot cancel it, -2011,
  and left live it would keep the protection loop cancelling it forever); should the venue release
  it later, its reduce-only MARKET order finds the position closed and is refused.
"""

from __future__ import annotations

from libs.errors import TransientError
from libs.orders_model import OrderRecord, is_terminal
from proto.enums import AlertSeverity, Side

from .adapters import VENUE_FAILURES
from .core import Core
from .domain import is_protective
from .execution import Execution
from .submission import Submission
from .trigger_watch import TRIGGER_STATES, TriggerWatch


class StuckTriggers:
    """Detects and answers protective orders stuck in the venue's trigger.

    Args:
        core: the shared state and effects.
        execution: applies the venue's answers (and gives the stuck order up).
        submission: sends the closing MARKET order (`Submission.protect_close`).
        watch: what the venue said, and since when.
        timeout_s: how long a trigger may take before it counts as stuck.
    """

    def __init__(
        self,
        core: Core,
        execution: Execution,
        submission: Submission,
        watch: TriggerWatch,
        timeout_s: float,
    ) -> None:
        self.core = core
        self.execution = execution
        self.submission = submission
        self.watch = watch
        self.timeout_ns = int(timeout_s * 1e9)
        self.answered = 0

    async def check(self) -> None:
        """Answer every protective order stuck past the bound (under the order lock); venue trouble
        leaves it for the next round."""
        core = self.core
        for coid, stuck_ns in self.watch.overdue(core.clock(), self.timeout_ns):
            order = core.ledger.orders.get(coid)
            if order is None or is_terminal(order.status) or not is_protective(order):
                self.watch.forget(coid)
                continue
            if not core.may_submit():
                return  # nothing may be sent now; the clock keeps running, answered once it may
            try:
                if await self._still_stuck(order):
                    await self._answer(order, stuck_ns)
            except (*VENUE_FAILURES, TransientError) as exc:
                core.log.warning(
                    "stuck_trigger_check_failed", client_order_id=coid, error=f"{type(exc).__name__}: {exc}"
                )

    async def _still_stuck(self, order: OrderRecord) -> bool:
        """Ask the venue once more (a late `ALGO_UPDATE` may be on its way); False applies its answer."""
        answer = await self.core.client.query_order(order.symbol, orig_client_order_id=order.client_order_id)
        if str(answer.get("algoStatus", "")) in TRIGGER_STATES:
            return True
        self.watch.forget(order.client_order_id)
        await self.execution.apply_venue_order(order, answer)
        return False

    async def _answer(self, order: OrderRecord, stuck_ns: int) -> None:
        core = self.core
        coid, symbol = order.client_order_id, order.symbol
        position = core.ledger.position(symbol).quantity
        # The order only ever reduced the position on its side: a SELL stop closes a long.
        closes = position > 0 if order.side == Side.SELL else position < 0
        stuck_s = round(stuck_ns / 1e9, 1)
        action = "close the position at market (reduce-only)" if closes else "nothing left to close"
        core.log.error(
            "protection_stuck_triggering",
            client_order_id=coid,
            symbol=symbol,
            type=order.order_type.value,
            stop_price=str(order.stop_price),
            stuck_s=stuck_s,
            position=str(position),
            action_taken=action,
        )
        await core.alert(
            core.scoped(f"protection-stuck:{symbol}"),
            AlertSeverity.P1,
            "protective order stuck in the venue's trigger: position closed at market",
            coid=coid,
            type=order.order_type.value,
            stop_price=str(order.stop_price),
            stuck_s=stuck_s,
            position=str(position),
            action=action,
        )
        self.answered += 1
        if closes:
            await self.submission.protect_close(order, position)
        self.watch.forget(coid)
        reason = f"stuck in the venue's trigger for {stuck_s} s: given up, position closed at market instead"
        answer = {"status": "CANCELED", "executedQty": str(order.filled_quantity)}
        await self.execution.apply_venue_order(order, answer, reason=reason)
