"""Frame normalisation: Binance stream payloads and REST answers → typed events and messages.

Pure: every parser either returns a value or raises `BadFrame` (SPEC FM-D4: a malformed frame is
counted and skipped, never fatal). `MarketKind` names the market whose shapes apply (USD-M or spot).

Every value is bounded before it goes further (issue 15): decimals are finite, of at most
`MAX_DIGITS` significant digits and an exponent within `MAX_ADJUSTED_EXPONENT` (so `1e1000000` or
`1e-20000` never reach the books, the bus or Postgres), ids fit a signed 64-bit column, times in ms
fit integer ns, symbols are short upper-case alphanumerics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from proto.enums import Side
from proto.messages import Level, Liquidation, MarkPrice, OpenInterest, Trade

_MS = 1_000_000
INT64_MAX = 2**63 - 1
MAX_TIME_MS = INT64_MAX // _MS
"""The largest time in ms whose ns still fits a signed 64-bit integer (year 2262)."""
MAX_DIGITS = 40
MAX_ADJUSTED_EXPONENT = 30
"""Decimals between 1e-30 and 1e30 in magnitude (or zero): far beyond any price or quantity."""
MAX_NUMBER_TEXT = 64
MAX_SYMBOL_CHARS = 32
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?|-?\.[0-9]+([eE][-+]?[0-9]+)?")
"""What the venue writes: no spaces, underscores, NaN or Infinity (which `Decimal()` would take)."""


class BadFrame(ValueError):
    """A stream frame or REST answer that does not have the expected shape."""


_ZERO = Decimal(0)
SHORT_PLAIN_CHARS = 31
"""A plain decimal string (ASCII digits and at most one point, no sign or exponent) this short has at
most 30 digits and an adjusted exponent within +-30: inside `MAX_DIGITS` and `MAX_ADJUSTED_EXPONENT`
by its length alone, so its bounds are proved without looking at the value's digits."""


def _short_plain(text: str) -> bool:
    """Whether `text` is a short plain decimal (see `SHORT_PLAIN_CHARS`): what the venue sends for
    nearly every price and quantity, checked with three C-level string calls instead of a regex."""
    return len(text) <= SHORT_PLAIN_CHARS and text.isascii() and text.replace(".", "", 1).isdigit()


def bounded_decimal(raw: Any, what: str) -> Decimal:
    """A decimal from a venue value (a string or a JSON number), within the bounds above.

    Raises:
        BadFrame: not a decimal, not finite, too long, too many digits or an exponent out of range.
    """
    if type(raw) is str and _short_plain(raw):
        # The common case, bounded by its length (`SHORT_PLAIN_CHARS`); zero without its exponent.
        return Decimal(raw) or _ZERO
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise BadFrame(f"{what} is not a decimal")
    text = str(raw)
    if len(text) > MAX_NUMBER_TEXT:
        raise BadFrame(f"{what} is too long ({len(text)} characters)")
    if not _DECIMAL_TEXT.fullmatch(text):
        raise BadFrame(f"{what} is not a decimal")
    try:
        value = Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only decimals
        raise BadFrame(f"{what} is not a decimal") from exc
    if not value:
        return Decimal(0)  # 0E-1000000 is zero; keep no exponent of it
    if len(value.as_tuple().digits) > MAX_DIGITS or abs(value.adjusted()) > MAX_ADJUSTED_EXPONENT:
        raise BadFrame(f"{what} is out of range")
    return value


def _symbol(data: dict[str, Any], key: str = "s") -> str:
    """The upper-case symbol of a payload ("" when it names none)."""
    raw = data.get(key, "")
    if not isinstance(raw, str) or len(raw) > MAX_SYMBOL_CHARS or not (raw.isascii() and (raw.isalnum() or not raw)):
        raise BadFrame(f"field {key!r} is not a symbol")
    return raw.upper()


def parse_levels(raw: Any) -> list[Level]:
    """`[["price", "qty"], ...]` → Decimal pairs.

    Raises:
        BadFrame: not a list of [price, qty] pairs of decimal strings, or a negative value.
    """
    if not isinstance(raw, list):
        raise BadFrame("levels are not a list")
    levels: list[Level] = []
    for entry in raw:
        if not isinstance(entry, list | tuple) or len(entry) < 2:
            raise BadFrame(f"bad level {_shown(entry)}")
        raw_price, raw_qty = entry[0], entry[1]
        # Inlined `bounded_decimal` fast path (this loop is the hot path of every depth frame):
        # the same bounds, proved by each string's length and characters.
        if type(raw_price) is str and type(raw_qty) is str and _short_plain(raw_price) and _short_plain(raw_qty):
            price, qty = Decimal(raw_price), Decimal(raw_qty) or _ZERO
        else:
            price, qty = bounded_decimal(raw_price, "level price"), bounded_decimal(raw_qty, "level quantity")
        if price <= 0 or qty < 0:
            raise BadFrame(f"bad level {_shown(entry)}")
        levels.append((price, qty))
    return levels


class MarketKind(StrEnum):
    """Which Binance market a venue link speaks: its REST paths, streams and book procedure differ."""

    USDM = "usdm"
    SPOT = "spot"


@dataclass(frozen=True, slots=True)
class DepthEvent:
    """One `depthUpdate` event: `U` first, `u` final, `pu` previous final update id.

    Spot events carry no `pu`; their ids are consecutive, so `pu` is set to the implied `U - 1`
    (the final id the previous event must have had). Diffs published downstream carry it too, so
    consumers check one chain rule (`pu == previous u`) for both markets.
    """

    symbol: str
    first_update_id: int
    final_update_id: int
    prev_final_update_id: int
    event_time_ms: int
    bids: list[Level]
    asks: list[Level]


@dataclass(frozen=True, slots=True)
class DepthSnapshotData:
    """A REST `/fapi/v1/depth` answer."""

    last_update_id: int
    bids: list[Level]
    asks: list[Level]
    event_time_ms: int = 0


def _shown(value: Any) -> str:
    """A value for a reason text: its repr, cut (never the whole of a huge or deep value)."""
    try:
        return repr(value)[:80]
    except RecursionError:
        return f"<{type(value).__name__} nested too deep>"


def _int(data: dict[str, Any], key: str, maximum: int = INT64_MAX) -> int:
    """A non-negative integer field, at most `maximum` (ids: a signed 64-bit column)."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadFrame(f"field {key!r} is not an integer")
    if not 0 <= value <= maximum:
        raise BadFrame(f"field {key!r} is out of range")
    return value


def _time_ms(data: dict[str, Any], key: str) -> int:
    """A time in ms whose ns fits a signed 64-bit integer."""
    return _int(data, key, MAX_TIME_MS)


def _optional_time_ms(value: Any) -> int | None:
    """An optional positive time in ms (None when absent, zero or not a usable integer)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_TIME_MS:
        return None
    return value


def _decimal(data: dict[str, Any], key: str) -> Decimal:
    if key not in data:
        raise BadFrame(f"field {key!r} is missing")
    return bounded_decimal(data[key], f"field {key!r}")


def _positive(data: dict[str, Any], key: str) -> Decimal:
    value = _decimal(data, key)
    if value <= 0:
        raise BadFrame(f"field {key!r} is not positive")
    return value


def _dict(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadFrame("payload is not an object")
    return data


def parse_depth_event(data: Any, market: MarketKind = MarketKind.USDM) -> DepthEvent:
    """A `depthUpdate` payload as a `DepthEvent` (spot: no `pu`, implied as `U - 1`).

    Raises:
        BadFrame: the payload is malformed (a USD-M event without `pu` included).
    """
    data = _dict(data)
    first = _int(data, "U")
    event = DepthEvent(
        symbol=_symbol(data),
        first_update_id=first,
        final_update_id=_int(data, "u"),
        prev_final_update_id=first - 1 if market == MarketKind.SPOT else _int(data, "pu"),
        event_time_ms=_time_ms(data, "E"),
        bids=parse_levels(data.get("b")),
        asks=parse_levels(data.get("a")),
    )
    if event.final_update_id < event.first_update_id:
        raise BadFrame("u < U")
    return event


def parse_snapshot(data: Any) -> DepthSnapshotData:
    """A REST depth answer as `DepthSnapshotData`.

    Raises:
        BadFrame: the answer is malformed.
    """
    data = _dict(data)
    return DepthSnapshotData(
        last_update_id=_int(data, "lastUpdateId"),
        bids=parse_levels(data.get("bids")),
        asks=parse_levels(data.get("asks")),
        event_time_ms=_optional_time_ms(data.get("E")) or 0,
    )


def trade_from_agg_trade(venue: str, data: Any, symbol: str | None = None) -> Trade:
    """`aggTrade` payload (stream, or a REST `/fapi/v1/aggTrades` row with `symbol`) → `Trade`.

    The aggregate id `a` is the trade id.

    Raises:
        BadFrame: the payload is malformed.
    """
    data = _dict(data)
    return Trade(
        venue=venue,
        symbol=symbol or _symbol(data),
        trade_id=_int(data, "a"),
        price=_positive(data, "p"),
        quantity=_positive(data, "q"),
        buyer_is_maker=bool(data.get("m", False)),
        ts_event_ns=_time_ms(data, "T") * _MS,
    )


def trade_from_trade(venue: str, data: Any, symbol: str | None = None) -> Trade:
    """Spot `trade` payload (stream, or a REST `/api/v3/historicalTrades` row) → `Trade`.

    The trade id `t` (stream) or `id` (REST) is the trade id; the stream's `T` or the REST
    row's `time` is the trade time.

    Raises:
        BadFrame: the payload is malformed.
    """
    data = _dict(data)
    trade_id_key = "t" if "t" in data else "id"
    time_key = "T" if "T" in data else "time"
    buyer_is_maker = data.get("m", data.get("isBuyerMaker", False))
    return Trade(
        venue=venue,
        symbol=symbol or _symbol(data),
        trade_id=_int(data, trade_id_key),
        price=_positive(data, "p" if "p" in data else "price"),
        quantity=_positive(data, "q" if "q" in data else "qty"),
        buyer_is_maker=bool(buyer_is_maker),
        ts_event_ns=_time_ms(data, time_key) * _MS,
    )


def mark_from_update(venue: str, data: Any) -> MarkPrice:
    """`markPriceUpdate` payload → `MarkPrice`.

    Raises:
        BadFrame: the payload is malformed.
    """
    data = _dict(data)
    next_funding = _optional_time_ms(data.get("T"))
    return MarkPrice(
        venue=venue,
        symbol=_symbol(data),
        mark_price=_positive(data, "p"),
        index_price=_positive(data, "i") if "i" in data else None,
        funding_rate=_decimal(data, "r") if data.get("r") not in (None, "") else None,
        next_funding_time_ns=next_funding * _MS if next_funding else None,
        ts_event_ns=_time_ms(data, "E") * _MS,
    )


def mark_from_premium_index(venue: str, symbol: str, data: Any, received_ns: int) -> MarkPrice:
    """REST `/fapi/v1/premiumIndex` answer → `MarkPrice` (re-sync after a reconnect, FM-N1).

    `received_ns` is the event time when the answer carries none.

    Raises:
        BadFrame: the answer is malformed.
    """
    data = _dict(data)
    mark = _positive(data, "markPrice")
    next_funding = _optional_time_ms(data.get("nextFundingTime"))
    time_ms = _optional_time_ms(data.get("time"))
    return MarkPrice(
        venue=venue,
        symbol=symbol,
        mark_price=mark,
        index_price=_positive(data, "indexPrice") if "indexPrice" in data else None,
        funding_rate=_decimal(data, "lastFundingRate") if data.get("lastFundingRate") not in (None, "") else None,
        next_funding_time_ns=next_funding * _MS if next_funding else None,
        ts_event_ns=time_ms * _MS if time_ms else received_ns,
    )


def liquidation_from_force_order(venue: str, data: Any) -> Liquidation:
    """`forceOrder` payload → `Liquidation` (average price when filled, else order price).

    Raises:
        BadFrame: the payload is malformed.
    """
    order = _dict(_dict(data).get("o"))
    side_text = order.get("S")
    if side_text not in ("BUY", "SELL"):
        raise BadFrame(f"bad side {_shown(side_text)}")
    average = _decimal(order, "ap") if "ap" in order else Decimal(0)
    order_price = _decimal(order, "p")
    if average < 0 or order_price < 0:
        raise BadFrame("negative price")
    price = average if average > 0 else order_price
    if price <= 0:
        raise BadFrame("no positive price")
    return Liquidation(
        venue=venue,
        symbol=_symbol(order),
        side=Side(side_text),
        price=price,
        quantity=_positive(order, "q"),
        ts_event_ns=_time_ms(order, "T") * _MS if "T" in order else _time_ms(_dict(data), "E") * _MS,
    )


def price_from_ticker(data: Any) -> Decimal:
    """REST `ticker/price` answer `{"symbol", "price"}` → the positive last price.

    Raises:
        BadFrame: the answer is malformed or the price not positive.
    """
    return _positive(_dict(data), "price")


def open_interest_from_rest(venue: str, symbol: str, data: Any, received_ns: int) -> OpenInterest:
    """REST `/fapi/v1/openInterest` answer → `OpenInterest` (`received_ns`: event time when it carries none).

    Raises:
        BadFrame: the answer is malformed or negative (SPEC FM-D5: OI < 0 is rejected).
    """
    data = _dict(data)
    value = _decimal(data, "openInterest")
    if value < 0:
        raise BadFrame("negative open interest")
    time_ms = _optional_time_ms(data.get("time"))
    return OpenInterest(
        venue=venue,
        symbol=symbol,
        open_interest=value,
        ts_event_ns=time_ms * _MS if time_ms else received_ns,
    )
