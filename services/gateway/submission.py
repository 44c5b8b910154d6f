"""Submitting an operator order: publish `SubmitOrder`, then wait briefly for a decisive outcome.

The route has already claimed the Idempotency-Key; this module checks the position service
(FM-C9), recognises a retry after a gateway crash from the `orders` projection (FM-C8), listens
for the order's events while it publishes, and answers 201 (decided) or 202 (not yet).
"""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal
from typing import Any

import msgspec
from nats.aio.msg import Msg

from libs.ids import client_order_id_for
from libs.telemetry import tracer
from proto import subjects
from proto.codec import decode
from proto.enums import ComponentState, OrderSource, OrderStatus
from proto.messages import SubmitOrder
from proto.replies import OrderRulesReply, OrderRulesRequest
from services.gateway import queries
from services.gateway.api_models import OrderRequest, OrderResponse
from services.gateway.auth import Principal
from services.gateway.context import BUS_ERRORS, Gateway
from services.gateway.domain import Outcome, is_settled, jsonable, outcome_of
from services.gateway.errors import ApiError, unavailable


async def submit(gateway: Gateway, body: OrderRequest, key: str, who: Principal) -> tuple[int, dict[str, Any]]:
    """Publish `SubmitOrder` and wait briefly for a decisive outcome (FM-C9 checked first).

    Only the main venue's position process counts for FM-C9: an operator order is for the main
    venue (`BULWARK_VENUE`), and while only the backup venue's process (`position-<venue>`) is
    down, orders are accepted and wait on the durable log for whichever process trades them.

    Returns:
        (HTTP status, `OrderResponse` as JSON): 201 once an outcome is known, else 202.

    Raises:
        ApiError: 503 when the position service or the bus is down.
    """
    ctx = gateway.ctx
    if gateway.component_state(subjects.POSITION) == ComponentState.DOWN:
        raise unavailable(subjects.POSITION, "the position service is down; no orders until it is back (FM-C9)")
    gateway.require_bus()
    client_order_id = client_order_id_for(key)
    known = await _projected_order(gateway, client_order_id)
    if known is not None:
        # A retry after a gateway crash (FM-C8): the order is on the log and already processed.
        return 201, _order_response(body, client_order_id, known[0], known[1], known[2])
    await _refuse_what_the_venue_would(gateway, body)
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()

    async def on_event(msg: Msg) -> None:
        try:
            message = decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        outcome = outcome_of(message, client_order_id)
        if outcome is not None:
            outcomes.put_nowait(outcome)

    subscriptions = []
    try:
        for subject in (subjects.evt_order_all_for_symbol(body.symbol), subjects.evt_fill_all_for_symbol(body.symbol)):
            subscriptions.append(await ctx.bus.subscribe_core(subject, on_event))
        command = SubmitOrder(
            client_order_id=client_order_id,
            idempotency_key=key,
            source=OrderSource.OPERATOR,
            symbol=body.symbol,
            side=body.side,
            order_type=body.type,
            quantity=body.quantity,
            venue=ctx.settings.venue,
            price=body.price,
            stop_price=body.stop_price,
            reduce_only=body.reduce_only,
            correlation_id=key,
        )
        # An operator order's trace starts here; risk, position and the venue's answers join it.
        attributes = {"bulwark.client_order_id": client_order_id, "bulwark.symbol": body.symbol}
        with tracer(subjects.GATEWAY).start_as_current_span("gateway.submit", attributes=attributes):
            await gateway.publish(subjects.CMD_ORDER_SUBMIT, command, msg_id=client_order_id)
        ctx.log.info("order_submitted", client_order_id=client_order_id, symbol=body.symbol, operator=who.name)
        outcome: Outcome | None = None
        deadline = asyncio.get_running_loop().time() + gateway.config.outcome_timeout_s
        while outcome is None or not is_settled(outcome):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                outcome = await asyncio.wait_for(outcomes.get(), remaining)
            except TimeoutError:
                break
    except BUS_ERRORS as exc:
        raise unavailable("nats", f"bus failure: {type(exc).__name__}: {exc}"[:300]) from exc
    finally:
        for subscription in subscriptions:
            with contextlib.suppress(*BUS_ERRORS):
                await subscription.unsubscribe()

    status = outcome.status if outcome is not None else OrderStatus.PENDING_SUBMISSION
    filled = outcome.filled_quantity if outcome is not None and outcome.filled_quantity is not None else Decimal(0)
    reason = outcome.reason if outcome is not None else None
    if outcome is None or not is_settled(outcome):
        projected = await _projected_order(gateway, client_order_id)
        if projected is not None:
            status, filled, reason = projected[0], projected[1], projected[2] or reason
            outcome = outcome or Outcome(status=status)
    response = _order_response(body, client_order_id, status, filled, reason)
    return (201 if outcome is not None else 202), response


async def _refuse_what_the_venue_would(gateway: Gateway, body: OrderRequest) -> None:
    """422 naming the venue rule the order breaks (risk judges it by the venue's `exchangeInfo`,
    `svc.risk.validate_order`), before it is accepted. Risk not answering is no refusal: it checks
    the order again on its way and denies it with the same rule.

    Raises:
        ApiError: 422 `venue_rule_violation`, details `rule` (e.g. `MIN_NOTIONAL`) and `reason`.
    """
    if gateway.component_state(subjects.RISK) == ComponentState.DOWN:
        return
    request = OrderRulesRequest(
        symbol=body.symbol,
        side=body.side,
        order_type=body.type,
        quantity=body.quantity,
        price=body.price,
        stop_price=body.stop_price,
        reduce_only=body.reduce_only,
        venue=gateway.ctx.settings.venue,
    )
    try:
        reply = await gateway.request(subjects.SVC_RISK_VALIDATE_ORDER, request, OrderRulesReply, 1.0, subjects.RISK)
    except ApiError as exc:
        gateway.ctx.log.warning("venue_rules_unchecked", symbol=body.symbol, error=exc.message)
        return
    if isinstance(reply, OrderRulesReply) and reply.rule is not None:
        raise ApiError(
            422,
            "venue_rule_violation",
            f"the venue would refuse this order: {reply.rule}: {reply.reason}",
            {"rule": reply.rule, "reason": reply.reason},
        )


async def _projected_order(gateway: Gateway, client_order_id: str) -> tuple[OrderStatus, Decimal, str | None] | None:
    """(status, filled, reason) from the `orders` projection once it is past submission, else None.

    The projection is optional here: Postgres being down just means "not known yet".
    """
    try:
        row = await queries.load_order(gateway.ctx.pool, client_order_id)
    except ApiError:
        return None
    if row is None or row["status"] in (OrderStatus.PENDING_SUBMISSION, OrderStatus.SUBMITTED):
        return None
    try:
        status = OrderStatus(row["status"])
    except ValueError:
        gateway.ctx.log.warning("order_status_unknown_value", client_order_id=client_order_id, status=row["status"])
        return None
    return status, row["filled_quantity"], row["reason"]


def _order_response(
    body: OrderRequest, client_order_id: str, status: OrderStatus, filled: Decimal, reason: str | None
) -> dict[str, Any]:
    response = OrderResponse(
        order_id=client_order_id,
        client_order_id=client_order_id,
        status=status,
        symbol=body.symbol,
        side=body.side,
        type=body.type,
        quantity=jsonable(body.quantity),
        filled_quantity=jsonable(Decimal(filled)),
        price=jsonable(body.price) if body.price is not None else None,
        reason=reason,
    )
    return response.model_dump(mode="json")
