"""state-builder's one fold (`market.apply`), property-based: for random market-data histories the
books and market state after live handling equal those after replaying the same log through
recovery, from scratch and from a checkpoint taken mid-way plus the tail.

Histories are sensible by construction: per symbol, snapshots at an update id, diffs that chain onto
the previous one (spot-style `pu = U - 1` and futures-style bridging), gaps (skipped update ids),
redelivered old diffs, resync announcements, mark prices (with and without funding), open interest,
trades, and messages of a symbol that is not traded here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.bus import Delivery
from libs.clock import ManualClock
from libs.logging import get_logger
from libs.service_snapshots import Loaded
from proto.envelope import Message
from proto.messages import BookResyncStarted, BookSnapshot, DepthDiff, MarkPrice, OpenInterest, Trade
from services.state_builder.domain import StateBuilderCheckpoint
from services.state_builder.handlers import StateBuilder

SYMBOLS = ("BTCUSDT", "ETHUSDT")
UNTRADED = "XRPUSDT"
MS = 1_000_000

quantities = st.sampled_from([Decimal(0), Decimal("0.5"), Decimal(1), Decimal(2), Decimal("3.25")])
bid_prices = st.integers(min_value=90, max_value=99).map(Decimal)
ask_prices = st.integers(min_value=101, max_value=110).map(Decimal)
bid_levels = st.lists(st.tuples(bid_prices, quantities), max_size=4)
ask_levels = st.lists(st.tuples(ask_prices, quantities), max_size=4)

symbols = st.sampled_from((*SYMBOLS, UNTRADED))
operations = st.one_of(
    st.tuples(st.just("snapshot"), symbols, st.integers(0, 5), bid_levels, ask_levels),
    st.tuples(st.just("diff"), symbols, st.integers(1, 3), bid_levels, ask_levels),
    st.tuples(st.just("bridge"), symbols, st.integers(1, 3), bid_levels, ask_levels),
    st.tuples(st.just("gap"), symbols, st.integers(2, 4), bid_levels, ask_levels),
    st.tuples(st.just("redelivery"), symbols, st.integers(1, 3), bid_levels, ask_levels),
    st.tuples(st.just("resync"), symbols),
    st.tuples(st.just("mark"), symbols, st.integers(50, 150), st.none() | st.integers(-5, 5)),
    st.tuples(st.just("open_interest"), symbols, st.integers(0, 10_000)),
    st.tuples(st.just("trade"), symbols, st.integers(90, 110)),
)


class Venue:
    """Turns operations into the messages market-data would publish, keeping each symbol's update ids."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.last: dict[str, int] = {}
        self.sent: dict[str, list[DepthDiff]] = {}
        self.trade_id = 0

    def message(self, operation: tuple[Any, ...]) -> Message:
        self.clock.advance_ms(100)
        kind, symbol = operation[0], operation[1]
        last = self.last.setdefault(symbol, 1000)
        match kind:
            case "snapshot":
                _, _, behind, bids, asks = operation
                # A REST snapshot may lag the stream: its id can be at or a few ids behind the last diff.
                return BookSnapshot(
                    venue="v", symbol=symbol, last_update_id=max(1, last - behind), bids=bids, asks=asks
                )
            case "diff" | "bridge" | "gap":
                _, _, width, bids, asks = operation
                first = last + (operation[2] if kind == "gap" else 1)
                final = first + width - 1
                # `bridge` overlaps the previous id (futures `U <= L <= u`); `pu` is always the last final id.
                if kind == "bridge":
                    first -= 1
                diff = DepthDiff(
                    venue="v",
                    symbol=symbol,
                    first_update_id=first,
                    final_update_id=final,
                    prev_final_update_id=last if kind != "gap" else first - 1,
                    bids=bids,
                    asks=asks,
                    ts_event_ns=self.clock.now,
                )
                self.last[symbol] = final
                self.sent.setdefault(symbol, []).append(diff)
                return diff
            case "redelivery":
                earlier = self.sent.get(symbol)
                if not earlier:
                    return self.message(("diff", *operation[1:]))
                return earlier[-min(operation[2], len(earlier))]
            case "resync":
                return BookResyncStarted(venue="v", symbol=symbol, reason="gap")
            case "mark":
                _, _, price, funding = operation
                rate = None if funding is None else Decimal(funding) / 10_000
                return MarkPrice(venue="v", symbol=symbol, mark_price=Decimal(price), funding_rate=rate)
            case "open_interest":
                return OpenInterest(venue="v", symbol=symbol, open_interest=Decimal(operation[2]))
            case _:
                self.trade_id += 1
                return Trade(
                    venue="v",
                    symbol=symbol,
                    trade_id=self.trade_id,
                    price=Decimal(operation[2]),
                    quantity=Decimal(1),
                    buyer_is_maker=False,
                )


class StreamLog:
    """The MARKET_DATA stream as recovery reads it (sequence n is `messages[n - 1]`)."""

    def __init__(self, messages: list[Message], checkpoint: StateBuilderCheckpoint) -> None:
        self.messages = messages
        self.checkpoint = checkpoint

    async def load_snapshot(self) -> Loaded[StateBuilderCheckpoint]:
        return Loaded(state=self.checkpoint, stream_seq=self.checkpoint.stream_seq)

    async def bounds(self) -> tuple[int, int]:
        return (1, len(self.messages))

    async def replay(self, start_seq: int, end_seq: int, apply: Callable[[Message, int], None]) -> int:
        for seq in range(start_seq, end_seq + 1):
            apply(self.messages[seq - 1], seq)
        return end_seq - start_seq + 1


def builder(clock: ManualClock) -> StateBuilder:
    async def publish(subject: str, message: Message) -> int:
        return 1

    async def kv_put(key: str, value: bytes) -> int:
        return 1

    async def request(subject: str, payload: bytes) -> bytes:
        return b'{"status": "resyncing"}'

    return StateBuilder(
        symbols=SYMBOLS, publish=publish, kv_put=kv_put, request=request, clock=clock, log=get_logger("test")
    )


def market_state(sb: StateBuilder) -> dict[str, Any]:
    """Books (levels sorted) and market state of every symbol, without the checkpoint's own time."""
    state: dict[str, Any] = msgspec.to_builtins(sb.checkpoint(0))
    for entry in state["symbols"]:
        entry["bids"], entry["asks"] = sorted(entry["bids"]), sorted(entry["asks"])
    state.pop("taken_ns")
    return state


def delivery(seq: int, stored_ns: int) -> Delivery:
    return Delivery(subject="md.x", stream_sequence=seq, num_delivered=1, headers={}, stored_ns=stored_ns)


async def live_then_recovered(history: list[tuple[Any, ...]], cut: int) -> tuple[dict[str, Any], ...]:
    clock = ManualClock(1_700_000_000_000 * MS)
    venue = Venue(clock)
    messages = [venue.message(operation) for operation in history]
    live = builder(clock)
    empty = live.checkpoint(0)
    checkpoint = empty
    for seq, message in enumerate(messages, start=1):
        await live.handle_message(message, delivery(seq, clock.now))
        if seq == cut:
            checkpoint = live.checkpoint(seq)
    from_scratch = builder(clock)
    report = await from_scratch.recover(StreamLog(messages, empty), max_replay=10_000)
    assert report.replayed == len(messages)
    from_checkpoint = builder(clock)
    report = await from_checkpoint.recover(StreamLog(messages, checkpoint), max_replay=10_000)
    assert report.replayed == len(messages) - checkpoint.stream_seq
    return market_state(live), market_state(from_scratch), market_state(from_checkpoint)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.lists(operations, min_size=1, max_size=60), cut_at=st.floats(0, 1))
def test_apply_when_random_history_then_live_state_equals_replay_from_scratch_and_from_checkpoint(
    history: list[tuple[Any, ...]], cut_at: float
) -> None:
    cut = int(cut_at * len(history))
    live, from_scratch, from_checkpoint = asyncio.run(live_then_recovered(history, cut))
    assert from_scratch == live
    assert from_checkpoint == live


def test_apply_when_snapshot_then_chained_diffs_then_books_usable_and_equal() -> None:
    """A plain case the random histories cover only by chance: every book ends chained and equal."""
    history: list[tuple[Any, ...]] = []
    for symbol in SYMBOLS:
        history.append(("snapshot", symbol, 0, [(Decimal(95), Decimal(1))], [(Decimal(105), Decimal(1))]))
        history.extend(("diff", symbol, 1, [(Decimal(96), Decimal(2))], []) for _ in range(5))
    history.append(("mark", SYMBOLS[0], 100, 3))
    live, from_scratch, from_checkpoint = asyncio.run(live_then_recovered(history, 4))
    assert all(entry["book_state"] == "SYNCED" for entry in live["symbols"])
    assert live["symbols"][0]["mark_price"] == "100"
    assert from_scratch == live == from_checkpoint
