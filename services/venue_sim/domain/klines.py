"""Candlesticks of the simulated market (`GET /fapi/v1/klines`): every market trade is folded into
one-minute candles as it happens; longer intervals are built from those on request, the way Binance
answers: one row per interval from the first traded minute on, quiet intervals carried at the last
close with zero volume."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal

from services.venue_sim.domain.rules import BinanceError

MINUTE_MS = 60_000
INTERVALS_MS: dict[str, int] = {
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": 60 * MINUTE_MS,
    "2h": 120 * MINUTE_MS,
    "4h": 240 * MINUTE_MS,
    "6h": 360 * MINUTE_MS,
    "8h": 480 * MINUTE_MS,
    "12h": 720 * MINUTE_MS,
    "1d": 1440 * MINUTE_MS,
    "3d": 3 * 1440 * MINUTE_MS,
    "1w": 7 * 1440 * MINUTE_MS,
}
"""Binance's USD-M intervals (the calendar month `1M` is not simulated)."""
WEEK_OFFSET_MS = 4 * 1440 * MINUTE_MS
"""Binance's weekly candles open on Monday; the epoch was a Thursday."""
KEEP_MINUTES = 10_080
"""One week of one-minute candles per symbol."""
ZERO = Decimal(0)


@dataclass
class Candle:
    """One interval's trading: OHLC, volumes and the number of trades."""

    open_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal = ZERO
    quote_volume: Decimal = ZERO
    trades: int = 0
    taker_buy_volume: Decimal = ZERO
    taker_buy_quote: Decimal = ZERO

    def add(self, price: Decimal, quantity: Decimal, taker_buy: bool) -> None:
        """Fold one trade in."""
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.close = price
        self.volume += quantity
        self.quote_volume += price * quantity
        self.trades += 1
        if taker_buy:
            self.taker_buy_volume += quantity
            self.taker_buy_quote += price * quantity

    def merge(self, other: Candle) -> None:
        """Fold a later candle of the same interval in."""
        self.high = max(self.high, other.high)
        self.low = min(self.low, other.low)
        self.close = other.close
        self.volume += other.volume
        self.quote_volume += other.quote_volume
        self.trades += other.trades
        self.taker_buy_volume += other.taker_buy_volume
        self.taker_buy_quote += other.taker_buy_quote

    def row(self, interval_ms: int) -> list[object]:
        """Binance's kline row."""
        return [
            self.open_ms,
            str(self.open),
            str(self.high),
            str(self.low),
            str(self.close),
            str(self.volume),
            self.open_ms + interval_ms - 1,
            str(self.quote_volume),
            self.trades,
            str(self.taker_buy_volume),
            str(self.taker_buy_quote),
            "0",
        ]


def kline_frame(symbol: str, interval: str, row: list[object], now_ms: int, *, closed: bool) -> dict[str, object]:
    """The `<symbol>@kline_<interval>` stream event of one candle row."""
    return {
        "e": "kline",
        "E": now_ms,
        "s": symbol,
        "k": {
            "t": row[0],
            "T": row[6],
            "s": symbol,
            "i": interval,
            "f": -1,
            "L": -1,
            "o": row[1],
            "c": row[4],
            "h": row[2],
            "l": row[3],
            "v": row[5],
            "n": row[8],
            "x": closed,
            "q": row[7],
            "V": row[9],
            "Q": row[10],
            "B": "0",
        },
    }


def interval_start(time_ms: int, interval_ms: int) -> int:
    """The open time of the interval holding `time_ms`."""
    offset = WEEK_OFFSET_MS if interval_ms == INTERVALS_MS["1w"] else 0
    return (time_ms + offset) // interval_ms * interval_ms - offset


class KlineRecorder:
    """One-minute candles per symbol, folded from the trades as they happen."""

    def __init__(self, keep_minutes: int = KEEP_MINUTES) -> None:
        self.keep_minutes = keep_minutes
        self._minutes: dict[str, OrderedDict[int, Candle]] = {}

    def on_trade(self, symbol: str, time_ms: int, price: Decimal, quantity: Decimal, taker_buy: bool) -> None:
        """Record one market trade."""
        minutes = self._minutes.setdefault(symbol, OrderedDict())
        start = interval_start(time_ms, MINUTE_MS)
        candle = minutes.get(start)
        if candle is None:
            candle = minutes[start] = Candle(start, price, price, price, price)
            while len(minutes) > self.keep_minutes:
                minutes.popitem(last=False)
        candle.add(price, quantity, taker_buy)

    def rolling(self, symbol: str, now_ms: int, window_ms: int = 1440 * MINUTE_MS) -> Candle | None:
        """The trading of the minutes within `window_ms` before now, as one candle (None: no trade)."""
        since = interval_start(now_ms - window_ms, MINUTE_MS) + MINUTE_MS
        total: Candle | None = None
        for start, minute in self._minutes.get(symbol, {}).items():
            if start < since:
                continue
            if total is None:
                total = Candle(start, minute.open, minute.open, minute.open, minute.open)
            total.merge(minute)
        return total

    def klines(
        self, symbol: str, interval: str, now_ms: int, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[list[object]]:
        """Binance's rows for an interval: from `start_ms` (else the newest `limit`) up to `end_ms` or now.

        Raises:
            BinanceError: -1120 for an interval Binance does not know or the simulator does not keep.
        """
        interval_ms = INTERVALS_MS.get(interval)
        if interval_ms is None:
            raise BinanceError(400, -1120, "Invalid interval.")
        minutes = self._minutes.get(symbol)
        if not minutes:
            return []
        buckets: dict[int, Candle] = {}
        for start, minute in minutes.items():
            bucket = interval_start(start, interval_ms)
            candle = buckets.get(bucket)
            if candle is None:
                buckets[bucket] = Candle(bucket, minute.open, minute.open, minute.open, minute.open)
                candle = buckets[bucket]
            candle.merge(minute)
        # Only the `limit` intervals asked for are built, however long the market was quiet.
        last = max(interval_start(now_ms, interval_ms), max(buckets))
        if end_ms is not None:
            last = min(last, interval_start(end_ms, interval_ms))
        if start_ms is not None:
            begin = max(min(buckets), interval_start(start_ms, interval_ms))
            last = min(last, begin + (limit - 1) * interval_ms)
        else:
            begin = max(min(buckets), last - (limit - 1) * interval_ms)
        earlier = [open_ms for open_ms in buckets if open_ms < begin]
        previous = buckets[max(earlier)] if earlier else None
        rows: list[list[object]] = []
        for open_ms in range(begin, last + 1, interval_ms):
            candle = buckets.get(open_ms)
            if candle is None:
                assert previous is not None  # the first bucket always traded
                candle = Candle(open_ms, previous.close, previous.close, previous.close, previous.close)
            previous = candle
            rows.append(candle.row(interval_ms))
        return rows
