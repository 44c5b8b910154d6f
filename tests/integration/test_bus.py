"""The bus on a real nats-server: durable, de-duplicated, ack-after-effect, dead-lettering."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from libs.bus import Bus, Delivery
from proto import subjects
from proto.codec import decode
from proto.enums import HotStateStatus, OrderSource, OrderType, Side
from proto.envelope import Message
from proto.messages import DeadLettered, HotStateStatusChanged, SubmitOrder


def _order(coid: str = "bwtest") -> SubmitOrder:
    return SubmitOrder(
        client_order_id=coid,
        idempotency_key="k1",
        source=OrderSource.OPERATOR,
        symbol="BTCUSDT",
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=Decimal("0.010"),
    )


async def _bus(nats_url: str, name: str) -> Bus:
    bus = Bus(name)
    await bus.connect(nats_url)
    await bus.ensure_streams()
    return bus


async def test_publish_when_same_msg_id_twice_then_stream_holds_one(nats_url: str) -> None:
    bus = await _bus(nats_url, "t")
    try:
        first = await bus.publish(subjects.CMD_ORDER_SUBMIT, _order(), msg_id="bwtest")
        again = await bus.publish(subjects.CMD_ORDER_SUBMIT, _order(), msg_id="bwtest")
        info = await bus.js.stream_info(subjects.STREAM_ORDERS.name)
        assert first == again
        assert info.state.messages == 1
    finally:
        await bus.close()


async def test_ensure_streams_when_run_twice_then_idempotent(nats_url: str) -> None:
    bus = await _bus(nats_url, "t")
    try:
        await bus.ensure_streams()
        names = {info.config.name for info in await bus.js.streams_info()}
        assert {spec.name for spec in subjects.ALL_STREAMS} <= names
    finally:
        await bus.close()


async def test_consume_when_handler_fails_once_then_redelivered_and_acked(nats_url: str) -> None:
    bus = await _bus(nats_url, "t")
    seen: list[int] = []
    done = asyncio.Event()

    async def handler(message: Message, delivery: Delivery) -> None:
        seen.append(delivery.num_delivered)
        if delivery.num_delivered == 1:
            raise RuntimeError("transient")
        assert isinstance(message, SubmitOrder)
        done.set()

    try:
        await bus.publish(subjects.CMD_ORDER_SUBMIT, _order())
        await bus.consume(
            stream="ORDERS", durable="test-retry", filter_subjects=[subjects.CMD_ORDER_SUBMIT], handler=handler
        )
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.sleep(0.3)
        info = await bus.js.consumer_info("ORDERS", "test-retry")
        assert seen == [1, 2]
        assert info.num_ack_pending == 0
    finally:
        await bus.close()


async def test_consume_when_handler_always_fails_then_dead_lettered_after_bounded_deliveries(nats_url: str) -> None:
    bus = await _bus(nats_url, "t")
    attempts: list[int] = []

    async def handler(message: Message, delivery: Delivery) -> None:
        attempts.append(delivery.num_delivered)
        raise RuntimeError("always")

    try:
        await bus.publish(subjects.CMD_ORDER_SUBMIT, _order())
        await bus.consume(
            stream="ORDERS",
            durable="test-dlq",
            filter_subjects=[subjects.CMD_ORDER_SUBMIT],
            handler=handler,
            max_deliver=3,
        )
        for _ in range(100):
            info = await bus.js.stream_info("DLQ")
            if info.state.messages:
                break
            await asyncio.sleep(0.1)
        letter = decode((await bus.js.get_last_msg("DLQ", subjects.dlq("test-dlq"))).data or b"")
        assert isinstance(letter, DeadLettered)
        assert letter.deliveries == 3 and attempts == [1, 2, 3]
        assert "always" in letter.reason and '"client_order_id":"bwtest"' in letter.payload
    finally:
        await bus.close()


async def test_consume_when_payload_is_garbage_then_dead_lettered_with_raw_bytes(nats_url: str) -> None:
    bus = await _bus(nats_url, "t")
    handled: list[Message] = []

    async def handler(message: Message, delivery: Delivery) -> None:
        handled.append(message)

    try:
        await bus.js.publish(subjects.CMD_ORDER_SUBMIT, b'{"type":"SubmitOrder","quantity":"not a number"')
        await bus.consume(
            stream="ORDERS", durable="test-garbage", filter_subjects=[subjects.CMD_ORDER_SUBMIT], handler=handler
        )
        for _ in range(50):
            if (await bus.js.stream_info("DLQ")).state.messages:
                break
            await asyncio.sleep(0.1)
        letter = decode((await bus.js.get_last_msg("DLQ", subjects.dlq("test-garbage"))).data or b"")
        assert isinstance(letter, DeadLettered)
        assert letter.reason.startswith("undecodable") and "not a number" in letter.payload
        assert handled == []
    finally:
        await bus.close()


async def test_kv_when_put_then_survives_reconnect(nats_url: str) -> None:
    bus = await _bus(nats_url, "t")
    await bus.kv_put("trading_state", b'{"state":"HALTED"}')
    await bus.close()
    other = await _bus(nats_url, "t2")
    try:
        value = await other.kv_get("trading_state")
        assert value is not None and value[0] == b'{"state":"HALTED"}'
        assert await other.kv_get("never-set") is None
    finally:
        await other.close()


async def test_publish_core_when_subscribed_then_message_decodes(nats_url: str) -> None:
    bus = await _bus(nats_url, "t")
    got: asyncio.Queue[Message] = asyncio.Queue()

    async def on_msg(msg: object) -> None:
        got.put_nowait(decode(msg.data))  # type: ignore[attr-defined]

    try:
        await bus.subscribe_core(subjects.evt_hot_state("BTCUSDT"), on_msg)
        event = HotStateStatusChanged(
            symbol="BTCUSDT", previous=None, current=HotStateStatus.VALID, reason="test", last_update_id=7
        )
        await bus.publish(subjects.evt_hot_state("BTCUSDT"), event)
        received = await asyncio.wait_for(got.get(), 5)
        assert received == event
    finally:
        await bus.close()
