"""Order decisions: every `SubmitOrder` and strategy signal gets one `OrderApproved` or
`OrderDenied`, from the pre-trade checks (`checks.check_order`) fed with the trading state, the
breakers, the followed dependencies, positions and pending exposure, on the venue `routing` picks.
The decision is published, then applied to the state (`state.apply`) exactly as a replay will.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from libs.ids import client_order_id_for
from proto import subjects
from proto.enums import OrderSource, TradingState
from proto.messages import OrderApproved, OrderDenied, SignalGenerated, SubmitOrder

from . import adapters, dependencies, venue_rules
from .breaker_rules import StrategyMalfunctionBreaker
from .checks import UNATTRIBUTED, Decision, check_order, reduces_exposure, reference_price
from .core import RiskCore
from .routing import Route, live_view, paper_route, route_order
from .state import apply


def signal_to_order(signal: SignalGenerated, venue: str) -> SubmitOrder:
    """The order a strategy signal asks for; its idempotency key is the signal's message id."""
    return SubmitOrder(
        client_order_id=client_order_id_for(signal.message_id),
        idempotency_key=signal.message_id,
        source=OrderSource.STRATEGY,
        symbol=signal.symbol,
        side=signal.side,
        order_type=signal.order_type,
        quantity=signal.quantity,
        venue=venue,
        price=signal.price,
        reduce_only=signal.reduce_only,
        strategy=signal.strategy,
        stop_loss=signal.stop_loss,
        take_profit=signal.take_profit,
        correlation_id=signal.correlation_id or signal.message_id,
        causation_id=signal.message_id,
    )


async def touch_prices(risk: RiskCore, symbol: str) -> tuple[Decimal | None, Decimal | None]:
    """Best bid/ask from the state-builder, used when no mark price is known yet."""
    try:
        raw = await risk.bus.request(subjects.SVC_STATE_BUILDER_SYMBOLS, timeout_s=1.0)
        row = adapters.parse_symbols_reply(raw).get(symbol)
    except Exception as exc:  # noqa: BLE001 - timeout, no responders, bad reply: price stays unknown
        risk.log.warning("state_builder_unavailable", symbol=symbol, error=f"{type(exc).__name__}: {exc}")
        return None, None
    dependencies.heard_state_builder(risk)
    if row is None:
        return None, None
    if risk.hot_state.get(symbol) is None:
        risk.hot_state[symbol] = row.hot_state
    if row.mark_price is not None:
        risk.state.mark_prices.setdefault(symbol, row.mark_price)
    return row.best_bid, row.best_ask


def _breaker_gates(risk: RiskCore, order: SubmitOrder) -> tuple[TradingState, str | None, str | None]:
    """(effective trading state, CB-2 pause reason, CB-3 reason) for one order."""
    board = risk.breakers
    if board is None:
        return risk.trading.state, None, None
    state = TradingState.HALTED if board.rapid_loss.is_open else risk.trading.state
    paused = board.abnormal_market.record.reason if board.abnormal_market.is_open else None
    disabled = None
    if order.strategy is not None:
        strategy: StrategyMalfunctionBreaker | None = board.strategies.get(order.strategy)
        if strategy is not None and strategy.is_open:
            disabled = strategy.record.reason
    return state, paused, disabled


def _holders(risk: RiskCore, symbol: str, paper: bool = False) -> frozenset[str]:
    """Who holds `symbol`: its open positions' owners (on any live venue) and the owners of entries in
    flight; with `paper`, the same on the paper venue (live and paper never hold a symbol for each other)."""
    holders = risk.pending.entry_holders(symbol, risk.paper.venue, paper)
    for venue in (risk.paper.venue,) if paper else risk.venues:
        book = risk.state.book(venue, symbol)
        if risk.state.positions.get(book, Decimal(0)) != 0:
            holders.add(risk.trades.owner(book) or UNATTRIBUTED)
    return frozenset(holders)


def _closes_own_live_position(risk: RiskCore, order: SubmitOrder) -> bool:
    """The order of a strategy only reduces a live position that strategy holds."""
    for venue in risk.venues:
        if venue == risk.paper.venue:
            continue
        book = risk.state.book(venue, order.symbol)
        held = risk.state.position(venue, order.symbol)
        if reduces_exposure(order, held) and risk.trades.owner(book) == order.strategy:
            return True
    return False


def route(risk: RiskCore, order: SubmitOrder) -> tuple[SubmitOrder, str] | None:
    """The order as it goes out, on the venue `route_order` picks, and why when it is not the
    one asked for; None when it names a venue this desk does not trade on. A paper strategy's order
    goes to the paper venue when there is one (`paper_route`); no other order ever does."""
    paper_venue = risk.paper.routed_venue(order)
    if paper_venue is not None and order.venue != paper_venue and _closes_own_live_position(risk, order):
        # Switched to paper while holding a live position: its exit closes that position where it
        # is (on paper it would be refused and leave the live position without its exit).
        paper_venue = None
    if paper_venue is not None:
        route: Route | None = paper_route(order, paper_venue)
    else:
        positions, in_flight = live_view(
            {venue: risk.state.position(venue, order.symbol) for venue in risk.venues},
            risk.pending.venues(order.symbol, risk.venue),
            risk.paper.venue,
        )
        route = route_order(order, dependencies.links(risk), positions, in_flight)
    if route is None:
        return None
    if route.venue == order.venue:
        return order, route.reason
    return msgspec.structs.replace(order, venue=route.venue), route.reason


async def decide(
    risk: RiskCore, order: SubmitOrder, confidence: Decimal | None = None
) -> OrderApproved | OrderDenied | None:
    """Check an order and publish its decision (None when it was already decided)."""
    async with risk.decide_lock:
        started = risk.monotonic()
        if order.client_order_id in risk.state.decided:
            risk.log.info("order_already_decided", client_order_id=order.client_order_id)
            return None
        if order.strategy is not None:  # live and paper side by side: the persisted mode decides
            await risk.paper.confirm(risk.bus, order.strategy, risk.log)
        bid = ask = None
        if order.price is None and order.stop_price is None and order.symbol not in risk.state.mark_prices:
            bid, ask = await touch_prices(risk, order.symbol)
        price = reference_price(order, risk.state.mark_prices.get(order.symbol), bid, ask)
        routed = route(risk, order)
        now = risk.clock()
        trading_state = risk.trading.state
        position = Decimal(0)
        if routed is None:
            # Approved, it would wait on a subject no position process reads.
            decision = Decision(
                approved=False, reason=f"venue {order.venue!r} is not configured (venues: {', '.join(risk.venues)})"
            )
            routed_because = ""
        else:
            order, routed_because = routed
            # Venue rules (a strategy order rounded to the grid) before the limits see its size.
            order, broken = await venue_rules.vet(risk, order, price)
            position = risk.state.position(order.venue, order.symbol)
            if not reduces_exposure(order, position) and (
                risk.hot_state.get(order.symbol) is None or not risk.state_builder.alive(risk.monotonic())
            ):
                await dependencies.probe_state_builder(risk)  # an entry needs a live state-builder's word (FM-C1)
            paper = bool(risk.paper.venue) and order.venue == risk.paper.venue
            pending_buy, pending_sell = risk.pending.totals(order.symbol, risk.paper.venue, paper)
            trading_state, paused, disabled = _breaker_gates(risk, order)
            if risk.paper.on_paper(order):
                disabled = None  # paper is how a strategy CB-3 disabled comes back (`paper`)
            entries_halted = dependencies.entries_halted(risk) or dependencies.market_link_gate(risk, order.symbol)
            decision = check_order(
                order,
                trading_state=trading_state,
                hot_state=risk.hot_state.get(order.symbol),
                position=position,
                reference_price=price,
                limits=risk.limits,
                degradation=risk.degradation,
                pending_buy=pending_buy,
                pending_sell=pending_sell,
                entries_paused=paused,
                strategy_disabled=disabled,
                confidence=confidence,
                recent_strategy_orders=risk.state.rates.count(order.strategy, now) if order.strategy else 0,
                entries_halted=entries_halted,
                holders=_holders(risk, order.symbol, paper),
            )
            if decision.approved and broken is not None:
                decision = broken
            paper_denial = risk.paper.denial(order)
            if decision.approved and paper_denial is not None:
                decision = Decision(approved=False, reason=paper_denial)
        venue = order.venue if routed is not None else risk.venue  # a denial is recorded all the same
        coid = order.client_order_id
        correlation = order.correlation_id or order.idempotency_key
        result: OrderApproved | OrderDenied
        if decision.approved:
            # Stamped with the decision's time: the rate window counts it from then, live and on replay.
            result = risk.stamp(
                OrderApproved, order=order, correlation_id=correlation, causation_id=order.message_id, ts_event_ns=now
            )
            await risk.bus.publish(
                subjects.evt_order("approved", venue, order.symbol), result, msg_id=f"approved:{coid}"
            )
        else:
            result = risk.stamp(
                OrderDenied,
                order=order,
                reason=decision.reason,
                correlation_id=correlation,
                causation_id=order.message_id,
                ts_event_ns=now,
            )
            await risk.bus.publish(subjects.evt_order("denied", venue, order.symbol), result, msg_id=f"denied:{coid}")
        apply(risk.state, result)  # what was published, exactly as a replay will apply it
        risk.latency.add((risk.monotonic() - started) / 1_000_000)
        risk.log.info(
            "order_approved" if decision.approved else "order_denied",
            client_order_id=coid,
            symbol=order.symbol,
            side=order.side.value,
            quantity=str(order.quantity),
            reason=decision.reason,
            venue=venue,
            routed=routed_because or None,
            trading_state=trading_state.value,
            degradation=risk.degradation.value if risk.degradation else "UNKNOWN",
        )
        return result
