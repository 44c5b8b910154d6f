"""Candles (REST and the kline stream), leverage brackets and leverage of the simulated venue (no sockets)."""

from __future__ import annotations

from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest

from libs.clock import ManualClock
from libs.recordings import USDM
from services.venue_sim.domain import BinanceError, Exchange, OrderBook, spec_for
from services.venue_sim.domain.brackets import BRACKETS, max_notional, parse_leverage
from services.venue_sim.domain.klines import KlineRecorder
from services.venue_sim.domain.market_events import TradeEvent
from services.venue_sim.market import MarketFeed

T0 = 1_700_000_040_000  # 2023-11-14 22:14:00 UTC, a minute boundary


def test_klines_when_trades_in_two_minutes_then_ohlc_volume_and_quiet_minute_carried() -> None:
    recorder = KlineRecorder()
    recorder.on_trade("BTCUSDT", T0 + 1_000, Decimal("100"), Decimal("1"), taker_buy=True)
    recorder.on_trade("BTCUSDT", T0 + 2_000, Decimal("105"), Decimal("2"), taker_buy=False)
    recorder.on_trade("BTCUSDT", T0 + 3_000, Decimal("99"), Decimal("1"), taker_buy=True)
    recorder.on_trade("BTCUSDT", T0 + 120_500, Decimal("101"), Decimal("1"), taker_buy=True)

    rows = recorder.klines("BTCUSDT", "1m", T0 + 130_000, None, None, 500)

    assert [row[0] for row in rows] == [T0, T0 + 60_000, T0 + 120_000]
    assert rows[0][1:6] == ["100", "105", "99", "99", "4"]
    assert rows[0][6] == T0 + 59_999 and rows[0][8] == 3 and rows[0][9] == "2"
    assert rows[1][1:6] == ["99", "99", "99", "99", "0"]  # no trade: carried at the last close
    assert rows[2][1:5] == ["101", "101", "101", "101"]


def test_klines_when_longer_interval_or_limit_then_aggregated_and_newest_kept() -> None:
    recorder = KlineRecorder()
    for minute in range(6):
        recorder.on_trade("ETHUSDT", T0 + minute * 60_000, Decimal(10 + minute), Decimal("1"), taker_buy=True)

    five = recorder.klines("ETHUSDT", "5m", T0 + 6 * 60_000, None, None, 500)
    # T0 is the 5th minute of its 5-minute interval: one trade there, five in the next, and the
    # interval now running has none yet.
    assert [(row[0], row[5], row[1], row[4]) for row in five] == [
        (T0 - 240_000, "1", "10", "10"),
        (T0 + 60_000, "5", "11", "15"),
        (T0 + 360_000, "0", "15", "15"),
    ]
    newest = recorder.klines("ETHUSDT", "1m", T0 + 6 * 60_000, None, None, 2)
    assert [row[0] for row in newest] == [T0 + 5 * 60_000, T0 + 6 * 60_000]
    assert recorder.klines("ETHUSDT", "1m", T0 + 6 * 60_000, T0 + 60_000, None, 2)[0][0] == T0 + 60_000
    with pytest.raises(BinanceError) as bad:
        recorder.klines("ETHUSDT", "7m", T0, None, None, 5)
    assert bad.value.code == -1120


def test_brackets_when_built_then_cum_continuous_and_leverage_limits_notional() -> None:
    for lower, upper in pairwise(BRACKETS):
        floor = Decimal(upper.notional_floor)
        # The maintenance margin is continuous at every tier boundary.
        assert floor * lower.maint_margin_ratio - lower.cum == floor * upper.maint_margin_ratio - upper.cum
    assert max_notional(125) == 50_000 and max_notional(20) == 100_000_000 and max_notional(1) == 1_800_000_000
    assert parse_leverage("7") == 7
    for raw, code in (("0", -4028), ("126", -4028), ("x", -1100), ("", -1102)):
        with pytest.raises(BinanceError) as refused:
            parse_leverage(raw)
        assert refused.value.code == code


def test_rolling_day_when_trades_older_than_24h_then_left_out() -> None:
    recorder = KlineRecorder()
    recorder.on_trade("BTCUSDT", T0, Decimal("90"), Decimal("5"), taker_buy=True)
    recorder.on_trade("BTCUSDT", T0 + 86_400_000, Decimal("100"), Decimal("1"), taker_buy=True)
    recorder.on_trade("BTCUSDT", T0 + 86_460_000, Decimal("110"), Decimal("2"), taker_buy=False)
    day = recorder.rolling("BTCUSDT", T0 + 86_470_000)
    assert day is not None
    assert (day.open, day.high, day.low, day.close, day.volume, day.trades) == (
        Decimal("100"),
        Decimal("110"),
        Decimal("100"),
        Decimal("110"),
        Decimal("3"),
        2,
    )
    assert recorder.rolling("ETHUSDT", T0) is None


class _RecordingHub:
    """Stands in for the stream hub: one client listens to the BTCUSDT 1m candles."""

    def __init__(self) -> None:
        self.subscribers: dict[str, set[object]] = {"btcusdt@kline_1m": {object()}}
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def publish(self, stream: str, symbol: str, channel: str, data: dict[str, Any]) -> None:
        self.sent.append((stream, data))


def test_kline_stream_when_minute_ends_then_final_candle_before_the_new_one() -> None:
    clock = ManualClock(T0 * 1_000_000)
    book = OrderBook("BTCUSDT")
    exchange = Exchange(clock, {"BTCUSDT": spec_for("BTCUSDT")}, {"BTCUSDT": book})
    hub = _RecordingHub()
    feed = MarketFeed({"BTCUSDT": book}, exchange, hub, clock, USDM, {"BTCUSDT": Decimal(1)})  # type: ignore[arg-type]
    feed.on_trade(TradeEvent("BTCUSDT", 1, Decimal("100"), Decimal("1"), buyer_is_maker=False))
    feed.publish_klines()
    clock.advance(60)
    feed.on_trade(TradeEvent("BTCUSDT", 2, Decimal("101"), Decimal("2"), buyer_is_maker=True))
    feed.publish_klines()
    candles = [(data["k"]["t"], data["k"]["c"], data["k"]["x"]) for stream, data in hub.sent if "@kline_" in stream]
    assert candles == [(T0, "100", False), (T0, "100", True), (T0 + 60_000, "101", False)]


def test_klines_when_market_quiet_for_a_year_then_only_the_rows_asked_for_are_built() -> None:
    recorder = KlineRecorder()
    recorder.on_trade("BTCUSDT", T0, Decimal("100"), Decimal("1"), taker_buy=True)
    year_later = T0 + 365 * 86_400_000
    rows = recorder.klines("BTCUSDT", "1m", year_later, None, None, 3)
    assert [row[0] for row in rows] == [year_later - 120_000, year_later - 60_000, year_later]
    assert all(row[4] == "100" and row[5] == "0" for row in rows)
    first = recorder.klines("BTCUSDT", "1m", year_later, T0, None, 2)
    assert [row[0] for row in first] == [T0, T0 + 60_000] and first[0][5] == "1"
