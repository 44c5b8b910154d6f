"""BookSync (market-data's USD-M and spot book procedures) on real Binance recordings and on edge cases."""

from __future__ import annotations

import asyncio
import functools
import itertools
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.clock import ManualClock
from libs.recordings import (
    DepthSnapshot,
    DepthUpdate,
    ReferenceBook,
    read_recording,
    read_recordings,
    rebuild_book,
    split_by_symbol,
)
from proto.messages import BookResyncStarted, BookSnapshot, DepthDiff
from services.market_data.book_sync import BookSync, SyncState, replay
from services.market_data.frames import DepthEvent, DepthSnapshotData, MarketKind
from services.state_builder.domain import DiffResult, OrderBook

VENUE = "binance-usdm"
DEPTH_KINDS = {"DepthSnapshot", "DepthUpdate"}
CLOCK = ManualClock(1_700_000_000 * 1_000_000_000)


def book_sync(venue: str, symbol: str, **options: Any) -> BookSync:
    """A book sync on a clock that stands still and a fixed session nonce."""
    return BookSync(venue, symbol, clock=CLOCK, nonce="0000feed", **options)


def to_event(record: DepthUpdate) -> DepthEvent:
    return DepthEvent(
        symbol=record.symbol,
        first_update_id=record.first_update_id,
        final_update_id=record.final_update_id,
        prev_final_update_id=record.previous_final_update_id,
        event_time_ms=record.event_time_ms,
        bids=list(record.bids),
        asks=list(record.asks),
    )


def to_snapshot(record: DepthSnapshot) -> DepthSnapshotData:
    return DepthSnapshotData(record.last_update_id, list(record.bids), list(record.asks))


def to_items(records: list) -> list[DepthEvent | DepthSnapshotData]:
    return [to_snapshot(r) if isinstance(r, DepthSnapshot) else to_event(r) for r in records]


def book_from(messages: list, symbol: str = "BTCUSDT") -> ReferenceBook:
    """What a consumer of the published messages would hold."""
    book = ReferenceBook(symbol)
    for message in messages:
        if isinstance(message, BookSnapshot):
            book = ReferenceBook(symbol, message.last_update_id)
            book.apply(message.bids, message.asks)
        elif isinstance(message, DepthDiff):
            book.apply(message.bids, message.asks)
            book.last_update_id = message.final_update_id
    return book


def reference(items: list[DepthEvent | DepthSnapshotData], symbol: str) -> ReferenceBook:
    """Independent rebuild: snapshot, then every event from the bridging one on, no checks."""
    snapshot = next(i for i in items if isinstance(i, DepthSnapshotData))
    book = ReferenceBook(symbol, snapshot.last_update_id)
    book.apply(snapshot.bids, snapshot.asks)
    for item in items:
        if isinstance(item, DepthEvent) and item.final_update_id >= snapshot.last_update_id:
            book.apply(item.bids, item.asks)
            book.last_update_id = item.final_update_id
    return book


def ev(first: int, final: int, prev: int, bids=(), asks=()) -> DepthEvent:
    return DepthEvent("BTCUSDT", first, final, prev, 1, list(bids), list(asks))


def snap(last: int, bids=((Decimal(100), Decimal(1)),), asks=((Decimal(101), Decimal(1)),)) -> DepthSnapshotData:
    return DepthSnapshotData(last, list(bids), list(asks))


# --------------------------------------------------------------------------- recordings


@functools.cache
def load(path: Path) -> tuple:
    """Depth records of one recording, read once per test session."""
    return tuple(read_recording(path, kinds=DEPTH_KINDS))


@pytest.fixture(scope="module")
def btc_items(data_dir: Path) -> list[DepthEvent | DepthSnapshotData]:
    return to_items(list(load(data_dir / "binance" / "usdm_btcusdt_20240808.gz")))


@pytest.mark.parametrize("name", ["usdm_btcusdt_20240808.gz", "usdm_ethusdt_20240808.gz", "usdm_btcusdt_20230404.gz"])
def test_replay_when_real_recording_then_synced_without_gap_and_book_matches_reference(
    data_dir: Path, name: str
) -> None:
    records = list(load(data_dir / "binance" / name))
    symbol = records[0].symbol
    items = to_items(records)
    sync = book_sync(VENUE, symbol)

    messages = replay(sync, items)

    assert sync.state == SyncState.SYNCED
    assert sync.gaps == 0
    assert not any(isinstance(m, BookResyncStarted) for m in messages)
    expected = reference(items, symbol)
    got = book_from(messages, symbol)
    assert got.last_update_id == expected.last_update_id == sync.last_update_id
    assert got.bids == expected.bids
    assert got.asks == expected.asks
    diffs = [m for m in messages if isinstance(m, DepthDiff)]
    # Every applied diff chains onto the previous one (after the bridge).
    assert all(b.prev_final_update_id == a.final_update_id for a, b in itertools.pairwise(diffs))


def test_replay_when_cryptofeed_futures_then_every_symbol_bridges_including_u_equals_last_update_id(
    data_dir: Path,
) -> None:
    folder = data_dir / "binance" / "cryptofeed"
    files = [folder / "BINANCE_FUTURES.ws.1.0", folder / "BINANCE_FUTURES.http.0.0"]
    records = read_recordings(files, kinds=DEPTH_KINDS)
    u_equals_l = 0
    for symbol, symbol_records in split_by_symbol(records).items():
        items = to_items(symbol_records)
        sync = book_sync(VENUE, symbol)
        messages = replay(sync, items)
        assert sync.synced, symbol
        assert sync.gaps == 0, symbol
        snapshot = next(m for m in messages if isinstance(m, BookSnapshot))
        first = next(m for m in messages if isinstance(m, DepthDiff))
        u_equals_l += first.final_update_id == snapshot.last_update_id
        expected = reference(items, symbol)
        got = book_from(messages, symbol)
        assert (got.bids, got.asks, got.last_update_id) == (expected.bids, expected.asks, expected.last_update_id)
    assert u_equals_l == 3


# --------------------------------------------------------------------------- edge cases


def test_on_snapshot_when_first_event_has_u_equal_to_last_update_id_then_it_is_applied() -> None:
    sync = book_sync(VENUE, "BTCUSDT")
    sync.on_event(ev(5, 10, 4))
    out = sync.on_snapshot(snap(10))
    assert [type(m) for m in out] == [BookSnapshot, DepthDiff]
    assert sync.synced and sync.last_update_id == 10


def test_on_snapshot_when_events_older_than_snapshot_then_dropped_and_bridge_applied() -> None:
    sync = book_sync(VENUE, "BTCUSDT")
    for event in (ev(1, 3, 0), ev(4, 6, 3), ev(7, 12, 6), ev(13, 15, 12)):
        sync.on_event(event)
    out = sync.on_snapshot(snap(8))
    assert [m.final_update_id for m in out if isinstance(m, DepthDiff)] == [12, 15]
    assert sync.last_update_id == 15


def test_on_snapshot_when_no_event_yet_then_waits_for_bridge() -> None:
    sync = book_sync(VENUE, "BTCUSDT")
    assert sync.wants_snapshot
    out = sync.on_snapshot(snap(8))
    assert [type(m) for m in out] == [BookSnapshot]
    assert sync.state == SyncState.AWAITING_BRIDGE and not sync.wants_snapshot
    assert sync.on_event(ev(1, 7, 0)) == []  # before the snapshot
    assert [type(m) for m in sync.on_event(ev(8, 9, 7))] == [DepthDiff]  # U == L bridges


def test_on_event_when_first_event_after_snapshot_does_not_bridge_then_gap_and_new_snapshot_wanted() -> None:
    sync = book_sync(VENUE, "BTCUSDT")
    sync.on_snapshot(snap(8))
    out = sync.on_event(ev(10, 12, 9))
    assert len(out) == 1 and isinstance(out[0], BookResyncStarted)
    assert out[0].expected_prev_update_id == 8 and out[0].received_prev_update_id == 10
    assert sync.wants_snapshot and sync.gaps == 1
    # The offending event is kept: a newer snapshot can bridge it.
    out = sync.on_snapshot(snap(11))
    assert [type(m) for m in out] == [BookSnapshot, DepthDiff]


def test_on_event_when_pu_does_not_match_previous_u_then_gap_reported_with_both_ids() -> None:
    sync = book_sync(VENUE, "BTCUSDT")
    sync.on_event(ev(5, 10, 4))
    sync.on_snapshot(snap(10))
    out = sync.on_event(ev(12, 14, 11))
    assert isinstance(out[0], BookResyncStarted)
    assert (out[0].expected_prev_update_id, out[0].received_prev_update_id) == (10, 11)
    assert not sync.synced and sync.last_update_id == 10


def test_on_event_when_duplicate_after_sync_then_dropped_without_gap() -> None:
    sync = book_sync(VENUE, "BTCUSDT")
    sync.on_snapshot(snap(10))
    sync.on_event(ev(9, 11, 8))
    assert sync.on_event(ev(9, 11, 8)) == []
    assert sync.synced and sync.duplicates == 1 and sync.gaps == 0
    assert isinstance(sync.on_event(ev(12, 14, 11))[0], DepthDiff)


def test_on_snapshot_when_gap_while_draining_then_rest_stays_buffered_for_next_snapshot() -> None:
    sync = book_sync(VENUE, "BTCUSDT")
    for event in (ev(5, 10, 4), ev(11, 12, 10), ev(20, 22, 19), ev(23, 25, 22)):
        sync.on_event(event)
    out = sync.on_snapshot(snap(10))
    assert [type(m) for m in out] == [BookSnapshot, DepthDiff, DepthDiff, BookResyncStarted]
    assert sync.buffered == 2
    out = sync.on_snapshot(snap(21))
    assert [m.final_update_id for m in out if isinstance(m, DepthDiff)] == [22, 25]
    assert sync.synced


def test_on_snapshot_when_not_wanted_then_ignored() -> None:
    sync = book_sync(VENUE, "BTCUSDT")
    sync.on_snapshot(snap(10))
    assert sync.on_snapshot(snap(20)) == []
    assert sync.last_update_id == 10


def test_force_resync_when_synced_then_announced_and_buffer_restarts() -> None:
    sync = book_sync(VENUE, "BTCUSDT")
    sync.on_snapshot(snap(10))
    sync.on_event(ev(9, 11, 8))
    out = sync.force_resync("reconnected")
    assert isinstance(out[0], BookResyncStarted) and out[0].reason == "reconnected"
    assert sync.wants_snapshot and sync.buffered == 0


def test_on_event_when_buffer_full_then_oldest_dropped() -> None:
    sync = book_sync(VENUE, "BTCUSDT", max_buffer=3)
    for i in range(10):
        sync.on_event(ev(i * 2 + 1, i * 2 + 2, i * 2))
    assert sync.buffered == 3


# --------------------------------------------------------------------------- properties


@pytest.fixture(scope="module")
def window(btc_items: list[DepthEvent | DepthSnapshotData]) -> list[DepthEvent | DepthSnapshotData]:
    """The snapshot, the events buffered before it and 150 events after the bridge."""
    snapshot_index = next(i for i, item in enumerate(btc_items) if isinstance(item, DepthSnapshotData))
    return btc_items[: snapshot_index + 1 + 150]


mutation = st.tuples(st.sampled_from(["drop", "duplicate", "swap"]), st.integers(min_value=0, max_value=10_000))


def mutate(items: list, mutations: list[tuple[str, int]]) -> list:
    """Apply drops/duplicates/swaps of events; the snapshot and the final event are never touched."""
    items = list(items)
    for kind, raw_index in mutations:
        candidates = [i for i, item in enumerate(items[:-1]) if isinstance(item, DepthEvent)]
        if kind == "swap":
            candidates = [i for i in candidates if i + 1 < len(items) - 1 and isinstance(items[i + 1], DepthEvent)]
        if not candidates:
            continue
        index = candidates[raw_index % len(candidates)]
        if kind == "drop":
            del items[index]
        elif kind == "duplicate":
            items.insert(index + 1, items[index])
        else:
            items[index], items[index + 1] = items[index + 1], items[index]
    return items


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(mutation, min_size=1, max_size=4))
def test_replay_when_events_dropped_duplicated_or_reordered_then_exact_book_or_gap_detected(
    window: list, mutations: list[tuple[str, int]]
) -> None:
    expected = reference(window, "BTCUSDT")
    sync = book_sync(VENUE, "BTCUSDT")
    messages: list = []
    for item in mutate(window, mutations):
        out = sync.on_snapshot(item) if isinstance(item, DepthSnapshotData) else sync.on_event(item)
        messages.extend(out)
        if any(isinstance(m, BookResyncStarted) for m in out):
            return  # detected: the consumer is told the book is invalid
    got = book_from(messages)
    assert sync.synced
    assert (got.last_update_id, got.bids, got.asks) == (expected.last_update_id, expected.bids, expected.asks)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drop_at=st.integers(min_value=20, max_value=140), resnapshot_after=st.integers(min_value=1, max_value=5))
def test_replay_when_gap_then_resync_from_new_snapshot_recovers_exact_book(
    window: list, drop_at: int, resnapshot_after: int
) -> None:
    events_after = [i for i, item in enumerate(window) if isinstance(item, DepthEvent)]
    snapshot_index = next(i for i, item in enumerate(window) if isinstance(item, DepthSnapshotData))
    drop_index = [i for i in events_after if i > snapshot_index][drop_at]
    items = window[:drop_index] + window[drop_index + 1 :]
    # A later REST snapshot: the true book right after event `drop_index + resnapshot_after`.
    snapshot_at = min(drop_index + resnapshot_after, len(window) - 2)
    truth = reference(window[: snapshot_at + 1], "BTCUSDT")
    later_snapshot = DepthSnapshotData(truth.last_update_id, list(truth.bids.items()), list(truth.asks.items()))

    sync = book_sync(VENUE, "BTCUSDT")
    messages = replay(sync, items)
    assert sync.wants_snapshot and sync.gaps == 1
    messages.extend(sync.on_snapshot(later_snapshot))

    expected = reference(window, "BTCUSDT")
    got = book_from(messages)
    assert sync.synced
    assert (got.last_update_id, got.bids, got.asks) == (expected.last_update_id, expected.bids, expected.asks)


# --------------------------------------------------------------------------- service with fakes


class FakeRest:
    def __init__(self, snapshot: dict) -> None:
        self.snapshot = snapshot
        self.depth_calls = 0

    async def depth(self, symbol: str, limit: int = 1000) -> dict:
        self.depth_calls += 1
        return self.snapshot

    async def open_interest(self, symbol: str) -> dict:
        return {"symbol": symbol, "openInterest": "123.4", "time": 1}


def make_service(snapshot: dict | None = None):
    from libs.logging import get_logger
    from services.market_data.handlers import MarketDataService

    published: list[tuple[str, object, str | None]] = []

    async def publish(subject: str, message: object, msg_id: str | None) -> int:
        published.append((subject, message, msg_id))
        return len(published)

    async def kv_put(key: str, value: bytes) -> int:
        return 1

    rest = FakeRest(snapshot or {"lastUpdateId": 10, "bids": [["100.0", "1"]], "asks": [["101.0", "2"]]})
    service = MarketDataService(
        venue=VENUE,
        symbols=("BTCUSDT",),
        publish=publish,  # type: ignore[arg-type]
        kv_put=kv_put,
        rest=rest,
        open_stream=lambda url: None,  # type: ignore[arg-type,return-value]
        log=get_logger("test"),
        clock=CLOCK,
        new_id=lambda: "0000feed" * 4,
    )
    return service, published, rest


def depth_frame(first: int, final: int, prev: int) -> object:
    from libs.binance.stream import parse_frame

    payload = {"e": "depthUpdate", "E": 1, "T": 1, "s": "BTCUSDT", "U": first, "u": final, "pu": prev}
    payload |= {"b": [["100.0", "3"]], "a": []}
    return parse_frame(msgspec.json.encode({"stream": "btcusdt@depth@100ms", "data": payload}).decode())


async def test_handle_frame_when_connected_then_snapshot_and_chained_diffs_published_with_msg_ids() -> None:
    service, published, rest = make_service()
    service.links.connected = True
    await service.handle_frame(depth_frame(5, 10, 4))
    await asyncio.sleep(0.05)  # the snapshot fetch runs as its own task
    await service.handle_frame(depth_frame(11, 12, 10))
    published[:] = [entry for entry in published if entry[0].startswith("md.")]
    subjects_and_ids = [(subject, msg_id) for subject, _, msg_id in published]
    sync_id = published[0][1].correlation_id
    assert sync_id == "0000feed-1-10"  # the injected id's first 8 characters, the session, the snapshot
    assert all(message.correlation_id == sync_id for _, message, _ in published)
    assert subjects_and_ids == [
        ("md.snapshot.binance-usdm.BTCUSDT", f"binance-usdm:BTCUSDT:snapshot:{sync_id}:10"),
        ("md.depth.binance-usdm.BTCUSDT", f"binance-usdm:BTCUSDT:depth:{sync_id}:10"),
        ("md.depth.binance-usdm.BTCUSDT", f"binance-usdm:BTCUSDT:depth:{sync_id}:12"),
    ]
    assert rest.depth_calls == 1
    assert service.details()["symbols"]["BTCUSDT"] == {"synced": True, "last_update_id": 12}


async def test_handle_frame_when_resynced_then_same_update_id_gets_a_new_dedup_id() -> None:
    service, published, _rest = make_service()
    service.links.connected = True
    await service.handle_frame(depth_frame(5, 10, 4))
    await asyncio.sleep(0.05)
    await service.handle_resync_request(b'{"symbol": "BTCUSDT"}')
    await service.handle_frame(depth_frame(5, 10, 4))
    await asyncio.sleep(0.05)
    depth_ids = [msg_id for subject, _, msg_id in published if subject.startswith("md.depth.")]
    assert len(depth_ids) == 2 and depth_ids[0] != depth_ids[1]


async def test_handle_frame_when_corrupt_then_counted_and_skipped() -> None:
    from libs.binance.stream import parse_frame

    service, published, _ = make_service()
    await service.handle_frame(parse_frame("{not json"))
    await service.handle_frame(parse_frame('{"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "p": "x"}}'))
    await service.handle_frame(parse_frame('{"stream": "dogeusdt@aggTrade", "data": {}}'))
    assert service.bad_frames == 3
    assert published == []


async def test_handle_frame_when_agg_trade_mark_and_force_order_then_normalized() -> None:
    from libs.binance.stream import parse_frame

    service, published, _ = make_service()
    frames = [
        {"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "E": 2, "s": "BTCUSDT", "a": 77, "p": "100.5",
                                                 "q": "0.3", "f": 1, "l": 2, "T": 2, "m": True}},
        {"stream": "btcusdt@markPrice@1s", "data": {"e": "markPriceUpdate", "E": 3, "s": "BTCUSDT", "p": "100.1",
                                                     "i": "100.0", "P": "100.2", "r": "0.0001", "T": 9}},
        {"stream": "btcusdt@forceOrder", "data": {"e": "forceOrder", "E": 4, "o": {"s": "BTCUSDT", "S": "SELL",
                                                   "q": "0.5", "p": "99", "ap": "99.5", "X": "FILLED", "T": 4}}},
    ]  # fmt: skip
    for frame in frames:
        await service.handle_frame(parse_frame(msgspec.json.encode(frame).decode()))
    assert [subject for subject, _, _ in published] == [
        "md.trade.binance-usdm.BTCUSDT",
        "md.mark.binance-usdm.BTCUSDT",
        "md.liquidation.binance-usdm.BTCUSDT",
    ]
    trade, mark, liquidation = (message for _, message, _ in published)
    assert trade.trade_id == 77 and trade.price == Decimal("100.5") and trade.buyer_is_maker  # type: ignore[attr-defined]
    assert mark.funding_rate == Decimal("0.0001")  # type: ignore[attr-defined]
    assert liquidation.price == Decimal("99.5")  # type: ignore[attr-defined]


async def test_handle_resync_request_when_synced_then_resync_announced_and_unknown_symbol_not_found() -> None:
    service, published, _ = make_service()
    service.links.connected = True
    await service.handle_frame(depth_frame(5, 10, 4))
    await asyncio.sleep(0.05)
    reply = msgspec.json.decode(await service.handle_resync_request(b'{"symbol": "btcusdt"}'))
    assert reply == {"symbol": "BTCUSDT", "status": "resyncing"}
    assert any(isinstance(message, BookResyncStarted) for _, message, _ in published)
    missing = msgspec.json.decode(await service.handle_resync_request(b'{"symbol": "NOPE"}'))
    assert missing["error"]["code"] == "not_found"
    await service.close()


def test_reconnect_delay_when_attempts_grow_then_spec_schedule_with_bounded_jitter() -> None:
    from libs.reconnect import reconnect_delay_s

    assert [reconnect_delay_s(n, lambda a, b: 0.0) for n in range(5)] == [0, 1, 2, 4, 8]
    assert reconnect_delay_s(5, lambda a, b: 0.0) == 32
    assert reconnect_delay_s(6, lambda a, b: b) == 90  # 60 + U(0, 30) at its maximum
    assert reconnect_delay_s(20, lambda a, b: 0.0) == 60


# --------------------------------------------------------------------------- USD-M bridge on `pu == L` (CTKUSDT)


def test_replay_when_event_ending_at_snapshot_was_missed_then_next_event_with_pu_equal_l_bridges_without_resync(
    data_dir: Path,
) -> None:
    # The cryptofeed futures CTKUSDT start-up resync: the snapshot's L is the `u` of an event sent
    # before the subscription started; the first event received is the next one, U > L and pu == L.
    folder = data_dir / "binance" / "cryptofeed"
    records = read_recordings(
        [folder / "BINANCE_FUTURES.ws.1.0", folder / "BINANCE_FUTURES.http.0.0"], kinds=DEPTH_KINDS
    )
    symbol_records = split_by_symbol(records)["CTKUSDT"]
    snapshot = next(r for r in symbol_records if isinstance(r, DepthSnapshot))
    events = [r for r in symbol_records if isinstance(r, DepthUpdate)]
    ending_at_l = next(i for i, e in enumerate(events) if e.final_update_id == snapshot.last_update_id)
    received = events[ending_at_l + 1 :]
    assert received[0].first_update_id > snapshot.last_update_id == received[0].previous_final_update_id

    sync = book_sync(VENUE, "CTKUSDT")
    messages = replay(sync, [to_snapshot(snapshot), *(to_event(e) for e in received)])

    assert sync.gaps == 0 and sync.synced
    assert not any(isinstance(m, BookResyncStarted) for m in messages)
    expected = rebuild_book(records, "CTKUSDT")
    got = book_from(messages, "CTKUSDT")
    assert (got.last_update_id, got.bids, got.asks) == (expected.last_update_id, expected.bids, expected.asks)
    # state-builder, downstream, takes the same bridge.
    book = OrderBook("CTKUSDT")
    results = []
    for message in messages:
        if isinstance(message, BookSnapshot):
            book.apply_snapshot(message.last_update_id, message.bids, message.asks)
        elif isinstance(message, DepthDiff):
            results.append(
                book.apply_diff(
                    message.first_update_id,
                    message.final_update_id,
                    message.prev_final_update_id,
                    message.bids,
                    message.asks,
                )
            )
    assert results and set(results) == {DiffResult.APPLIED}


def test_on_event_when_usdm_first_event_neither_bridges_nor_chains_on_snapshot_then_gap() -> None:
    sync = book_sync(VENUE, "BTCUSDT")
    sync.on_snapshot(snap(10))
    out = sync.on_event(ev(12, 14, 11))  # U > L and pu != L: updates 11 are missing
    assert isinstance(out[0], BookResyncStarted) and out[0].reason == "first event does not bridge the snapshot"


# --------------------------------------------------------------------------- spot


SPOT = MarketKind.SPOT
SPOT_FILES = ("spot_btcusdt_20240808.gz", "spot_btcusdt_20240809.gz")


def spot_ev(first: int, final: int, bids=(), asks=()) -> DepthEvent:
    return DepthEvent("BTCUSDT", first, final, first - 1, 1, list(bids), list(asks))


@functools.cache
def load_spot(data_dir: Path) -> tuple:
    """Both spot days as one recording (the second file continues the first exactly)."""
    return tuple(read_recordings([data_dir / "binance" / name for name in SPOT_FILES], kinds=DEPTH_KINDS))


def spot_reference(items: list[DepthEvent | DepthSnapshotData], until: int | None = None) -> ReferenceBook:
    """Independent rebuild: the snapshot, then every event after it (`u > L`) up to `u == until`, no checks."""
    snapshot = next(i for i in items if isinstance(i, DepthSnapshotData))
    book = ReferenceBook("BTCUSDT", snapshot.last_update_id)
    book.apply(snapshot.bids, snapshot.asks)
    for item in items:
        if until is not None and isinstance(item, DepthEvent) and item.final_update_id > until:
            continue
        if isinstance(item, DepthEvent) and item.final_update_id > snapshot.last_update_id:
            book.apply(item.bids, item.asks)
            book.last_update_id = item.final_update_id
    return book


@pytest.fixture(scope="module")
def spot_items(data_dir: Path) -> list[DepthEvent | DepthSnapshotData]:
    return to_items(list(load_spot(data_dir)))


def test_replay_when_both_spot_days_then_synced_without_gap_and_book_matches_raw_rebuild(
    data_dir: Path, spot_items: list
) -> None:
    sync = book_sync("binance-spot", "BTCUSDT", market=SPOT)

    messages = replay(sync, spot_items)

    assert sync.synced and sync.gaps == 0
    expected = rebuild_book(list(load_spot(data_dir)), "BTCUSDT")
    got = book_from(messages)
    assert (got.last_update_id, got.bids, got.asks) == (expected.last_update_id, expected.bids, expected.asks)
    diffs = [m for m in messages if isinstance(m, DepthDiff)]
    assert len(diffs) > 6000
    # Spot ids are consecutive; the implied `pu` (U - 1) chains, so consumers keep one rule.
    assert all(b.first_update_id == a.final_update_id + 1 for a, b in itertools.pairwise(diffs))
    assert all(b.prev_final_update_id == a.final_update_id for a, b in itertools.pairwise(diffs))


def test_replay_when_cryptofeed_spot_then_every_symbol_bridges_with_spot_rules(data_dir: Path) -> None:
    folder = data_dir / "binance" / "cryptofeed"
    records = read_recordings([folder / "BINANCE.ws.1.0", folder / "BINANCE.http.0.0"], kinds=DEPTH_KINDS)
    grouped = split_by_symbol(records)
    assert sorted(grouped) == ["BLZETH", "LRCBTC", "NKNUSDT", "RUNEEUR"]
    for symbol, symbol_records in grouped.items():
        sync = book_sync("binance-spot", symbol, market=SPOT)
        messages = replay(sync, to_items(symbol_records))
        assert sync.synced and sync.gaps == 0, symbol
        expected = rebuild_book(records, symbol)
        got = book_from(messages, symbol)
        assert (got.last_update_id, got.bids, got.asks) == (expected.last_update_id, expected.bids, expected.asks)


def test_on_snapshot_when_spot_event_ends_at_l_then_dropped_and_next_bridges_at_l_plus_one() -> None:
    sync = book_sync("binance-spot", "BTCUSDT", market=SPOT)
    sync.on_event(spot_ev(5, 10, bids=[(Decimal(100), Decimal(9))]))  # u == L: already in the snapshot
    sync.on_event(spot_ev(11, 12))
    out = sync.on_snapshot(snap(10))
    diffs = [m for m in out if isinstance(m, DepthDiff)]
    assert [(d.first_update_id, d.final_update_id) for d in diffs] == [(11, 12)]
    assert sync.synced and sync.last_update_id == 12
    assert book_from(out).bids == {Decimal(100): Decimal(1)}


def test_on_snapshot_when_spot_event_straddles_l_plus_one_then_applied() -> None:
    sync = book_sync("binance-spot", "BTCUSDT", market=SPOT)
    sync.on_event(spot_ev(8, 13))
    out = sync.on_snapshot(snap(10))
    assert [m.final_update_id for m in out if isinstance(m, DepthDiff)] == [13]
    assert sync.synced


def test_on_event_when_spot_first_event_starts_after_l_plus_one_then_gap() -> None:
    sync = book_sync("binance-spot", "BTCUSDT", market=SPOT)
    sync.on_snapshot(snap(10))
    out = sync.on_event(spot_ev(12, 13))
    assert isinstance(out[0], BookResyncStarted) and out[0].reason == "first event does not bridge the snapshot"
    assert sync.wants_snapshot


def test_on_snapshot_when_no_event_time_then_injected_clock_stamps_it_and_nonce_names_the_session() -> None:
    sync = book_sync(VENUE, "BTCUSDT")
    first = sync.on_snapshot(snap(10))[0]
    sync.force_resync("test")
    second = sync.on_snapshot(snap(20))[0]
    assert isinstance(first, BookSnapshot) and isinstance(second, BookSnapshot)
    assert first.ts_event_ns == second.ts_event_ns == CLOCK.now
    assert (first.correlation_id, second.correlation_id) == ("0000feed-1-10", "0000feed-2-20")


def test_on_event_when_spot_u_is_not_previous_u_plus_one_then_gap_and_duplicates_dropped() -> None:
    sync = book_sync("binance-spot", "BTCUSDT", market=SPOT)
    sync.on_snapshot(snap(10))
    sync.on_event(spot_ev(11, 12))
    assert sync.on_event(spot_ev(11, 12)) == [] and sync.duplicates == 1
    out = sync.on_event(spot_ev(14, 15))  # 13 missing
    assert isinstance(out[0], BookResyncStarted)
    assert out[0].reason == "U is not the previous u + 1"
    assert (out[0].expected_prev_update_id, out[0].received_prev_update_id) == (12, 13)


def test_parse_depth_event_when_spot_payload_without_pu_then_implied_and_usdm_requires_pu() -> None:
    from services.market_data.frames import BadFrame, parse_depth_event

    payload = {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": 11, "u": 14, "b": [], "a": [["101", "1"]]}
    event = parse_depth_event(payload, SPOT)
    assert (event.first_update_id, event.final_update_id, event.prev_final_update_id) == (11, 14, 10)
    with pytest.raises(BadFrame):
        parse_depth_event(payload)


@pytest.fixture(scope="module")
def spot_window(spot_items: list) -> list:
    """The spot snapshot, the events buffered before it and 150 events after the bridge."""
    snapshot_index = next(i for i, item in enumerate(spot_items) if isinstance(item, DepthSnapshotData))
    return spot_items[: snapshot_index + 1 + 150]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(mutation, min_size=1, max_size=4), resnapshot_after=st.integers(min_value=0, max_value=5))
def test_replay_when_spot_events_dropped_duplicated_or_reordered_then_exact_book_or_gap_resynced_to_it(
    spot_window: list, mutations: list[tuple[str, int]], resnapshot_after: int
) -> None:
    expected = spot_reference(spot_window)
    mutated = mutate(spot_window, mutations)
    sync = book_sync("binance-spot", "BTCUSDT", market=SPOT)
    messages: list = []
    breaking: DepthEvent | None = None
    for item in mutated:
        out = sync.on_snapshot(item) if isinstance(item, DepthSnapshotData) else sync.on_event(item)
        messages.extend(out)
        if any(isinstance(m, BookResyncStarted) for m in out):
            assert isinstance(item, DepthEvent)
            breaking = item
            break
    if breaking is None:
        # Not detected: then the book must be exactly the recording's.
        got = book_from(messages)
        assert sync.synced
        assert (got.last_update_id, got.bids, got.asks) == (expected.last_update_id, expected.bids, expected.asks)
        return
    # Detected: a later REST snapshot (the true book a few events on) and the rest of the
    # (unmutated) stream rebuild exactly the recording's book.
    assert sync.wants_snapshot and sync.gaps == 1
    events = [i for i in spot_window if isinstance(i, DepthEvent)]
    at = min(next(k for k, e in enumerate(events) if e.final_update_id >= breaking.final_update_id) + resnapshot_after,
             len(events) - 2)  # fmt: skip
    truth = spot_reference(spot_window, until=events[at].final_update_id)
    later = DepthSnapshotData(truth.last_update_id, list(truth.bids.items()), list(truth.asks.items()))
    messages.extend(sync.on_snapshot(later))
    for event in events[at + 1 :]:
        messages.extend(sync.on_event(event))
    got = book_from(messages)
    assert sync.synced and sync.gaps == 1
    assert (got.last_update_id, got.bids, got.asks) == (expected.last_update_id, expected.bids, expected.asks)


# --------------------------------------------------------------------------- spot service with fakes


def make_spot_service(rest: object):
    from libs.logging import get_logger
    from services.market_data.handlers import MarketDataService

    published: list[tuple[str, object, str | None]] = []

    async def publish(subject: str, message: object, msg_id: str | None) -> int:
        published.append((subject, message, msg_id))
        return len(published)

    async def kv_put(key: str, value: bytes) -> int:
        return 1

    service = MarketDataService(
        venue="binance-spot",
        symbols=("BTCUSDT",),
        publish=publish,  # type: ignore[arg-type]
        kv_put=kv_put,
        rest=rest,  # type: ignore[arg-type]
        open_stream=lambda url: None,  # type: ignore[arg-type,return-value]
        log=get_logger("test"),
        clock=CLOCK,
        new_id=lambda: "0000feed" * 4,
        market=SPOT,
    )
    return service, published


class FakeSpotRest(FakeRest):
    def __init__(self, snapshot: dict) -> None:
        super().__init__(snapshot)
        self.calls: list[str] = []

    async def open_interest(self, symbol: str) -> dict:
        self.calls.append("open_interest")
        return await super().open_interest(symbol)

    async def premium_index(self, symbol: str) -> dict:
        self.calls.append("premium_index")
        raise AssertionError("spot has no premium index")

    async def historical_trades(self, symbol: str, *, from_id: int, limit: int = 500) -> list[dict]:
        self.calls.append(f"historical_trades:{from_id}:{limit}")
        return [
            {"id": i, "price": "100.0", "qty": "0.1", "time": 5, "isBuyerMaker": False}
            for i in range(from_id, from_id + limit)
        ]


def spot_frame(stream: str, data: dict) -> object:
    from libs.binance.stream import parse_frame

    return parse_frame(msgspec.json.encode({"stream": stream, "data": data}).decode())


async def test_handle_frame_when_spot_depth_and_trades_then_spot_procedure_backfill_and_no_mark_or_oi() -> None:
    rest = FakeSpotRest({"lastUpdateId": 10, "bids": [["100.0", "1"]], "asks": [["101.0", "2"]]})
    service, published = make_spot_service(rest)
    service.links.connected = True
    depth = {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "b": [["100.0", "3"]], "a": []}
    await service.handle_frame(spot_frame("btcusdt@depth@100ms", depth | {"U": 9, "u": 10}))  # u == L: dropped
    await asyncio.sleep(0.05)
    await service.handle_frame(spot_frame("btcusdt@depth@100ms", depth | {"U": 11, "u": 12}))
    trade = {"e": "trade", "E": 2, "s": "BTCUSDT", "p": "100.5", "q": "0.2", "T": 2, "m": True, "M": True}
    await service.handle_frame(spot_frame("btcusdt@trade", trade | {"t": 500}))
    await service.handle_frame(spot_frame("btcusdt@trade", trade | {"t": 503}))  # 501, 502 missing: backfill
    await asyncio.sleep(0.05)
    await service.poll_open_interest_forever(0.01)  # returns at once: spot has no open interest

    assert service.bad_frames == 0
    book = [(subject, message) for subject, message, _ in published if subject.startswith(("md.snapshot", "md.depth"))]
    assert [subject for subject, _ in book] == ["md.snapshot.binance-spot.BTCUSDT", "md.depth.binance-spot.BTCUSDT"]
    diff = book[1][1]
    assert isinstance(diff, DepthDiff) and (diff.first_update_id, diff.prev_final_update_id) == (11, 10)
    trade_ids = [message.trade_id for subject, message, _ in published if subject.startswith("md.trade.")]  # type: ignore[attr-defined]
    assert sorted(trade_ids) == [500, 501, 502, 503]
    assert rest.calls == ["historical_trades:501:2"]
    assert service.details()["market"] == "spot"
    await service.close()
