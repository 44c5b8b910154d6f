"""The make-before-break handover's bookkeeping (pure): where each stream stands on the old
connection, when the new one joins it, and which of its buffered frames the old one delivered."""

from __future__ import annotations

from libs.binance.stream import StreamFrame
from services.market_data.handover import StreamPositions, already_delivered, position


def depth(u: int, pu: int, symbol: str = "btcusdt") -> StreamFrame:
    return StreamFrame(f"{symbol}@depth@100ms", {"e": "depthUpdate", "U": pu + 1, "u": u, "pu": pu, "E": u}, "")


def trade(a: int) -> StreamFrame:
    return StreamFrame("btcusdt@aggTrade", {"e": "aggTrade", "a": a, "E": a}, "")


def mark(e: int) -> StreamFrame:
    return StreamFrame("btcusdt@markPrice@1s", {"e": "markPriceUpdate", "E": e}, "")


def test_position_when_depth_trade_spot_or_other_then_the_id_it_follows_and_its_own() -> None:
    assert position(depth(20, 10)) == (10, 20)
    assert position(StreamFrame("btcusdt@depth@100ms", {"U": 11, "u": 20}, "")) == (10, 20)  # spot: U - 1
    assert position(trade(7)) == (6, 7)
    assert position(StreamFrame("btcusdt@trade", {"t": 9}, "")) == (8, 9)
    assert position(mark(1_000)) == (1_000, 1_000)
    assert position(StreamFrame(None, None, "garbage", "invalid JSON")) is None
    assert position(StreamFrame("btcusdt@aggTrade", {"a": "x"}, "")) is None


def test_joined_when_new_connection_starts_after_the_old_ones_last_then_not_until_old_catches_up() -> None:
    old, new = StreamPositions(), StreamPositions()
    for frame in (depth(20, 10), trade(7), mark(5)):
        old.delivered(frame)
    new.buffered(depth(40, 30))  # the new connection starts later: 21..30 only on the old one so far
    new.buffered(trade(8))
    assert not new.joined(old)
    old.delivered(depth(30, 20))
    assert new.joined(old)  # marks need no join: they carry no sequence


def test_joined_when_a_sequenced_stream_has_no_frame_yet_on_the_new_connection_then_not() -> None:
    old, new = StreamPositions(), StreamPositions()
    old.delivered(depth(20, 10))
    old.delivered(trade(7))
    new.buffered(depth(20, 10))
    assert not new.joined(old)  # trades could be missing
    new.buffered(trade(5))
    assert new.joined(old)


def test_already_delivered_when_buffered_frame_at_or_before_old_position_then_dropped_else_kept() -> None:
    old = StreamPositions()
    old.delivered(depth(20, 10))
    old.delivered(trade(7))
    assert already_delivered(depth(20, 10), old) and already_delivered(depth(15, 10), old)
    assert not already_delivered(depth(30, 20), old)
    assert already_delivered(trade(7), old) and not already_delivered(trade(8), old)
    assert not already_delivered(depth(5, 1, symbol="ethusdt"), old)  # a stream the old one never delivered
