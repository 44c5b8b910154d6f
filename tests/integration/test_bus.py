"""The bus on a real nats-server: durable, de-duplicated, ack-after-effect, dead-lettering."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path

from nats.js.api import ConsumerConfig

from entrypoints.harness.embedded import EmbeddedInfra
from libs.bus import Bus, Delivery
from proto import subjects
from proto.codec import decode
from proto.enums import HotStateStatus, OrderSource, OrderType, Side
from proto.envelope import Message
from proto.messages import AlertRaised, DeadLettered, HotStateStatusChanged, SubmitOrder
from tests.support.polling import eventually


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
    stored: list[int | None] = []
    done = asyncio.Event()

    async def handler(message: Message, delivery: Delivery) -> None:
        seen.append(delivery.num_delivered)
        stored.append(delivery.stored_ns)
        if delivery.num_delivered == 1:
            raise RuntimeError("transient")
        assert isinstance(message, SubmitOrder)
        done.set()

    try:
        published_ns = time.time_ns()
        await bus.publish(subjects.CMD_ORDER_SUBMIT, _order())
        await bus.consume(
            stream="ORDERS", durable="test-retry", filter_subjects=[subjects.CMD_ORDER_SUBMIT], handler=handler
        )
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.sleep(0.3)
        info = await bus.js.consumer_info("ORDERS", "test-retry")
        assert seen == [1, 2]
        assert info.num_ack_pending == 0
        # Both deliveries carry when the stream stored the message, not when it was delivered.
        assert stored[0] == stored[1] and stored[0] is not None
        assert abs(stored[0] - published_ns) < 1_000_000_000
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


async def test_kv_keys_when_polled_often_then_prefix_filtered_and_no_consumer_left(nats_url: str) -> None:
    bus = await _bus(nats_url, "keys")
    try:
        await bus.kv_put("breaker.CB-1", b"{}")
        await bus.kv_put("breaker.CB-2", b"{}")
        await bus.kv_put("link.binance-usdm.ws", b"{}")
        for _ in range(50):  # the status endpoint's rate of reads
            assert await bus.kv_keys("breaker.") == ["breaker.CB-1", "breaker.CB-2"]
        assert "link.binance-usdm.ws" in await bus.kv_keys()
        info = await bus.js.stream_info(f"KV_{subjects.KV_STATE}")
        assert info.state.consumer_count == 0
    finally:
        await bus.close()


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


# --------------------------------------------------------------------------- FM-C6, pipelining, replay


def _hot(symbol: str, index: int) -> HotStateStatusChanged:
    return HotStateStatusChanged(
        symbol=symbol, previous=None, current=HotStateStatus.VALID, reason=f"n{index}", last_update_id=index
    )


async def test_publish_buffered_when_nats_restarts_then_detected_buffered_and_flushed_in_order(
    tmp_path: Path,
) -> None:
    servers = EmbeddedInfra(tmp_path / "infra").start(("nats",))
    bus = Bus("t")
    states: list[bool] = []
    bus.add_connection_listener(states.append)
    try:
        await bus.connect(servers.nats_url)
        await bus.ensure_streams()
        assert await bus.publish_buffered(subjects.evt_hot_state("BTCUSDT"), _hot("BTCUSDT", 0)) is not None

        servers.stop_one("nats")
        await eventually(lambda: not bus.connected, 10, lambda: "disconnect not detected", interval_s=0.05)
        assert states == [False]
        for index in range(1, 6):
            assert await bus.publish_buffered(subjects.evt_hot_state("BTCUSDT"), _hot("BTCUSDT", index)) is None
        assert bus.outbox_size == 5

        servers.start_one("nats")
        await eventually(lambda: bus.connected and bus.outbox_size == 0, 30, lambda: str(bus.status()), interval_s=0.05)
        assert states == [False, True]
        stored: list[int] = []

        def collect(message: Message, delivery: Delivery) -> None:
            assert isinstance(message, HotStateStatusChanged)
            stored.append(message.last_update_id or 0)

        await bus.replay(subjects.STREAM_CONTROL.name, 1, 100, collect)
        assert stored == [0, 1, 2, 3, 4, 5]
    finally:
        await bus.close()
        servers.stop()


async def test_publish_buffered_when_outbox_full_then_oldest_dropped_and_alert_after_reconnect(
    tmp_path: Path,
) -> None:
    servers = EmbeddedInfra(tmp_path / "infra").start(("nats",))
    bus = Bus("t")
    bus.outbox_limit = 3
    try:
        await bus.connect(servers.nats_url)
        await bus.ensure_streams()
        servers.stop_one("nats")
        await eventually(lambda: not bus.connected, 10, interval_s=0.05)
        for index in range(5):
            await bus.publish_buffered(subjects.evt_hot_state("BTCUSDT"), _hot("BTCUSDT", index))
        assert (bus.outbox_size, bus.outbox_dropped) == (3, 2)
        servers.start_one("nats")
        await eventually(lambda: bus.connected and bus.outbox_size == 0, 30, interval_s=0.05)
        seen: list[Message] = []
        await asyncio.sleep(0.5)  # the alert goes out right after the flush
        await bus.replay(subjects.STREAM_CONTROL.name, 1, 100, lambda message, delivery: seen.append(message))
        kept = [m.last_update_id for m in seen if isinstance(m, HotStateStatusChanged)]
        alerts = [m for m in seen if isinstance(m, AlertRaised)]
        assert kept == [2, 3, 4]  # the two oldest were dropped
        assert len(alerts) == 1 and alerts[0].details["dropped"] == 2
    finally:
        await bus.close()
        servers.stop()


async def test_publish_many_when_batch_then_all_acked_in_order_and_deduplicated(nats_url: str) -> None:
    bus = await _bus(nats_url, "t")
    try:
        items = [(subjects.evt_hot_state("ETHUSDT"), _hot("ETHUSDT", i), f"hot:{i}") for i in range(50)]
        sequences = await bus.publish_many(items)
        assert sequences == sorted(sequences) and len(set(sequences)) == 50
        again = await bus.publish_many(items[:10])
        assert again == sequences[:10]  # de-duplicated by msg id
        assert await bus.publish_many([]) == []
    finally:
        await bus.close()


async def test_consume_when_start_sequence_given_then_earlier_backlog_skipped(nats_url: str) -> None:
    bus = await _bus(nats_url, "t")
    seen: list[int] = []
    try:
        subject = subjects.evt_hot_state("BTCUSDT")
        sequences = await bus.publish_many([(subject, _hot("BTCUSDT", i), None) for i in range(10)])

        async def handler(message: Message, delivery: Delivery) -> None:
            seen.append(delivery.stream_sequence)

        await bus.consume(
            stream=subjects.STREAM_CONTROL.name,
            durable="t-start",
            filter_subjects=["evt.hotstate.>"],
            handler=handler,
            start_sequence=sequences[7],
        )
        await eventually(lambda: len(seen) >= 3, 10, interval_s=0.05)
        assert seen == sequences[7:]
    finally:
        await bus.close()


async def test_consume_when_batch_one_and_backlog_then_drained_in_order_and_live_message_prompt(nats_url: str) -> None:
    """A batch-1 consumer works off a backlog in large fetches (not one round trip per message), in
    order and once each, and a message published afterwards is still handled at once (no lingering)."""
    bus = await _bus(nats_url, "t")
    seen: list[int] = []
    handled_at: dict[int, float] = {}
    try:
        subject = subjects.evt_hot_state("ETHUSDT")
        backlog: list[int] = []
        for start in range(0, 3000, 500):
            items = [(subject, _hot("ETHUSDT", i), f"drain:{i}") for i in range(start, start + 500)]
            backlog += await bus.publish_many(items, timeout_s=30.0)

        async def handler(message: Message, delivery: Delivery) -> None:
            seen.append(delivery.stream_sequence)
            handled_at[delivery.stream_sequence] = time.monotonic()

        started = time.monotonic()
        await bus.consume(
            stream=subjects.STREAM_CONTROL.name,
            durable="t-drain",
            filter_subjects=["evt.hotstate.ETHUSDT"],
            handler=handler,
            batch=1,
            start_sequence=backlog[0],
        )
        await eventually(lambda: len(seen) >= len(backlog), 30, interval_s=0.05)
        drained_s = time.monotonic() - started
        assert seen == backlog
        # One round trip per message took ~3 ms each here (~9 s for 3000); draining takes well under that.
        assert drained_s < 5.0, drained_s
        await asyncio.sleep(1.5)  # the consumer is idle, waiting in a batch-1 fetch again
        published = time.monotonic()
        live = await bus.publish(subject, _hot("ETHUSDT", 9999), msg_id="drain:live")
        await eventually(lambda: live in handled_at, 5, interval_s=0.05)
        assert handled_at[live] - published < 0.5
        assert seen.count(live) == 1
    finally:
        await bus.close()


async def test_consume_when_durable_filter_narrowed_then_updated_in_place_nothing_skipped_or_repeated(
    nats_url: str,
) -> None:
    """An existing durable whose filter the code narrows (position-orders: `evt.order.approved.>` to
    one venue's approvals) is updated, not left as it was nor recreated: it goes on after the last
    message it delivered, a message delivered and never acknowledged is redelivered, what it had
    acknowledged is not, and the other venue's messages are never delivered to it."""
    bus = await _bus(nats_url, "t")
    main, backup = "evt.order.approved.main.BTCUSDT", "evt.order.approved.backup.BTCUSDT"
    seen: list[tuple[str, str, int]] = []
    try:
        stream = subjects.STREAM_ORDERS.name
        # The durable as an earlier release created it: every venue's approvals, 1 s ack wait.
        old = await bus.js.pull_subscribe(
            "evt.order.approved.>", durable="t-narrow", stream=stream, config=ConsumerConfig(ack_wait=1.0)
        )
        for coid, subject in (("a1", main), ("b1", backup), ("a2", main)):
            await bus.publish(subject, _order(coid))
        delivered = await old.fetch(3, timeout=5)
        assert [decode(m.data).client_order_id for m in delivered] == ["a1", "b1", "a2"]  # type: ignore[attr-defined]
        await delivered[0].ack_sync()
        await delivered[1].ack_sync()  # a2: delivered, never acknowledged (the process died)
        await old.unsubscribe()
        for coid, subject in (("a3", main), ("b2", backup)):
            await bus.publish(subject, _order(coid))

        async def handler(message: Message, delivery: Delivery) -> None:
            assert isinstance(message, SubmitOrder)
            seen.append((message.client_order_id, delivery.subject, delivery.num_delivered))

        await bus.consume(
            stream=stream, durable="t-narrow", filter_subjects=["evt.order.approved.main.>"], handler=handler
        )
        await eventually(lambda: {coid for coid, _, _ in seen} >= {"a2", "a3"}, 10, interval_s=0.05)
        await bus.publish(backup, _order("b3"))
        await bus.publish(main, _order("a4"))
        await eventually(lambda: any(coid == "a4" for coid, _, _ in seen), 10, interval_s=0.05)
        await asyncio.sleep(2.5)  # past the ack wait: nothing acknowledged comes again
        assert sorted(coid for coid, _, _ in seen) == ["a2", "a3", "a4"], seen
        assert all(subject == main for _, subject, _ in seen)
        assert dict((coid, n) for coid, _, n in seen)["a2"] == 2  # the redelivery of the unacknowledged one
        info = await bus.js.consumer_info(stream, "t-narrow")
        assert info.config.filter_subject == "evt.order.approved.main.>"
        assert info.config.ack_wait == 1.0  # the rest of the configuration kept
        assert info.num_pending == 0 and info.num_ack_pending == 0
        # The same filter again (a restart): left as it is.
        await bus.close()
        bus = await _bus(nats_url, "t")
        await bus.consume(
            stream=stream, durable="t-narrow", filter_subjects=["evt.order.approved.main.>"], handler=handler
        )
        await asyncio.sleep(1.5)
        assert sorted(coid for coid, _, _ in seen) == ["a2", "a3", "a4"], seen
    finally:
        await bus.close()
