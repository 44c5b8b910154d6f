"""Venue sync: following the venue's view of our orders. The user-data stream (reconnects on the
FM-N1 schedule over the configured endpoints, listen-key keepalive; an expired or refused listen key
is replaced and the stream reconnected, whose reconciliation queries every live order, so no fill
is missed), orders placed by anyone else adopted from it (`external`), the poll that sends queued
orders, resolves UNKNOWN ones and follows live ones (a safety poll while the stream is up), the
venue breaker's transitions (FM-N5) and the dead-man's switch countdown (FM-N8).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from decimal import Decimal

from libs.binance.endpoints import EndpointRotation
from libs.binance.errors import VenueError
from libs.breaker import BreakerState, BreakerTransition
from libs.metrics import metrics_of
from libs.orders_model import OrderRecord, is_terminal
from libs.reconnect import reconnect_delay_s
from libs.service_snapshots import PG_ERRORS
from proto import subjects
from proto.enums import ConnectionState, OrderStatus
from proto.kv import DependencyBreakerValue, encode_value

from .adapters import VENUE_FAILURES
from .algo_orders import AlgoUpdates
from .core import Core
from .domain import is_protective
from .execution import Execution, trade_from_user_event
from .external import ExternalOrders
from .integrity import Integrity
from .lookup import OrderLookup
from .protection import ProtectiveStops
from .reconciliation import venue_open_orders
from .submission import Submission

VENUE_LIVE = frozenset({OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED, OrderStatus.PENDING_CANCEL})
MAYBE_AT_VENUE = VENUE_LIVE | {OrderStatus.SUBMITTED, OrderStatus.UNKNOWN}
LISTEN_KEY_KEEPALIVE_NS = 30 * 60 * 1_000_000_000
"""Binance: a listen key lives 60 min after its last keep-alive; every 30 min leaves a whole period
(and many failed rounds) of margin."""
LISTEN_KEY_MISSING = -1125
"""Binance: "This listenKey does not exist." (expired, or closed): a keep-alive cannot revive it."""
LISTEN_KEY_EXPIRED_EVENT = "listenKeyExpired"


class ListenKeyExpired(Exception):
    """The stream's listen key is no longer valid: a new key and a new connection are needed."""


UserStream = Callable[[str, str, Callable[[], Awaitable[None]]], AsyncIterator[dict]]
"""`stream(ws_base, listen_key, on_open)`: the user-data stream's events (raises when it ends)."""


def countdown_symbols(orders: Iterable[OrderRecord]) -> set[str]:
    """Symbols whose venue auto-cancel countdown (FM-N8) should be armed.

    countdownCancelAll cancels *every* open order of a symbol, protective stops included. Stops
    must outlive this service (FM-C2), so a symbol with a live protective order is never armed
    (and is disarmed): its other open orders then survive a dead service (they are reconciled at
    restart) rather than leaving the position without its stop. Symbols with only non-protective
    live orders are armed.
    """
    entries: set[str] = set()
    protected: set[str] = set()
    for order in orders:
        if order.status in MAYBE_AT_VENUE:
            (protected if is_protective(order) else entries).add(order.symbol)
    return entries - protected


class VenueSync:
    """The user-data stream, the poll, the breaker's transitions and the countdown.

    Args:
        core: the shared state and effects.
        execution: applies the venue's answers.
        submission: sends queued orders, resolves UNKNOWN ones.
        integrity: checks the invariants after every change.
        protection: keeps the stops in line after every change.
        lookup: answers about orders beyond memory (is an unknown order an old one of ours?).
        safety_poll_s: period of the live-order poll while the user-data stream delivers updates.
    """

    def __init__(
        self,
        core: Core,
        execution: Execution,
        submission: Submission,
        integrity: Integrity,
        protection: ProtectiveStops,
        lookup: OrderLookup,
        *,
        safety_poll_s: float,
    ) -> None:
        self.core = core
        self.execution = execution
        self.submission = submission
        self.integrity = integrity
        self.protection = protection
        self.lookup = lookup
        self.external = ExternalOrders(core, execution)
        self.safety_poll_ns = int(safety_poll_s * 1e9)
        self.last_follow_ns = 0
        self.last_keepalive_ns = 0
        self.algo = AlgoUpdates(lambda: core.ledger.orders, execution.apply_venue_order, core.log)
        self.renew_key = asyncio.Event()
        """Set when the venue refused the listen key: the stream is reconnected with a new one."""
        self.keys_renewed = 0

    # ------------------------------------------------------------------ venue link (FM-N5, FM-N6)

    async def on_breaker(self, transition: BreakerTransition) -> None:
        """Publish a venue breaker transition; OPEN takes the order link down."""
        core = self.core
        core.log.warning("breaker_state_changed", **transition.fields())
        event = transition.event()
        await core.bus.publish(subjects.evt_breaker(transition.name), event)
        value = DependencyBreakerValue(state=transition.current, reason=transition.reason, ts_ns=event.ts_event_ns)
        await core.bus.kv_put(subjects.key_breaker(transition.name), encode_value(value))
        if transition.current == BreakerState.OPEN:
            await core.set_link(ConnectionState.DISCONNECTED, f"venue breaker open: {transition.reason}")

    # ------------------------------------------------------------------ user-data stream

    async def on_user_event(self, event: dict) -> None:
        """One user-data stream event: fills and status of our orders, de-duplicated by trade id."""
        if event.get("e") == "ALGO_UPDATE" and isinstance(event.get("o"), dict):
            await self.on_algo_update(event)
            return
        if event.get("e") != "ORDER_TRADE_UPDATE" or not isinstance(event.get("o"), dict):
            return
        core = self.core
        update: dict = event["o"]
        coid = str(update.get("c", ""))
        async with core.lock:
            order = core.ledger.orders.get(coid) or self.algo.owner_of(update)
            if order is None:
                # A venue order we never sent (placed by anyone else on the account): adopted now.
                await self._adopt_external(update, event)
                return
            try:
                # Taken before the trade is booked: the fold moves a filled order to FILLED, and the
                # venue's status below still has to reach the projection.
                finished = is_terminal(order.status)
                if update.get("x") == "TRADE" and int(update.get("t") or 0):
                    await self.execution.apply_trade(order, trade_from_user_event(update), via="user-stream")
                stale = Decimal(str(update.get("z", "0"))) < order.filled_quantity
                if not finished and not stale:
                    answer = {"orderId": update.get("i"), "status": update.get("X"), "executedQty": update.get("z")}
                    await self.execution.apply_venue_order(order, answer)
            except (KeyError, ValueError, ArithmeticError) as exc:
                core.log.warning("user_event_invalid", client_order_id=coid, error=repr(exc), raw=str(event)[:500])
                return
            await self.integrity.check_invariants()
            await self.protection.maintain()

    async def on_algo_update(self, event: dict) -> None:
        """An `ALGO_UPDATE` of a conditional order (protective stops): see `algo_orders.AlgoUpdates`."""
        core = self.core
        async with core.lock:
            try:
                known = await self.algo.on_event(event)
            except (KeyError, ValueError, ArithmeticError) as exc:
                core.log.warning("user_event_invalid", error=repr(exc), raw=str(event)[:500])
                return
            if not known:
                core.reconciled = False
                return
            core.triggers.observe_update(event, core.clock())
            await self.integrity.check_invariants()
            await self.protection.maintain()

    async def _adopt_external(self, update: dict, event: dict) -> None:
        """An order this service does not hold: EXTERNAL when no projection knows it, else (a finished
        order that left memory) a late report that changes nothing; either way checked as usual."""
        core = self.core
        coid = str(update.get("c", ""))
        try:
            known = await self.lookup.known_elsewhere(coid)
        except PG_ERRORS as exc:
            # Cannot tell an old order of ours from a new one: reconciliation decides (SPEC §6).
            core.log.warning("user_stream_unknown_order", client_order_id=coid, error=repr(exc)[:200])
            core.reconciled = False
            return
        if known is not None:
            core.log.info("user_stream_order_not_in_memory", client_order_id=coid, status=known.status.value)
            return
        if str(update.get("s")) not in core.symbols:
            core.log.warning(
                "user_stream_unknown_order",
                client_order_id=coid,
                symbol=update.get("s"),
                action_taken="not traded here",
            )
            return
        try:
            await self.external.adopt(update)
        except (KeyError, ValueError, ArithmeticError) as exc:
            core.log.warning("user_event_invalid", client_order_id=coid, error=repr(exc), raw=str(event)[:500])
            core.reconciled = False  # reconciliation adopts it from the venue's own answer
            return
        await self.integrity.check_invariants()
        await self.protection.maintain()

    async def user_stream_forever(self, ws_bases: Sequence[str], stream: UserStream) -> None:
        """Consume the user-data stream forever; every (re)connect asks for a reconciliation.

        Args:
            ws_bases: venue WebSocket base URLs, the main one first, then configured alternates
                (FM-N4/N6: a connection that fails moves to the next one).
            stream: `stream(ws_base, listen_key, on_open)` async iterator of events (raises when it ends).
        """
        core = self.core
        attempt = 0
        endpoints = EndpointRotation(ws_bases)
        opened = False
        connections = 0

        async def on_open() -> None:
            nonlocal attempt, opened, connections
            connections += 1
            metrics = metrics_of(core.bus)
            if connections > 1 and metrics is not None:
                metrics.reconnected("user-stream")
            attempt = 0
            opened = True
            endpoints.on_success()
            core.user_stream_up = True
            # Updates may have been missed while it was down: reconcile before any new order.
            core.reconciled = False
            core.log.info("user_stream_connected", action_taken="reconcile")
            core.wake.set()

        while True:
            delay = reconnect_delay_s(attempt)
            await asyncio.sleep(delay)
            attempt += 1
            opened = False
            ws_base = endpoints.current
            try:
                listen_key = await core.client.new_listen_key()
                self.last_keepalive_ns = core.clock()
                self.renew_key.clear()
                await self._consume(stream(ws_base, listen_key, on_open))
            except asyncio.CancelledError:
                raise
            except ListenKeyExpired as exc:
                # The connection may stay open but delivers nothing more: a new key, a new connection,
                # and its reconciliation queries every live order (fills meanwhile are fetched).
                self.keys_renewed += 1
                core.log.warning(
                    "listen_key_expired", reason=str(exc), action_taken="new listen key, reconnect, reconcile"
                )
            except Exception as exc:  # noqa: BLE001 - the stream must come back whatever ended it
                # A stream that never opened counts against its endpoint (the next one is tried);
                # one that was up and dropped is tried again where it was.
                all_failed = not opened and endpoints.on_failure()
                core.log.warning(
                    "user_stream_lost",
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    endpoint=ws_base,
                    action_taken=f"reconnect to {endpoints.current}",
                    all_endpoints_failed=all_failed,
                )
            core.user_stream_up = False

    async def _consume(self, events: AsyncIterator[dict]) -> None:
        """Apply the stream's events until it ends (raises), a `listenKeyExpired` event arrives or
        the keep-alive finds the key refused (`renew_key`): both raise `ListenKeyExpired`.

        Only the wait for the next event is interrupted, never the handling of one.
        """
        source = aiter(events)
        renew = asyncio.ensure_future(self.renew_key.wait())
        try:
            while True:
                following = asyncio.ensure_future(anext(source))
                await asyncio.wait({following, renew}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    await asyncio.wait({following})  # an outer cancel still reaches this task
                    if not following.cancelled():
                        following.exception()  # came at the same time: the reconnect reconciles it
                    raise ListenKeyExpired(f"the venue refused the listen key (code {LISTEN_KEY_MISSING})")
                try:
                    event = following.result()
                except StopAsyncIteration:
                    return
                if event.get("e") == LISTEN_KEY_EXPIRED_EVENT:
                    raise ListenKeyExpired(f"{LISTEN_KEY_EXPIRED_EVENT} event")
                await self.on_user_event(event)
        finally:
            renew.cancel()
            closing = getattr(source, "aclose", None)
            if closing is not None:
                with contextlib.suppress(Exception):
                    await closing()

    async def keep_listen_key(self, now_ns: int) -> None:
        """Extend the listen key of a stream that is up, every `LISTEN_KEY_KEEPALIVE_NS`; a key the
        venue no longer knows (-1125) is replaced (the stream reconnects with a new one)."""
        if self.core.user_stream_up and now_ns - self.last_keepalive_ns >= LISTEN_KEY_KEEPALIVE_NS:
            try:
                await self.core.client.keepalive_listen_key()
            except VenueError as exc:
                if exc.code != LISTEN_KEY_MISSING:
                    raise
                self.core.log.warning("listen_key_refused", error=str(exc)[:200], action_taken="new listen key")
                self.renew_key.set()
            self.last_keepalive_ns = now_ns

    # ------------------------------------------------------------------ polling

    def follow_due(self, now_ns: int) -> bool:
        """Should this round follow live orders? Always without the stream, else every safety-poll period."""
        return not self.core.user_stream_up or now_ns - self.last_follow_ns >= self.safety_poll_ns

    async def poll_once(self, *, follow_live: bool = True) -> None:
        """Send queued orders, resolve UNKNOWN ones, and (when `follow_live`) follow live ones."""
        core = self.core
        await self.submission.send_queued()
        async with core.lock:
            live = [order for order in core.ledger.orders.values() if not is_terminal(order.status)]
            for order in live:
                if order.status == OrderStatus.UNKNOWN and core.reconciled:
                    await self.submission.resolve_unknown(order, backoff_s=(0.0,))
            if not follow_live:
                return
            self.last_follow_ns = core.clock()
            at_venue = [order for order in live if order.status in VENUE_LIVE]
            # Asked even without live orders (one symbol then): the cheapest signed check that the
            # venue is there (FM-N6).
            symbols = {order.symbol for order in at_venue} or set(core.symbols[:1])
            open_orders = {str(o.get("clientOrderId")): o for o in await venue_open_orders(core.client, symbols)}
            for order in at_venue:
                answer = open_orders.get(order.client_order_id)
                if answer is None:
                    await self.submission.query_and_apply(order)
                elif Decimal(str(answer.get("executedQty", "0"))) != order.filled_quantity or (
                    str(answer.get("status")) != order.status.value and order.status != OrderStatus.PENDING_CANCEL
                ):
                    await self.execution.apply_venue_order(order, answer)
            await self.integrity.check_invariants()
            await self.protection.maintain(all_symbols=True)

    async def refresh_countdowns(self) -> None:
        """FM-N8: keep the venue's countdownCancelAll armed for every symbol with live orders."""
        core = self.core
        if not core.may_submit():
            return
        live_symbols = countdown_symbols(core.ledger.orders.values())
        now = core.clock()
        for symbol, countdown_ms in core.countdown.due(live_symbols, now).items():
            await core.guard()
            try:
                await core.client.countdown_cancel_all(symbol, countdown_ms)
            except VENUE_FAILURES as exc:
                core.log.warning("countdown_failed", symbol=symbol, error=f"{type(exc).__name__}: {exc}")
                continue
            core.countdown.sent(symbol, countdown_ms, now)
            core.log.info("countdown_armed" if countdown_ms else "countdown_disarmed", symbol=symbol, ms=countdown_ms)
