"""FM-D1 measures a book's age from when its data was current, never from when it was handled:
a venue that goes silent while market-data still works through a backlog of older frames is a
silence (SPEC FM-D1: no missed silence), and so is a state-builder that fell behind the stream."""

from __future__ import annotations

from decimal import Decimal

from libs.bus import Delivery
from libs.clock import ManualClock
from proto.enums import HotStateStatus
from proto.messages import BookSnapshot, DepthDiff
from services.state_builder.domain import EVENT_TIME_MARGIN_NS, update_data_ns
from services.state_builder.handlers import StateBuilder
from tests.unit.test_state_builder_apply import builder

SYMBOL = "BTCUSDT"
MS = 1_000_000
T0 = 1_800_000_000_000 * MS
LEVELS = 10


def delivery(sequence: int, stored_ns: int) -> Delivery:
    return Delivery(
        subject=f"md.depth.binance-usdm.{SYMBOL}",
        stream_sequence=sequence,
        num_delivered=1,
        headers={},
        stored_ns=stored_ns,
    )


def diff(update_id: int, event_ns: int) -> DepthDiff:
    return DepthDiff(
        venue="binance-usdm",
        symbol=SYMBOL,
        first_update_id=update_id,
        final_update_id=update_id,
        prev_final_update_id=update_id - 1,
        bids=[(Decimal(90), Decimal(update_id % 7 + 1))],
        asks=[],
        ts_event_ns=event_ns,
    )


async def valid_builder(clock: ManualClock) -> tuple[StateBuilder, int]:
    """A VALID book fed a diff every 100 ms; returns it and the last update id."""
    sb = builder(clock)
    snapshot = BookSnapshot(
        venue="binance-usdm",
        symbol=SYMBOL,
        last_update_id=100,
        bids=[(Decimal(90 - i), Decimal(1)) for i in range(LEVELS)],
        asks=[(Decimal(101 + i), Decimal(1)) for i in range(LEVELS)],
        ts_event_ns=clock(),
    )
    await sb.handle_message(snapshot, delivery(1, clock()))
    update_id = 100
    for _ in range(5):
        clock.advance_ms(100)
        update_id += 1
        await sb.handle_message(diff(update_id, clock()), delivery(update_id, clock()))
    assert sb.symbols[SYMBOL].hot.status == HotStateStatus.VALID
    return sb, update_id


async def test_state_builder_when_venue_silent_behind_a_backlog_then_stale_within_the_second() -> None:
    clock = ManualClock(T0)
    sb, update_id = await valid_builder(clock)
    silent_from = clock()
    # The venue is silent from now on, but market-data is behind it: for 3 s it still hands over
    # diffs every 100 ms, each stored on the stream just now, whose data is from before the silence.
    states = []
    for step in range(30):
        clock.advance_ms(100)
        update_id += 1
        backlog_event = silent_from - 2_000 * MS + step * 20 * MS
        await sb.handle_message(diff(update_id, backlog_event), delivery(update_id, clock()))
        await sb.tick()
        states.append(sb.symbols[SYMBOL].hot.status)
    # Nothing newer than the silence's start arrives: STALE just past 1000 ms of it, and it stays so.
    assert states[:10] == [HotStateStatus.VALID] * 10
    assert set(states[10:]) == {HotStateStatus.STALE}


async def test_state_builder_when_live_diffs_arrive_on_time_then_stays_valid() -> None:
    clock = ManualClock(T0)
    sb, update_id = await valid_builder(clock)
    for _ in range(30):
        clock.advance_ms(100)
        update_id += 1
        # Event time a little behind the stream's time (the network), as from the live venue.
        await sb.handle_message(diff(update_id, clock() - 40 * MS), delivery(update_id, clock()))
        await sb.tick()
        assert sb.symbols[SYMBOL].hot.status == HotStateStatus.VALID


def test_update_data_ns_when_either_time_older_then_the_older_and_an_unknown_event_time_ignored() -> None:
    margin = EVENT_TIME_MARGIN_NS
    assert update_data_ns(T0, T0 - margin - 5 * MS) == T0 - 5 * MS  # data older than its storing: market-data behind
    assert update_data_ns(T0, T0 - margin + 5 * MS) == T0  # the way from the venue: not counted against the data
    assert update_data_ns(T0 - 5 * MS, T0) == T0 - 5 * MS  # stored long ago: this consumer behind
    assert update_data_ns(None, T0) == T0 + margin
    assert update_data_ns(T0, 0) == T0
    assert update_data_ns(None, 0) is None
