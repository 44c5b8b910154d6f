# ruff: noqa: F811  (`gw` is the shared fixture of test_gateway, imported to be used here)
"""Idempotency against the real bus and stores: operator commands are de-duplicated per request,
not per target, and the idempotency records live 24 h and are then cleaned."""

from __future__ import annotations

import asyncio
from typing import Any

from libs.bus import Delivery
from libs.clock import NS_PER_S, ManualClock
from libs.logging import get_logger
from proto import subjects
from proto.envelope import Message
from proto.messages import CancelOrder
from services.gateway.idempotency import IdempotencyStore
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


async def test_idempotency_sweep_when_records_older_than_24h_then_deleted_and_key_usable_again(pg_pool: Any) -> None:
    clock = ManualClock(1_000_000 * NS_PER_S)
    store = IdempotencyStore(None, pg_pool, get_logger("gateway"), clock)
    hour = 3600 * NS_PER_S
    for key, age in (("old-done", 25 * hour), ("old-claim", 30 * hour), ("fresh", 1 * hour), ("edge", 24 * hour - 1)):
        await pg_pool.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, status, created_ns) VALUES ($1, 'f', 'done', $2)",
            key,
            clock() - age,
        )
    sweeps: list[float] = []

    async def sleep(interval_s: float) -> None:
        sweeps.append(interval_s)
        if len(sweeps) == 2:
            raise asyncio.CancelledError
        clock.advance_ns(2)  # "edge" passes its 24 h before the second sweep

    try:
        await store.expire_forever(60.0, sleep=sleep)
    except asyncio.CancelledError:
        pass

    left = await pg_pool.fetch("SELECT key FROM idempotency_keys ORDER BY key")
    assert [row["key"] for row in left] == ["fresh"]
    assert sweeps == [60.0, 60.0]
    verdict = await store.begin("old-done", "another-body")
    assert verdict.action == "proceed"  # an expired key is free again, not a 409


async def test_idempotency_sweep_when_postgres_down_then_logged_and_retried(pg_pool: Any) -> None:
    store = IdempotencyStore(None, None, get_logger("gateway"), ManualClock(0))
    sweeps: list[float] = []

    async def sleep(interval_s: float) -> None:
        sweeps.append(interval_s)
        if len(sweeps) == 3:
            raise asyncio.CancelledError

    try:
        await store.expire_forever(1.0, sleep=sleep)
    except asyncio.CancelledError:
        pass

    assert len(sweeps) == 3  # each failed sweep was followed by the next, the task never died
