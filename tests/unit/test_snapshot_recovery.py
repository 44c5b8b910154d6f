"""state-builder recovery (SPEC FM-C1) with in-memory fakes: snapshot + bounded tail replay,
fallback to a resync, corruption alert, and §7 validation before VALID."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from libs.bus import Delivery
from libs.clock import ManualClock
from libs.logging import get_logger
from libs.service_snapshots import Loaded, RecoveryReport
from libs.snapshot import SnapshotPolicy
from proto.enums import HotStateStatus
from proto.envelope import Message
from proto.messages import AlertRaised, BookSnapshot, DepthDiff, HotStateStatusChanged, MarkPrice
from services.state_builder.domain import OrderBook, StateBuilderCheckpoint, validate_book
from services.state_builder.handlers import StateBuilder

MS = 1_000_000
SYMBOL = "BTCUSDT"


T0 = 1_700_000_000_000 * MS


class FakeLog:
    """Stream of market-data messages with sequences, as the MARKET_DATA stream holds them."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.replayed_ranges: list[tuple[int, int]] = []

    async def bounds(self) -> tuple[int, int]:
        return (1, len(self.messages))

    async def replay(self, start_seq: int, end_seq: int, apply: Callable[[Message, int], None]) -> int:
        self.replayed_ranges.append((start_seq, end_seq))
        for seq in range(start_seq, end_seq + 1):
            apply(self.messages[seq - 1], seq)
        return end_seq - start_seq + 1


class FakePort(FakeLog):
    def __init__(
        self, messages: list[Message], checkpoint: StateBuilderCheckpoint | None, corrupt: list[str] | None = None
    ) -> None:
        super().__init__(messages)
        self.checkpoint = checkpoint
        self.corrupt = corrupt or []

    async def load_snapshot(self) -> Loaded[StateBuilderCheckpoint]:
        return Loaded(state=self.checkpoint, corrupt=tuple(self.corrupt))


def snapshot(last: int) -> BookSnapshot:
    return BookSnapshot(
        venue="v",
        symbol=SYMBOL,
        last_update_id=last,
        bids=[(Decimal(100) - i, Decimal(1)) for i in range(10)],
        asks=[(Decimal(101) + i, Decimal(1)) for i in range(10)],
    )


def diff(u: int, ts_ns: int, bid_qty: str = "2") -> DepthDiff:
    return DepthDiff(
        venue="v",
        symbol=SYMBOL,
        first_update_id=u - 1,  # so that the first diff after snapshot L = u - 1 bridges it
        final_update_id=u,
        prev_final_update_id=u - 1,
        bids=[(Decimal(100), Decimal(bid_qty)), (Decimal(90) + Decimal(u % 7) / 10, Decimal(u))],
        asks=[(Decimal(101), Decimal(u))],
        ts_event_ns=ts_ns,
    )


def history(clock: ManualClock, count: int) -> list[Message]:
    messages: list[Message] = [snapshot(100)]
    for u in range(101, 101 + count):
        messages.append(diff(u, clock.now))
        if u % 50 == 0:
            messages.append(MarkPrice(venue="v", symbol=SYMBOL, mark_price=Decimal(u)))
    return messages


def builder(clock: ManualClock, published: list[Message]) -> StateBuilder:
    async def publish(subject: str, message: Message) -> int:
        published.append(message)
        return len(published)

    async def kv_put(key: str, value: bytes) -> int:
        return 1

    async def request(subject: str, payload: bytes) -> bytes:
        return b'{"symbol": "BTCUSDT", "status": "resyncing"}'

    return StateBuilder(
        symbols=(SYMBOL,), publish=publish, kv_put=kv_put, request=request, clock=clock, log=get_logger("test")
    )


async def reference_book(clock: ManualClock, messages: list[Message]) -> OrderBook:
    reference = builder(clock, [])
    for message in messages:
        await reference.handle_message(message)
    return reference.symbols[SYMBOL].book


async def test_recover_when_snapshot_and_tail_then_book_equals_full_replay_and_only_tail_read() -> None:
    clock = ManualClock(T0)
    messages = history(clock, 500)
    first = builder(clock, [])
    for message in messages[:300]:
        await first.handle_message(message)
    checkpoint = first.checkpoint(300)
    port = FakePort(messages, checkpoint)

    published: list[Message] = []
    recovered = builder(clock, published)
    report = await recovered.recover(port, max_replay=10_000)

    expected = await reference_book(clock, messages)
    book = recovered.symbols[SYMBOL].book
    assert (report.mode, report.snapshot_seq, report.live_from) == ("snapshot", 300, len(messages) + 1)
    assert port.replayed_ranges == [(301, len(messages))]
    assert (book.bids, book.asks, book.last_update_id) == (expected.bids, expected.asks, expected.last_update_id)
    assert recovered.symbols[SYMBOL].mark_price == Decimal(600)
    assert recovered.symbols[SYMBOL].hot.status == HotStateStatus.INVALID
    assert recovered.resync_requested == ()


async def test_recover_when_then_live_updates_fresh_then_valid_after_three() -> None:
    clock = ManualClock(T0)
    messages = history(clock, 50)
    first = builder(clock, [])
    for message in messages:
        await first.handle_message(message)
    published: list[Message] = []
    recovered = builder(clock, published)
    await recovered.recover(FakePort(messages, first.checkpoint(len(messages))), max_replay=10_000)
    last = recovered.symbols[SYMBOL].book.last_update_id
    assert last is not None
    for step in range(1, 4):
        assert recovered.symbols[SYMBOL].hot.status == HotStateStatus.INVALID
        clock.advance_ms(100)
        await recovered.handle_message(diff(last + step, clock.now))
    assert recovered.symbols[SYMBOL].hot.status == HotStateStatus.VALID
    changes = [m for m in published if isinstance(m, HotStateStatusChanged)]
    assert [c.current for c in changes] == [HotStateStatus.VALID]


async def test_recover_when_tail_longer_than_bound_then_resync_and_nothing_replayed() -> None:
    clock = ManualClock(T0)
    messages = history(clock, 500)
    first = builder(clock, [])
    for message in messages[:10]:
        await first.handle_message(message)
    port = FakePort(messages, first.checkpoint(10))
    recovered = builder(clock, [])
    report = await recovered.recover(port, max_replay=100)
    assert report.mode == "resync"
    assert port.replayed_ranges == []
    assert report.live_from == len(messages) + 1
    assert recovered.resync_requested == (SYMBOL,)
    assert not recovered.symbols[SYMBOL].book.usable


async def test_recover_when_no_snapshot_then_backlog_skipped_and_resync_requested() -> None:
    clock = ManualClock(T0)
    messages = history(clock, 100)
    port = FakePort(messages, None)
    report = await builder(clock, []).recover(port, max_replay=10_000)
    assert (report.mode, report.replayed, report.live_from) == ("resync", 0, len(messages) + 1)
    assert port.replayed_ranges == []


async def test_recover_when_corrupt_snapshots_skipped_then_alert_published() -> None:
    clock = ManualClock(T0)
    published: list[Message] = []
    await builder(clock, published).recover(FakePort(history(clock, 5), None, ["id=3: crc32c mismatch"]), max_replay=10)
    alerts = [m for m in published if isinstance(m, AlertRaised)]
    assert len(alerts) == 1 and alerts[0].key == "snapshot-corrupt.state-builder"


async def test_on_diff_when_book_crossed_then_not_valid_despite_fresh_updates() -> None:
    clock = ManualClock(T0)
    sb = builder(clock, [])
    await sb.handle_message(snapshot(100))
    for u in range(101, 106):
        clock.advance_ms(100)
        crossing = DepthDiff(
            venue="v",
            symbol=SYMBOL,
            first_update_id=u - 1,
            final_update_id=u,
            prev_final_update_id=u - 1,
            bids=[(Decimal(105), Decimal(1))],  # bid above the best ask of 101
            asks=[],
            ts_event_ns=clock.now,
        )
        await sb.handle_message(crossing)
    hot = sb.symbols[SYMBOL].hot
    assert hot.status == HotStateStatus.INVALID
    assert any("crossed" in problem for problem in hot.blocked_by)


def test_validate_book_when_thin_future_or_unchained_then_each_reported() -> None:
    book = OrderBook(SYMBOL)
    now = 1_000 * MS
    book.apply_snapshot(1, [(Decimal(1), Decimal(1))], [(Decimal(2), Decimal(1))])
    problems = validate_book(book, now_ns=now, last_event_ns=now + 6_000 * MS)
    assert any("not chained" in p for p in problems)
    assert any("depth below minimum" in p for p in problems)
    assert any("future" in p for p in problems)


async def test_recover_when_snapshot_ahead_of_stream_then_ignored_and_resync() -> None:
    clock = ManualClock(T0)
    messages = history(clock, 20)
    first = builder(clock, [])
    for message in messages:
        await first.handle_message(message)
    port = FakePort(messages[:5], first.checkpoint(len(messages)))  # the stream was reset since
    recovered = builder(clock, [])
    report = await recovered.recover(port, max_replay=10_000)
    assert report.mode == "resync"
    assert not recovered.symbols[SYMBOL].book.usable


async def recovered_with_checkpoints(
    clock: ManualClock, messages: list[Message]
) -> tuple[StateBuilder, RecoveryReport, list[StateBuilderCheckpoint]]:
    """A builder recovered from a checkpoint at message 10 of `messages` (replay bounded to 100), with
    a policy that is not due for a minute; the checkpoints it takes from then on are collected."""
    first = builder(clock, [])
    for message in messages[:10]:
        await first.handle_message(message)
    port = FakePort(messages, first.checkpoint(10))
    taken: list[StateBuilderCheckpoint] = []
    recovered = builder(clock, [])
    recovered._policy = SnapshotPolicy(clock=clock, interval_ns=60_000 * MS, every_events=2000)
    recovered._on_checkpoint = taken.append
    return recovered, await recovered.recover(port, max_replay=100), taken


async def test_book_rebuilt_after_resync_recovery_then_checkpoint_at_once() -> None:
    """A recovery whose snapshot was too far behind ends in a resync; the rebuilt book is checkpointed
    with the very message that rebuilt it, so the next restart replays a short tail instead of
    resyncing again from the same old snapshot."""
    clock = ManualClock(T0)
    messages = history(clock, 500)
    recovered, report, taken = await recovered_with_checkpoints(clock, messages)
    assert report.mode == "resync"
    await recovered.handle_message(diff(1000, clock.now), delivery(report.live_from))
    assert taken == []  # the policy is not due, nothing was rebuilt
    await recovered.handle_message(snapshot(2000), delivery(report.live_from + 1))
    assert [checkpoint.stream_seq for checkpoint in taken] == [report.live_from + 1]
    assert taken[0].symbols[0].last_update_id == 2000
    await recovered.handle_message(diff(2001, clock.now), delivery(report.live_from + 2))
    assert len(taken) == 1  # once per rebuild, then the policy again


async def test_recovery_when_tail_replayed_then_first_live_message_checkpoints() -> None:
    """After a replayed tail the next checkpoint is taken at once, not when the policy is due: a
    crash loop would otherwise replay a tail that grows with every restart."""
    clock = ManualClock(T0)
    messages = history(clock, 50)
    recovered, report, taken = await recovered_with_checkpoints(clock, messages)
    assert report.mode == "snapshot" and report.replayed == len(messages) - 10
    last_id = 150  # history(50): diffs 101..150
    await recovered.handle_message(diff(last_id + 1, clock.now), delivery(report.live_from))
    assert [checkpoint.stream_seq for checkpoint in taken] == [report.live_from]
    await recovered.handle_message(diff(last_id + 2, clock.now), delivery(report.live_from + 1))
    assert len(taken) == 1  # then the policy again


def delivery(seq: int) -> Delivery:
    return Delivery(subject="md.depth.v.BTCUSDT", stream_sequence=seq, num_delivered=1, headers={})
