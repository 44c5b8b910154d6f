"""`libs.bus.drain_size`: a consumer's next fetch asks for the backlog the server reports, bounded."""

from __future__ import annotations

from nats.aio.msg import Msg

from libs.bus import DRAIN_BATCH, drain_size


def delivered(pending: int) -> Msg:
    # The JetStream ack subject: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
    reply = f"$JS.ACK.MARKET_DATA.state-builder-md.1.100.100.1700000000000000000.{pending}"
    return Msg(_client=None, subject="md.depth.v.BTCUSDT", reply=reply, data=b"{}")  # type: ignore[arg-type]


def test_drain_size_when_nothing_pending_then_configured_batch() -> None:
    assert drain_size(1, delivered(0)) == 1
    assert drain_size(64, delivered(0)) == 64


def test_drain_size_when_backlog_then_exactly_what_is_pending_up_to_the_cap() -> None:
    assert drain_size(1, delivered(37)) == 37
    assert drain_size(1, delivered(10_000_000)) == DRAIN_BATCH
    assert drain_size(64, delivered(10)) == 64  # never below the configured batch


def test_drain_size_when_not_a_jetstream_delivery_then_configured_batch() -> None:
    plain = Msg(_client=None, subject="x", reply="_INBOX.abc", data=b"")  # type: ignore[arg-type]
    assert drain_size(1, plain) == 1
