"""The sequence a position snapshot covers, on a real nats-server (SPEC §8: bounded replay).

A filtered consumer's ack floor is the last message it handled; when that was long ago (denials are
rare) and a new one is pending, the snapshot must still cover everything before the new one, or the
next restart folds the whole stream since the old one.
"""

from __future__ import annotations

from libs.bus import Bus
from proto import subjects
from services.position.adapters import covered_sequence

ORDERS = subjects.STREAM_ORDERS.name
DENIED = "evt.order.denied.binance-usdm.BTCUSDT"
APPROVED = "evt.order.approved.binance-usdm.BTCUSDT"


async def test_covered_sequence_when_rare_consumer_has_new_pending_then_not_held_at_its_old_ack_floor(
    nats_url: str,
) -> None:
    bus = Bus("test-covered")
    await bus.connect(nats_url)
    try:
        await bus.ensure_streams()
        js = bus.js
        sub = await js.pull_subscribe("evt.order.denied.>", durable="test-denials", stream=ORDERS)
        old = await js.publish(DENIED, b"old denial")
        (msg,) = await sub.fetch(1, timeout=5)
        await msg.ack_sync()
        for n in range(300):
            await js.publish(APPROVED, f"approval {n}".encode())
        new = await js.publish(DENIED, b"new denial")
        await js.publish(APPROVED, b"after")
        last = (await js.stream_info(ORDERS)).state.last_seq

        # Pending, not delivered yet: covered up to just before it, not back at the old denial.
        covered = await covered_sequence(js, ORDERS, ("test-denials",), last)
        assert covered == new.seq - 1 and covered == old.seq + 300
        # Delivered, not acknowledged: still just before it.
        (msg,) = await sub.fetch(1, timeout=5)
        assert await covered_sequence(js, ORDERS, ("test-denials",), last) == new.seq - 1
        # Handled: nothing holds the snapshot back; an unknown consumer changes nothing either.
        await msg.ack_sync()
        assert await covered_sequence(js, ORDERS, ("test-denials", "never-created"), last) == last
    finally:
        await bus.close()
