"""Every order against the venue's own trading rules before it leaves (`libs.instruments`), from
KV `rules.<venue>.<symbol>` (the venue's position process publishes them from `exchangeInfo`).

A strategy order is put on the grid (quantity down to the step, the price passively to the tick)
and denied only when the rounded order still breaks a rule; any other order is checked as it is
and denied naming the rule. `svc.risk.validate_order` answers the same question for the gateway,
which refuses an operator order the venue would refuse (422) before it is accepted.

While a venue's rules are not known yet (its position process has not fetched them), orders are
not held back for them: the venue remains the judge, as before rules were checked here.
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

from .checks import Decision, reference_price
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
        return order, None
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
        return msgspec.json.encode(OrderRulesReply(checked=False, reason="the venue's rules are not known yet"))
    mark = risk.state.mark_prices.get(request.symbol)
    bid = ask = None
    if request.order_type == OrderType.MARKET and mark is None:
        bid, ask = await touch(risk, request.symbol)
    reference = reference_price(request, risk.state.mark_prices.get(request.symbol), bid, ask)  # type: ignore[arg-type]
    violation = validate(request, rules, _mark(risk, request, reference))
    if violation is None:
        return msgspec.json.encode(OrderRulesReply())
    return msgspec.json.encode(OrderRulesReply(rule=violation.rule, reason=violation.reason))
