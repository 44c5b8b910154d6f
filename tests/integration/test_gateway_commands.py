# ruff: noqa: F811  (`gw` is the shared fixture of test_gateway, imported to be used here)
"""Operator commands through the gateway and the real bus: idempotent per request, not per target."""

from __future__ import annotations

import asyncio
from typing import Any

from libs.bus import Delivery
from proto import subjects
from proto.envelope import Message
from proto.messages import CancelOrder
from tests.integration.test_gateway import OP, Harness, count_on, gw, insert_order  # noqa: F401


async def cancel_standin(gw: Harness) -> list[CancelOrder]:
    """A durable consumer on `cmd.order.cancel` (as the position service) recording every cancel it gets."""
    seen: list[CancelOrder] = []

    async def handle(message: Message, delivery: Delivery) -> None:
        assert isinstance(message, CancelOrder)
        seen.append(message)

    await gw.peer.consume(
        stream=subjects.STREAM_ORDERS.name,
        durable="position-cancel-standin",
        filter_subjects=[subjects.CMD_ORDER_CANCEL],
        handler=handle,
    )
    return seen


async def wait_for(seen: list[Any], count: int) -> None:
    for _ in range(50):
        if len(seen) >= count:
            return
        await asyncio.sleep(0.1)


async def test_cancel_when_asked_again_after_a_refused_cancel_then_the_second_acts(gw: Harness, pg_pool: Any) -> None:
    await insert_order(pg_pool, "o1", 1)
    seen = await cancel_standin(gw)

    first = await gw.client.delete("/v1/orders/o1", headers=OP)
    await wait_for(seen, 1)  # the venue refused it (the order stays open): the operator asks again
    second = await gw.client.delete("/v1/orders/o1", headers=OP)
    await wait_for(seen, 2)

    assert first.status_code == second.status_code == 202
    assert [cancel.client_order_id for cancel in seen] == ["o1", "o1"]
    assert await count_on(gw.peer, subjects.STREAM_ORDERS.name, subjects.CMD_ORDER_CANCEL) == 2


async def test_cancel_when_same_request_repeated_concurrently_then_published_once(gw: Harness, pg_pool: Any) -> None:
    await insert_order(pg_pool, "o2", 1)
    headers = {**OP, "Idempotency-Key": "cancel-o2-1"}

    responses = await asyncio.gather(*(gw.client.delete("/v1/orders/o2", headers=headers) for _ in range(3)))
    again_later = await gw.client.delete("/v1/orders/o2", headers=headers)
    new_request = await gw.client.delete("/v1/orders/o2", headers={**OP, "Idempotency-Key": "cancel-o2-2"})

    assert {response.status_code for response in [*responses, again_later, new_request]} == {202}
    assert await count_on(gw.peer, subjects.STREAM_ORDERS.name, subjects.CMD_ORDER_CANCEL) == 2


async def test_cancel_when_idempotency_key_too_long_then_400_and_nothing_published(gw: Harness, pg_pool: Any) -> None:
    await insert_order(pg_pool, "o3", 1)

    response = await gw.client.delete("/v1/orders/o3", headers={**OP, "Idempotency-Key": "k" * 300})

    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_idempotency_key"
    assert await count_on(gw.peer, subjects.STREAM_ORDERS.name, subjects.CMD_ORDER_CANCEL) == 0
