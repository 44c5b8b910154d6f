"""Frame normalisation: Binance stream payloads and REST answers → typed events and messages.

Pure: every parser either returns a value or raises `BadFrame` (SPEC FM-D4: a malformed frame is
counted and skipped, never fatal). `MarketKind` names the market whose shapes apply (USD-M or spot).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from proto.enums import Side
from proto.messages import Level, Liquidation, MarkPrice, OpenInterest, Trade

_MS = 1_000_000


class BadFrame(ValueError):
    """A stream frame or REST answer that does not have the expected shape."""


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
            raise BadFrame(f"bad level {entry!r:.80}")
        try:
            price, qty = Decimal(str(entry[0])), Decimal(str(entry[1]))
        except InvalidOperation as exc:
            raise BadFrame(f"bad level {entry!r:.80}") from exc
        if not price.is_finite() or not qty.is_finite() or price <= 0 or qty < 0:
            raise BadFrame(f"bad level {entry!r:.80}")
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


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadFrame(f"field {key!r} is not an integer")
    return value


def _decimal(data: dict[str, Any], key: str) -> Decimal:
    try:
        value = Decimal(str(data[key]))
    except (KeyError, InvalidOperation) as exc:
        raise BadFrame(f"field {key!r} is missing or not a decimal") from exc
    if not value.is_finite():
        raise BadFrame(f"field {key!r} is not finite")
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
        symbol=str(data.get("s", "")).upper(),
        first_update_id=first,
        final_update_id=_int(data, "u"),
        prev_final_update_id=first - 1 if market == MarketKind.SPOT else _int(data, "pu"),
        event_time_ms=_int(data, "E"),
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
        event_time_ms=int(data.get("E", 0) or 0),
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
        symbol=symbol or str(data.get("s", "")).upper(),
        trade_id=_int(data, "a"),
        price=_decimal(data, "p"),
        quantity=_decimal(data, "q"),
        buyer_is_maker=bool(data.get("m", False)),
        ts_event_ns=_int(data, "T") * _MS,
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
        symbol=symbol or str(data.get("s", "")).upper(),
        trade_id=_int(data, trade_id_key),
        price=_decimal(data, "p" if "p" in data else "price"),
        quantity=_decimal(data, "q" if "q" in data else "qty"),
        buyer_is_maker=bool(buyer_is_maker),
        ts_event_ns=_int(data, time_key) * _MS,
    )


def mark_from_update(venue: str, data: Any) -> MarkPrice:
    """`markPriceUpdate` payload → `MarkPrice`.

    Raises:
        BadFrame: the payload is malformed.
    """
    data = _dict(data)
    next_funding = data.get("T")
    return MarkPrice(
        venue=venue,
        symbol=str(data.get("s", "")).upper(),
        mark_price=_decimal(data, "p"),
        index_price=_decimal(data, "i") if "i" in data else None,
        funding_rate=_decimal(data, "r") if data.get("r") not in (None, "") else None,
        next_funding_time_ns=next_funding * _MS if isinstance(next_funding, int) and next_funding > 0 else None,
        ts_event_ns=_int(data, "E") * _MS,
    )


def mark_from_premium_index(venue: str, symbol: str, data: Any, received_ns: int) -> MarkPrice:
    """REST `/fapi/v1/premiumIndex` answer → `MarkPrice` (re-sync after a reconnect, FM-N1).

    `received_ns` is the event time when the answer carries none.

    Raises:
        BadFrame: the answer is malformed.
    """
    data = _dict(data)
    mark = _decimal(data, "markPrice")
    if mark <= 0:
        raise BadFrame("mark price is not positive")
    next_funding = data.get("nextFundingTime")
    time_ms = data.get("time")
    return MarkPrice(
        venue=venue,
        symbol=symbol,
        mark_price=mark,
        index_price=_decimal(data, "indexPrice") if "indexPrice" in data else None,
        funding_rate=_decimal(data, "lastFundingRate") if data.get("lastFundingRate") not in (None, "") else None,
        next_funding_time_ns=next_funding * _MS if isinstance(next_funding, int) and next_funding > 0 else None,
        ts_event_ns=time_ms * _MS if isinstance(time_ms, int) and time_ms > 0 else received_ns,
    )


def liquidation_from_force_order(venue: str, data: Any) -> Liquidation:
    """`forceOrder` payload → `Liquidation` (average price when filled, else order price).

    Raises:
        BadFrame: the payload is malformed.
    """
    order = _dict(_dict(data).get("o"))
    try:
        side = Side(str(order.get("S")))
    except ValueError as exc:
        raise BadFrame(f"bad side {order.get('S')!r}") from exc
    average = _decimal(order, "ap") if "ap" in order else Decimal(0)
    return Liquidation(
        venue=venue,
        symbol=str(order.get("s", "")).upper(),
        side=side,
        price=average if average > 0 else _decimal(order, "p"),
        quantity=_decimal(order, "q"),
        ts_event_ns=_int(order, "T") * _MS if "T" in order else _int(_dict(data), "E") * _MS,
    )


def price_from_ticker(data: Any) -> Decimal:
    """REST `ticker/price` answer `{"symbol", "price"}` → the positive last price.

    Raises:
        BadFrame: the answer is malformed or the price not positive.
    """
    price = _decimal(_dict(data), "price")
    if price <= 0:
        raise BadFrame("ticker price is not positive")
    return price


def open_interest_from_rest(venue: str, symbol: str, data: Any, received_ns: int) -> OpenInterest:
    """REST `/fapi/v1/openInterest` answer → `OpenInterest` (`received_ns`: event time when it carries none).

    Raises:
        BadFrame: the answer is malformed or negative (SPEC FM-D5: OI < 0 is rejected).
    """
    data = _dict(data)
    value = _decimal(data, "openInterest")
    if value < 0:
        raise BadFrame("negative open interest")
    time_ms = data.get("time")
    return OpenInterest(
        venue=venue,
        symbol=symbol,
        open_interest=value,
        ts_event_ns=time_ms * _MS if isinstance(time_ms, int) and time_ms > 0 else received_ns,
    )
