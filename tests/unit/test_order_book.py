"""state-builder's OrderBook: levels, reads and its own chain check, incl. on a real recording."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from libs.recordings import DepthSnapshot, DepthUpdate, read_recording, rebuild_book
from services.state_builder.domain import BookState, DiffResult, OrderBook

D = Decimal


def lv(*pairs: tuple[str, str]) -> list[tuple[Decimal, Decimal]]:
    return [(D(p), D(q)) for p, q in pairs]


def synced_book() -> OrderBook:
    book = OrderBook("BTCUSDT")
    book.apply_snapshot(10, lv(("100", "1"), ("99", "2"), ("98", "3")), lv(("101", "1"), ("102", "2")))
    assert book.apply_diff(9, 11, 8, [], []) == DiffResult.APPLIED
    return book


def test_top_when_read_then_bids_descending_asks_ascending_and_depth_limited() -> None:
    book = synced_book()
    bids, asks = book.top(2)
    assert bids == lv(("100", "1"), ("99", "2"))
    assert asks == lv(("101", "1"), ("102", "2"))
    assert book.best_bid() == D("100") and book.best_ask() == D("101")


def test_apply_diff_when_quantity_zero_then_level_removed_and_others_set() -> None:
    book = synced_book()
    assert book.apply_diff(12, 13, 11, lv(("100", "0"), ("99.5", "4")), lv(("101", "0.5"))) == DiffResult.APPLIED
    bids, asks = book.top(10)
    assert bids == lv(("99.5", "4"), ("99", "2"), ("98", "3"))
    assert asks == lv(("101", "0.5"), ("102", "2"))
    assert book.last_update_id == 13


def test_apply_diff_when_prev_does_not_match_then_gap_and_unusable_until_snapshot() -> None:
    book = synced_book()
    assert book.apply_diff(13, 14, 12, [], []) == DiffResult.GAP
    assert book.state == BookState.EMPTY and not book.usable
    assert book.apply_diff(15, 16, 14, [], []) == DiffResult.IGNORED
    book.apply_snapshot(20, lv(("100", "1")), lv(("101", "1")))
    assert book.apply_diff(20, 21, 19, [], []) == DiffResult.APPLIED


def test_apply_diff_when_first_after_snapshot_then_must_bridge_last_update_id() -> None:
    book = OrderBook("BTCUSDT")
    book.apply_snapshot(10, [], [])
    assert book.apply_diff(5, 9, 4, [], []) == DiffResult.IGNORED  # older than the snapshot
    assert book.apply_diff(5, 10, 4, [], []) == DiffResult.APPLIED  # u == L bridges

    other = OrderBook("BTCUSDT")
    other.apply_snapshot(10, [], [])
    assert other.apply_diff(12, 13, 11, [], []) == DiffResult.GAP  # neither bridges L (U > L+1, pu != L): too old


def test_apply_diff_when_redelivered_then_ignored_without_changing_the_book() -> None:
    book = synced_book()
    book.apply_diff(12, 13, 11, lv(("100", "7")), [])
    assert book.apply_diff(12, 13, 11, lv(("100", "0")), []) == DiffResult.IGNORED
    assert book.bids[D("100")] == D("7")


def test_apply_snapshot_when_zero_quantities_then_not_stored() -> None:
    book = OrderBook("BTCUSDT")
    book.apply_snapshot(1, lv(("100", "0"), ("99", "1")), [])
    assert book.top(5) == (lv(("99", "1")), [])
    assert book.best_ask() is None


def test_apply_when_real_recording_then_equals_reference_rebuild(data_dir: Path) -> None:
    path = data_dir / "binance" / "usdm_btcusdt_20230404.gz"
    records = list(read_recording(path, kinds={"DepthSnapshot", "DepthUpdate"}))
    snapshot = next(r for r in records if isinstance(r, DepthSnapshot))
    book = OrderBook("BTCUSDT")
    book.apply_snapshot(snapshot.last_update_id, snapshot.bids, snapshot.asks)
    for record in records:
        if isinstance(record, DepthUpdate):
            result = book.apply_diff(
                record.first_update_id,
                record.final_update_id,
                record.previous_final_update_id,
                record.bids,
                record.asks,
            )
            assert result != DiffResult.GAP
    expected = rebuild_book(records)
    assert book.last_update_id == expected.last_update_id
    assert book.top(50) == expected.top(50)
    assert book.bids == expected.bids and book.asks == expected.asks
