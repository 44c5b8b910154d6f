"""Recording parser and the reference book rebuild, against the real recordings in data/binance."""

from __future__ import annotations

import gzip
from decimal import Decimal
from pathlib import Path

import pytest

from libs.recordings import (
    RECORDINGS_DIR,
    DepthSnapshot,
    DepthUpdate,
    MarkPrice,
    SequenceGapError,
    Trade,
    iter_book_states,
    parse_line,
    read_recording,
    read_recordings,
    rebuild_book,
    receive_time_ns,
    split_by_symbol,
)

DATA = RECORDINGS_DIR


def test_receive_time_when_units_differ_then_all_become_ns() -> None:
    assert receive_time_ns("1723161255030314667") == 1723161255030314667
    assert receive_time_ns("1680652700423575") == 1680652700423575000
    assert receive_time_ns("1626992741.06217") == 1626992741062170000


def test_parse_line_when_each_format_then_typed_records() -> None:
    depth = parse_line(
        '1723161255030314667 {"stream":"btcusdt@depth@0ms","data":{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSDT",'
        '"U":5,"u":9,"pu":4,"b":[["100.10","0.000"]],"a":[["100.20","1.5"]]}}'
    )
    assert isinstance(depth, DepthUpdate) and depth.final_update_id == 9 and depth.bids[0][1] == 0
    snapshot = parse_line(
        "https://fapi.binance.com/fapi/v1/depth?symbol=SUSHIUSDT&limit=1000 -> 1626992741.301402: "
        '{"lastUpdateId":7,"E":1,"T":1,"bids":[["7.61","6"]],"asks":[]}'
    )
    assert isinstance(snapshot, DepthSnapshot) and snapshot.symbol == "SUSHIUSDT"
    aggregate = parse_line(
        '1626992741.5: {"stream":"x@aggTrade","data":{"e":"aggTrade","E":1,"a":3,"s":"X","p":"1.5","q":"2",'
        '"f":10,"l":12,"T":1,"m":true}}'
    )
    assert isinstance(aggregate, Trade) and aggregate.aggregated and aggregate.last_trade_id == 12
    assert parse_line("wss://fstream.binance.com/stream?streams=a@depth <-> 1626992740.179554") is None


def test_read_2024_recording_when_parsed_then_counts_match_the_readme() -> None:
    records = list(read_recording(DATA / "usdm_btcusdt_20240808.gz", kinds={"DepthUpdate", "DepthSnapshot"}))
    assert sum(isinstance(r, DepthUpdate) for r in records) == 6551
    assert sum(isinstance(r, DepthSnapshot) for r in records) == 1
    assert all(r.symbol == "BTCUSDT" for r in records)


def test_rebuild_when_2023_days_joined_then_chains_across_files_with_marks() -> None:
    records = read_recordings(
        [DATA / "usdm_btcusdt_20230404.gz", DATA / "usdm_btcusdt_20230405.gz"],
        kinds={"DepthUpdate", "DepthSnapshot", "MarkPrice"},
    )
    assert sum(isinstance(r, MarkPrice) for r in records) == 514
    book = rebuild_book(records)
    bids, asks = book.top(1)
    assert bids[0][0] < asks[0][0], "the rebuilt book is never crossed"


def test_rebuild_at_update_id_when_asked_then_state_right_after_that_event() -> None:
    records = list(read_recording(DATA / "usdm_ethusdt_20240808.gz", kinds={"DepthUpdate", "DepthSnapshot"}))
    states = []
    for state in iter_book_states(records):
        states.append(state.last_update_id)
        if len(states) == 100:
            expected = state.copy()
            break
    assert rebuild_book(records, update_id=expected.last_update_id) == expected
    with pytest.raises(KeyError):
        rebuild_book(records, update_id=expected.last_update_id + 1)


def test_rebuild_when_cryptofeed_ws_and_http_then_each_symbol_bridges_its_snapshot() -> None:
    records = read_recordings(
        [DATA / "cryptofeed" / "BINANCE_FUTURES.ws.1.0", DATA / "cryptofeed" / "BINANCE_FUTURES.http.0.0"]
    )
    grouped = split_by_symbol(records)
    assert set(grouped) == {"SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT"}
    for symbol, symbol_records in grouped.items():
        book = rebuild_book(symbol_records)
        assert book.symbol == symbol and book.bids and book.asks


def test_rebuild_when_pu_breaks_then_sequence_gap(tmp_path: Path) -> None:
    lines = [
        '1 {"lastUpdateId": 10, "bids": [["1.0", "1"]], "asks": [["2.0", "1"]]}',
        '2 {"stream":"x@depth","data":{"e":"depthUpdate","E":1,"T":1,"s":"XUSDT","U":8,"u":12,"pu":7,'
        '"b":[["1.0","2"]],"a":[]}}',
        '3 {"stream":"x@depth","data":{"e":"depthUpdate","E":1,"T":1,"s":"XUSDT","U":14,"u":15,"pu":13,"b":[],"a":[]}}',
    ]
    path = tmp_path / "rec_xusdt_1.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    records = list(read_recording(path))
    assert rebuild_book(records[:2]).bids == {Decimal("1.0"): Decimal("2")}
    with pytest.raises(SequenceGapError):
        rebuild_book(records)


def test_read_spot_days_when_joined_then_spot_events_chain_across_files_and_rebuild() -> None:
    records = read_recordings(
        [DATA / "spot_btcusdt_20240808.gz", DATA / "spot_btcusdt_20240809.gz"],
        kinds={"DepthUpdate", "DepthSnapshot", "Trade"},
    )
    depth = [r for r in records if isinstance(r, DepthUpdate)]
    assert len(depth) == 6495 and {r.market for r in depth} == {"spot"}
    assert all(r.previous_final_update_id == r.first_update_id - 1 for r in depth)
    trades = [r for r in records if isinstance(r, Trade)]
    assert trades and not trades[0].aggregated and trades[0].kind == "MARKET"
    states = [state.last_update_id for state in iter_book_states(records, "BTCUSDT")]
    assert states[0] == 50093239218 and len(states) == 1 + 6495 - 2  # snapshot; 2 events end before it
    book = rebuild_book(records, "BTCUSDT")
    assert book.last_update_id == depth[-1].final_update_id
    assert max(book.bids) < min(book.asks)


def _write(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def test_rebuild_when_spot_then_u_equal_l_dropped_bridge_at_l_plus_one_and_break_detected(tmp_path: Path) -> None:
    def spot(first: int, final: int, bid_qty: str) -> str:
        return (
            f'{first} {{"stream":"x@depth@100ms","data":{{"e":"depthUpdate","E":1,"s":"XUSDT","U":{first},'
            f'"u":{final},"b":[["1.0","{bid_qty}"]],"a":[]}}}}'
        )

    lines = [
        spot(8, 10, "9"),  # u == L: already in the snapshot, dropped
        '11 {"lastUpdateId": 10, "bids": [["1.0", "1"]], "asks": [["2.0", "1"]]}',
        spot(11, 12, "2"),  # U == L + 1: the bridge
        spot(13, 13, "3"),
        spot(15, 16, "4"),  # 14 missing
    ]
    records = list(read_recording(_write(tmp_path / "rec_xusdt_1.gz", lines)))
    assert all(r.market == "spot" for r in records if isinstance(r, DepthUpdate))
    assert [s.last_update_id for s in iter_book_states(records[:4])] == [10, 12, 13]
    assert rebuild_book(records[:4]).bids == {Decimal("1.0"): Decimal("3")}
    with pytest.raises(SequenceGapError):
        rebuild_book(records)
