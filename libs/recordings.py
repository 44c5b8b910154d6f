"""Parser for recorded Binance market data, and the reference order-book rebuild.

Formats (see `data/README.md`; the files ship in the repository's `data/binance`):

* hftbacktest recordings (`*.gz` or plain): `<receive ts> <json>` per line, the timestamp in
  nanoseconds (2024 files) or microseconds (2023 files), detected by magnitude. Stream messages
  use the combined form `{"stream": ..., "data": ...}`; a REST depth snapshot is a bare
  `{"lastUpdateId": ...}` line.
* cryptofeed captures: `BINANCE_FUTURES.ws.*` lines `<unix time>: <json>` (the first line names
  the URL with `<->`), `BINANCE_FUTURES.http.*` lines `<url> -> <unix time>: <json>`.

Records carry the receive time in integer nanoseconds. Prices and quantities are `Decimal`.

Spot depth events carry no `pu`: their ids are consecutive, so a spot `DepthUpdate` has
`market == "spot"` and `previous_final_update_id == U - 1` (the id the previous event must have
ended on).

`rebuild_book` / `iter_book_states` apply the Binance book procedure of the recording's market
(USD-M or spot) and serve as the independent reference other tests compare the simulator and the
market-data service against.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import msgspec

Level = tuple[Decimal, Decimal]

_json_decoder = msgspec.json.Decoder()
_SYMBOL_IN_NAME = re.compile(r"_([a-z0-9]+usdt?)_", re.IGNORECASE)


USDM = "usdm"
SPOT = "spot"
"""Market kinds of a recording: Binance USD-M futures or spot (different depth chaining)."""


DEFAULT_RECORDINGS = ("usdm_btcusdt_20240808.gz", "usdm_ethusdt_20240808.gz")
"""What the venue simulator replays when it is given no source (in `RECORDINGS_DIR`)."""


def project_root() -> Path:
    """The directory holding pyproject.toml, found from this module's path."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists():
            return parent
    return here.parents[1]


RECORDINGS_DIR = project_root() / "data" / "binance"
"""The Binance recordings shipped in the repository (`data/binance`, each source with its licence).

Absent from an installed wheel: the data is not packaged, and the simulator then runs a synthetic
market (see `services.venue_sim.main.build_source`)."""


def default_recordings() -> list[Path]:
    """The default replay files (may not exist outside a checkout of the repository)."""
    return [RECORDINGS_DIR / name for name in DEFAULT_RECORDINGS]


class RecordingError(ValueError):
    """A recording line cannot be understood."""


class SequenceGapError(ValueError):
    """The depth diffs do not chain (`pu` != previous `u`) or no diff bridges the snapshot."""


@dataclass(frozen=True, slots=True)
class DepthSnapshot:
    """REST `/fapi/v1/depth` answer as recorded."""

    receive_ns: int
    symbol: str
    last_update_id: int
    event_time_ms: int
    transaction_time_ms: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


@dataclass(frozen=True, slots=True)
class DepthUpdate:
    """One `depthUpdate` stream event: USD-M chains on `pu`, spot on `U == previous u + 1`.

    For spot (`market == "spot"`) `previous_final_update_id` is implied: `U - 1`.
    """

    receive_ns: int
    symbol: str
    stream: str
    event_time_ms: int
    transaction_time_ms: int
    first_update_id: int
    final_update_id: int
    previous_final_update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    market: str = USDM


@dataclass(frozen=True, slots=True)
class Trade:
    """One `trade` (or `aggTrade`, then `trade_id` is the aggregate id) event."""

    receive_ns: int
    symbol: str
    event_time_ms: int
    trade_time_ms: int
    trade_id: int
    price: Decimal
    quantity: Decimal
    buyer_is_maker: bool
    kind: str = "MARKET"  # X: MARKET, INSURANCE_FUND, ADL, NA
    aggregated: bool = False
    first_trade_id: int = 0
    last_trade_id: int = 0


@dataclass(frozen=True, slots=True)
class MarkPrice:
    """One `markPriceUpdate` event."""

    receive_ns: int
    symbol: str
    event_time_ms: int
    mark_price: Decimal
    index_price: Decimal
    estimated_settle_price: Decimal
    funding_rate: Decimal
    next_funding_time_ms: int


@dataclass(frozen=True, slots=True)
class BookTicker:
    """One `bookTicker` event."""

    receive_ns: int
    symbol: str
    update_id: int
    event_time_ms: int
    bid_price: Decimal
    bid_qty: Decimal
    ask_price: Decimal
    ask_qty: Decimal


@dataclass(frozen=True, slots=True)
class ForceOrder:
    """One `forceOrder` (liquidation) event."""

    receive_ns: int
    symbol: str
    event_time_ms: int
    side: str
    price: Decimal
    average_price: Decimal
    quantity: Decimal
    status: str
    trade_time_ms: int


Record = DepthSnapshot | DepthUpdate | Trade | MarkPrice | BookTicker | ForceOrder

ALL_KINDS: frozenset[str] = frozenset(
    {"DepthSnapshot", "DepthUpdate", "Trade", "MarkPrice", "BookTicker", "ForceOrder"}
)


def receive_time_ns(raw: str) -> int:
    """Convert a recorded receive timestamp to ns, detecting its unit by magnitude.

    Integers are ns (>= 1e17), µs (>= 1e14), ms (>= 1e11) or s; a decimal point means seconds.
    """
    text = raw.strip()
    if "." in text or "e" in text.lower():
        try:
            return int(Decimal(text) * 1_000_000_000)
        except (ArithmeticError, ValueError) as exc:  # not a number, NaN, Infinity, an exponent too large
            raise RecordingError(f"bad timestamp {raw[:80]!r}") from exc
    try:
        value = int(text)
    except ValueError as exc:
        raise RecordingError(f"bad timestamp {raw!r}") from exc
    if value >= 10**17:
        return value
    if value >= 10**14:
        return value * 1_000
    if value >= 10**11:
        return value * 1_000_000
    return value * 1_000_000_000


def _levels(raw: Sequence[Sequence[str]]) -> tuple[Level, ...]:
    return tuple((Decimal(price), Decimal(qty)) for price, qty, *_ in raw)


def _snapshot(receive_ns: int, symbol: str, data: dict[str, Any]) -> DepthSnapshot:
    return DepthSnapshot(
        receive_ns=receive_ns,
        symbol=symbol,
        last_update_id=int(data["lastUpdateId"]),
        event_time_ms=int(data.get("E", 0)),
        transaction_time_ms=int(data.get("T", 0)),
        bids=_levels(data["bids"]),
        asks=_levels(data["asks"]),
    )


def _stream_record(receive_ns: int, stream: str, data: dict[str, Any]) -> Record | None:
    """Typed record of one stream message, None for streams we do not model (kline...)."""
    kind = data.get("e")
    if kind == "depthUpdate":
        first = int(data["U"])
        spot = "pu" not in data  # spot events have consecutive ids and no `pu`
        return DepthUpdate(
            receive_ns=receive_ns,
            symbol=data["s"],
            stream=stream,
            event_time_ms=int(data["E"]),
            transaction_time_ms=int(data.get("T", data["E"])),
            first_update_id=first,
            final_update_id=int(data["u"]),
            previous_final_update_id=first - 1 if spot else int(data["pu"]),
            bids=_levels(data["b"]),
            asks=_levels(data["a"]),
            market=SPOT if spot else USDM,
        )
    if kind == "trade":
        return Trade(
            receive_ns=receive_ns,
            symbol=data["s"],
            event_time_ms=int(data["E"]),
            trade_time_ms=int(data["T"]),
            trade_id=int(data["t"]),
            price=Decimal(data["p"]),
            quantity=Decimal(data["q"]),
            buyer_is_maker=bool(data["m"]),
            kind=str(data.get("X", "MARKET")),
        )
    if kind == "aggTrade":
        return Trade(
            receive_ns=receive_ns,
            symbol=data["s"],
            event_time_ms=int(data["E"]),
            trade_time_ms=int(data["T"]),
            trade_id=int(data["a"]),
            price=Decimal(data["p"]),
            quantity=Decimal(data["q"]),
            buyer_is_maker=bool(data["m"]),
            aggregated=True,
            first_trade_id=int(data["f"]),
            last_trade_id=int(data["l"]),
        )
    if kind == "markPriceUpdate":
        return MarkPrice(
            receive_ns=receive_ns,
            symbol=data["s"],
            event_time_ms=int(data["E"]),
            mark_price=Decimal(data["p"]),
            index_price=Decimal(data.get("i", data["p"])),
            estimated_settle_price=Decimal(data.get("P", data["p"])),
            funding_rate=Decimal(data.get("r", "0")),
            next_funding_time_ms=int(data.get("T", 0)),
        )
    if kind == "bookTicker":
        return BookTicker(
            receive_ns=receive_ns,
            symbol=data["s"],
            update_id=int(data["u"]),
            event_time_ms=int(data.get("E", 0)),
            bid_price=Decimal(data["b"]),
            bid_qty=Decimal(data["B"]),
            ask_price=Decimal(data["a"]),
            ask_qty=Decimal(data["A"]),
        )
    if kind == "forceOrder":
        order = data["o"]
        return ForceOrder(
            receive_ns=receive_ns,
            symbol=order["s"],
            event_time_ms=int(data["E"]),
            side=order["S"],
            price=Decimal(order["p"]),
            average_price=Decimal(order.get("ap", order["p"])),
            quantity=Decimal(order["q"]),
            status=order.get("X", "FILLED"),
            trade_time_ms=int(order.get("T", data["E"])),
        )
    return None


_STREAM_KIND = {
    "depth": "DepthUpdate",
    "trade": "Trade",
    "aggTrade": "Trade",
    "markPrice": "MarkPrice",
    "bookTicker": "BookTicker",
    "forceOrder": "ForceOrder",
}


def _wanted(stream: str, kinds: frozenset[str]) -> bool:
    channel = stream.split("@", 2)[1] if "@" in stream else stream
    return _STREAM_KIND.get(channel, "") in kinds


def _open_text(path: Path) -> IO[str]:
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _symbol_from_name(path: Path) -> str | None:
    match = _SYMBOL_IN_NAME.search(path.name)
    return match.group(1).upper() if match else None


def parse_line(line: str, *, default_symbol: str | None = None) -> Record | None:
    """Parse one recording line of any supported format.

    Returns:
        The typed record, or None for lines that carry nothing we model (headers, klines).

    Raises:
        RecordingError: the line is malformed.
    """
    text = line.strip()
    if not text or "<->" in text.split("{", 1)[0]:
        return None
    url: str | None = None
    head: str
    body: str
    if " -> " in text.split("{", 1)[0]:
        url, rest = text.split(" -> ", 1)
        head, body = rest.split(": ", 1)
    else:
        brace = text.find("{")
        if brace <= 0:
            raise RecordingError(f"no JSON payload in line {text[:80]!r}")
        head, body = text[:brace].strip().rstrip(":").strip(), text[brace:]
    receive_ns = receive_time_ns(head)
    try:
        payload = _json_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise RecordingError(f"invalid JSON: {exc}") from exc
    except RecursionError as exc:
        raise RecordingError("JSON nested too deep") from exc
    if not isinstance(payload, dict):
        raise RecordingError("payload is not an object")
    try:
        if "lastUpdateId" in payload:
            symbol = default_symbol
            if url is not None:
                symbol = parse_qs(urlsplit(url).query).get("symbol", [symbol or ""])[0] or None
            if symbol is None:
                raise RecordingError("snapshot without a symbol")
            return _snapshot(receive_ns, symbol.upper(), payload)
        if "stream" in payload and "data" in payload:
            return _stream_record(receive_ns, str(payload["stream"]), payload["data"])
        if "e" in payload:
            return _stream_record(receive_ns, "", payload)
    except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
        raise RecordingError(f"malformed message: {exc!r}") from exc
    return None


def read_recording(path: str | Path, *, kinds: Iterable[str] | None = None) -> Iterator[Record]:
    """Yield the records of one recording file in file order.

    Args:
        path: a recording file (gzip or plain text) in any supported format.
        kinds: record class names to keep (default all); others are skipped cheaply.
    """
    file = Path(path)
    wanted = ALL_KINDS if kinds is None else frozenset(kinds)
    last_symbol = _symbol_from_name(file)
    with _open_text(file) as handle:
        for line in handle:
            marker = line.find('"stream":"')
            if marker >= 0:
                # Cheap pre-filter: skip decoding the (many) messages nobody asked for.
                start = marker + 10
                if not _wanted(line[start : line.find('"', start)], wanted):
                    continue
            record = parse_line(line, default_symbol=last_symbol)
            if record is None:
                continue
            if not isinstance(record, DepthSnapshot):
                last_symbol = record.symbol
            if type(record).__name__ in wanted:
                yield record


def read_recordings(paths: Iterable[str | Path], *, kinds: Iterable[str] | None = None) -> list[Record]:
    """All records of several files (e.g. consecutive days, or ws + http captures) in time order.

    The sort is stable, so records with equal receive times keep their file order.
    """
    records: list[Record] = []
    for path in paths:
        records.extend(read_recording(path, kinds=kinds))
    records.sort(key=lambda record: record.receive_ns)
    return records


def split_by_symbol(records: Iterable[Record]) -> dict[str, list[Record]]:
    """Group records by symbol, keeping their order."""
    grouped: dict[str, list[Record]] = {}
    for record in records:
        grouped.setdefault(record.symbol, []).append(record)
    return grouped


def single_market(markets: Iterable[str]) -> str:
    """The one market of several replayed symbols (USD-M when none is known).

    Raises:
        RecordingError: USD-M and spot mixed; a venue speaks one protocol, so one is replayed at a time.
    """
    found = set(markets)
    if len(found) > 1:
        raise RecordingError("the recordings mix USD-M and spot symbols: replay one market at a time")
    return found.pop() if found else USDM


@dataclass(frozen=True, slots=True)
class RecordingSurvey:
    """What a replay of some recordings serves: its symbols (those with a depth snapshot) and market."""

    symbols: tuple[str, ...]
    market: str


def survey(paths: Sequence[str | Path]) -> RecordingSurvey:
    """The symbols and market of recordings, read cheaply (their snapshots, then each file's first
    depth event), so a launcher can configure the system before replaying them. Markets mixed
    within one file are left to the replay itself to refuse.

    Raises:
        RecordingError: a line is malformed, no symbol has a depth snapshot, or the markets mix.
        OSError: a file cannot be read.
    """
    symbols = {record.symbol for record in read_recordings(paths, kinds={"DepthSnapshot"})}
    if not symbols:
        raise RecordingError(f"no replayable symbol (no depth snapshot) in {', '.join(str(p) for p in paths)}")
    markets = set()
    for path in paths:
        first = next((r for r in read_recording(path, kinds={"DepthUpdate"}) if isinstance(r, DepthUpdate)), None)
        if first is not None:
            markets.add(first.market)
    return RecordingSurvey(tuple(sorted(symbols)), single_market(markets))


@dataclass
class ReferenceBook:
    """A plain dict-based book: the reference the simulator's book is checked against."""

    symbol: str
    last_update_id: int = 0
    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Set each level's quantity; zero removes the level."""
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for price, qty in levels:
                if qty == 0:
                    side.pop(price, None)
                else:
                    side[price] = qty

    def top(self, depth: int) -> tuple[list[Level], list[Level]]:
        """Best `depth` bids (descending) and asks (ascending)."""
        bids = sorted(self.bids.items(), key=lambda level: level[0], reverse=True)[:depth]
        asks = sorted(self.asks.items(), key=lambda level: level[0])[:depth]
        return bids, asks

    def copy(self) -> ReferenceBook:
        """Independent copy."""
        return ReferenceBook(self.symbol, self.last_update_id, dict(self.bids), dict(self.asks))


def iter_book_states(records: Iterable[Record], symbol: str | None = None) -> Iterator[ReferenceBook]:
    """Rebuild the book with the Binance procedure and yield it after every applied event.

    Events before the (first) snapshot are buffered. With the snapshot's `L`, USD-M: events with
    `u < L` are dropped, the first applied has `U <= L <= u`, then each event's `pu` must equal
    the previous `u`. Spot (events without `pu`): events with `u <= L` are dropped, the first
    applied has `U <= L + 1 <= u`, then each event's `U` must equal the previous `u + 1`. The
    first yield is the snapshot itself; the same object is mutated and yielded again after each
    event (copy it to keep a state).

    Raises:
        SequenceGapError: an event does not chain, or nothing bridges the snapshot.
    """
    book: ReferenceBook | None = None
    buffered: list[DepthUpdate] = []
    previous_u: int | None = None

    def apply(event: DepthUpdate) -> bool:
        nonlocal previous_u
        assert book is not None
        spot = event.market == SPOT
        if previous_u is None:
            # Spot's snapshot L is the last id it contains, USD-M's the id of an event it ends in.
            bridge = book.last_update_id + 1 if spot else book.last_update_id
            if event.final_update_id < bridge:
                return False
            if not event.first_update_id <= bridge <= event.final_update_id:
                raise SequenceGapError(
                    f"{book.symbol}: first event U={event.first_update_id} u={event.final_update_id} "
                    f"does not bridge snapshot L={book.last_update_id}"
                )
        elif spot and event.first_update_id != previous_u + 1:
            raise SequenceGapError(f"{book.symbol}: U={event.first_update_id} != previous u + 1 = {previous_u + 1}")
        elif not spot and event.previous_final_update_id != previous_u:
            raise SequenceGapError(f"{book.symbol}: pu={event.previous_final_update_id} != previous u={previous_u}")
        book.apply(event.bids, event.asks)
        book.last_update_id = previous_u = event.final_update_id
        return True

    for record in records:
        if symbol is not None and record.symbol != symbol:
            continue
        if isinstance(record, DepthSnapshot):
            if book is not None:
                continue
            book = ReferenceBook(record.symbol, record.last_update_id)
            book.apply(record.bids, record.asks)
            yield book
            pending, buffered = buffered, []
            for event in pending:
                if apply(event):
                    yield book
        elif isinstance(record, DepthUpdate):
            if book is None:
                buffered.append(record)
            elif apply(record):
                yield book


def rebuild_book(records: Iterable[Record], symbol: str | None = None, update_id: int | None = None) -> ReferenceBook:
    """The book right after the event whose final id is `update_id` (default: end of recording).

    Raises:
        KeyError: no applied event (nor the snapshot) ends at `update_id`.
        SequenceGapError: the recording does not chain.
    """
    last: ReferenceBook | None = None
    for state in iter_book_states(records, symbol):
        last = state
        if update_id is not None and state.last_update_id >= update_id:
            if state.last_update_id == update_id:
                return state.copy()
            raise KeyError(f"no book state ends at update id {update_id}")
    if last is None:
        raise KeyError("the recording holds no snapshot")
    if update_id is not None:
        raise KeyError(f"update id {update_id} is beyond the recording")
    return last.copy()
