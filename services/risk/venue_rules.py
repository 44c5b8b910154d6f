"""Every order against the venue's own trading rules before it leaves (`libs.instruments`), from
KV `rules.<venue>.<symbol>` (the venue's position process publishes them from `exchangeInfo`).

A strategy order is put on the grid (quantity down to the step, the price passively to the tick)
and denied only when the rounded order still breaks a rule; any other order is checked as it is
and denied naming the rule. `svc.risk.validate_order` answers the same question for the gateway,
which refuses an operator order the venue would refuse (422) before it is accepted.

While a venue's rules are not known yet (its position process has not fetched them), what
happens depends on whether they are expected (`RiskCore.rules_required`, the setting
`BULWARK_VENUE_RULES_REQUIRED`, on for every venue profile of `bulwark up`): then an entry is denied
with "venue rules not loaded" (the check does not fail open in the seconds after a start), while a
reduce-only order, or one that only shrinks the position, still goes; else the venue remains the
judge, as before rules were checked here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal

import msgspec
from nats.errors import Error as NatsError

from libs.instruments import Violation, rounded_or_violation, validate
from proto import subjects
from proto.enums import OrderSource, OrderType
from proto.kv import SymbolRulesValue, decode_value
from proto.messages import SubmitOrder
from proto.replies import OrderRulesReply, OrderRulesRequest, error_reply

from .checks import Decision, reduces_exposure, reference_price
from .core import RiskCore


async def rules_for(risk: RiskCore, venue: str, symbol: str) -> SymbolRulesValue | None:
    """The venue's rules of `symbol` from KV; None when never published or unreadable (logged)."""
    key = subjects.key_symbol_rules(venue, symbol)
    try:
        entry = await risk.bus.kv_get(key)
    except (NatsError, TimeoutError, OSError) as exc:
        risk.log.warning("venue_rules_unreadable", key=key, error=f"{type(exc).__name__}: {exc}"[:300])
        return None
    if entry is None:
        return None
    value = decode_value(SymbolRulesValue, entry[0])
    if value is None:
        risk.log.warning("venue_rules_undecodable", key=key)
    return value


def _mark(risk: RiskCore, order: SubmitOrder | OrderRulesRequest, reference: Decimal | None) -> Decimal | None:
    """The mark the band and a MARKET order's notional are checked at: the last mark, else (MARKET
    orders only) the reference price the other checks use."""
    mark = risk.state.mark_prices.get(order.symbol)
    if mark is None and order.order_type == OrderType.MARKET:
        return reference
    return mark


RULES_NOT_LOADED = "venue rules not loaded"


def unknown_rules(risk: RiskCore, order: SubmitOrder) -> Decision | None:
    """The decision on an order whose venue rules are not in KV: None (let it go) unless rules are
    expected and it is an entry."""
    if not risk.rules_required:
        return None
    if order.reduce_only or reduces_exposure(order, risk.state.position(order.venue, order.symbol)):
        return None
    risk.log.warning(
        "venue_rules_not_loaded", client_order_id=order.client_order_id, venue=order.venue, symbol=order.symbol
    )
    return Decision(
        False,
        f"{RULES_NOT_LOADED}: the rules of {order.symbol} on {order.venue} are not published yet "
        "(the venue's position process fetches them at start); entries wait for them, reduce-only orders go",
    )


def denial(violation: Violation) -> Decision:
    """The denial of an order that breaks a venue rule, naming it."""
    return Decision(False, f"venue rule {violation.rule}: {violation.reason}")


async def vet(risk: RiskCore, order: SubmitOrder, reference: Decimal | None) -> tuple[SubmitOrder, Decision | None]:
    """(the order as it may leave, its denial or None) under its venue's rules.

    A strategy order comes back rounded to the grid when it was off it; every other order comes
    back as it is.
    """
    rules = await rules_for(risk, order.venue, order.symbol)
    if rules is None:
        return order, unknown_rules(risk, order)
    mark = _mark(risk, order, reference)
    open_orders = risk.pending.count(order.symbol, order.venue, risk.venue)
    if order.source == OrderSource.STRATEGY:
        rounded, violation = rounded_or_violation(order, rules, mark, open_orders=open_orders)
        if rounded is not order:
            risk.log.info(
                "order_rounded_to_venue_grid",
                client_order_id=order.client_order_id,
                quantity=f"{order.quantity} -> {rounded.quantity}",
                price=f"{order.price} -> {rounded.price}",
            )
        return rounded, denial(violation) if violation is not None else None
    violation = validate(order, rules, mark, open_orders=open_orders)
    return order, denial(violation) if violation is not None else None


Touch = Callable[[RiskCore, str], Awaitable[tuple[Decimal | None, Decimal | None]]]
"""(best bid, best ask) of a symbol when no mark is known (`decisions.touch_prices`)."""


async def serve_validate_order(risk: RiskCore, payload: bytes, touch: Touch) -> bytes:
    """`svc.risk.validate_order`: the rule an order would break at its venue (the gateway asks
    before accepting an operator order), judged at the same prices an order decision uses."""
    try:
        request = msgspec.json.decode(payload, type=OrderRulesRequest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return error_reply("bad_request", f"not an OrderRulesRequest: {exc}"[:300])
    rules = await rules_for(risk, request.venue or risk.venue, request.symbol)
    if rules is None:
        # Unchecked here either way: risk's decision denies an entry while expected rules are missing.
        reason = RULES_NOT_LOADED if risk.rules_required else "the venue's rules are not known yet"
        return msgspec.json.encode(OrderRulesReply(checked=False, reason=reason))
    mark = risk.state.mark_prices.get(request.symbol)
    bid = ask = None
    if request.order_type == OrderType.MARKET and mark is None:
        bid, ask = await touch(risk, request.symbol)
    reference = reference_price(request, risk.state.mark_prices.get(request.symbol), bid, ask)  # type: ignore[arg-type]
    violation = validate(request, rules, _mark(risk, request, reference))
    if violation is None:
        return msgspec.json.encode(OrderRulesReply())
    return msgspec.json.encode(OrderRulesReply(rule=violation.rule, reason=violation.reason))
