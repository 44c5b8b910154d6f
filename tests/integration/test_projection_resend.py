"""The FM-N7 resend of an order, once used, in the Postgres `orders` projection (real Postgres): the
fold's `resend_used` is written, read back by the loads a restart rebuilds memory from, never
cleared by a later write, and shown by the order API."""

from __future__ import annotations

from decimal import Decimal

from libs import projections
from libs.projections import Projections, fold_events
from proto.enums import OrderSource, OrderStatus, OrderType, Side
from proto.messages import OrderApproved, OrderStatusUnknown, OrderSubmitted, SubmitOrder
from services.gateway.queries import load_order, order_view

VENUE = "binance-usdm"


def _approved(coid: str) -> OrderApproved:
    return OrderApproved(
        order=SubmitOrder(
            client_order_id=coid,
            idempotency_key=f"key-{coid}",
            source=OrderSource.OPERATOR,
            symbol="BTCUSDT",
            side=Side.BUY,
            order_type=OrderType.MARKET,
            quantity=Decimal("0.01"),
            venue=VENUE,
        )
    )


def _history() -> list[tuple[object, int]]:
    """`bw-resent`: submit timed out, the venue did not hold it, resent once and timed out again;
    `bw-plain`: timed out once, not resent (yet)."""
    events: list[object] = [_approved("bw-resent"), _approved("bw-plain")]
    for coid in ("bw-resent", "bw-plain"):
        events += [
            OrderSubmitted(client_order_id=coid, symbol="BTCUSDT", venue=VENUE),
            OrderStatusUnknown(client_order_id=coid, symbol="BTCUSDT", reason="timeout"),
        ]
    events += [
        OrderStatusUnknown(client_order_id="bw-resent", symbol="BTCUSDT", reason="not at the venue", resend=True),
        OrderSubmitted(client_order_id="bw-resent", symbol="BTCUSDT", venue=VENUE),
        OrderStatusUnknown(client_order_id="bw-resent", symbol="BTCUSDT", reason="timeout again"),
    ]
    return [(event, seq) for seq, event in enumerate(events, start=1)]  # type: ignore[misc]


async def test_resend_used_when_projected_then_loaded_at_restart_shown_by_the_api_and_never_cleared(
    pg_pool: object,
) -> None:
    store = Projections(pg_pool)  # type: ignore[arg-type]
    folded = fold_events(_history())  # type: ignore[arg-type]
    assert folded.orders["bw-resent"].resend_used and not folded.orders["bw-plain"].resend_used
    assert await projections.write(folded, store) == []

    # What a restart without a snapshot rebuilds memory from, and the lookup of an evicted order.
    loaded = await store.load_recent_orders([OrderStatus.UNKNOWN.value], 0, 10)
    assert {coid: order.resend_used for coid, order in loaded.items()} == {"bw-resent": True, "bw-plain": False}
    found = await store.find_order("bw-resent")
    assert found is not None and found.resend_used and found.status == OrderStatus.UNKNOWN

    # `/v1/orders/{id}` shows it.
    row = await load_order(pg_pool, "bw-resent")  # type: ignore[arg-type]
    assert row is not None and order_view(row)["resend_used"] is True
    plain = await load_order(pg_pool, "bw-plain")  # type: ignore[arg-type]
    assert plain is not None and order_view(plain)["resend_used"] is False

    # A later write of a record that lost the flag (an old process, a partial rebuild) never clears it.
    found.resend_used = False
    await store.upsert_order(found, folded.order_seq["bw-resent"] + 1)
    again = await store.find_order("bw-resent")
    assert again is not None and again.resend_used
