"""The vocabulary of a market source (pure): the events a script yields, the book it starts from,
and the `MarketSource` port the engine drives (a replay or a synthetic market).

A source gives, per symbol, the trading rules, the starting book and an endless *script*: an
iterator of `(offset_ns, event)` in market time, and its `market` (`usdm` or `spot`). The engine
applies each event to the true book before it pulls the next one, so a script may look at the
live book.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from services.venue_sim.domain.book import OrderBook
from services.venue_sim.domain.rules import SymbolSpec

Level = tuple[Decimal, Decimal]


@dataclass(frozen=True, slots=True)
class DepthEvent:
    """A depth diff with Binance ids; `latency_ms` is the recorded E - T.

    Spot ids are consecutive: `previous_final_update_id` is then `first_update_id - 1`.
    """

    symbol: str
    first_update_id: int
    final_update_id: int
    previous_final_update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    latency_ms: int = 1


@dataclass(frozen=True, slots=True)
class TradeEvent:
    """A public trade."""

    symbol: str
    trade_id: int
    price: Decimal
    quantity: Decimal
    buyer_is_maker: bool
    kind: str = "MARKET"
    closes_aggregate: bool = True  # last trade of its aggTrade group (same time, price, side)


@dataclass(frozen=True, slots=True)
class MarkEvent:
    """A recorded mark price."""

    symbol: str
    mark_price: Decimal
    index_price: Decimal
    funding_rate: Decimal


@dataclass(frozen=True, slots=True)
class LiquidationEvent:
    """A forced order, and the open interest it removes."""

    symbol: str
    side: str
    price: Decimal
    quantity: Decimal


MarketEvent = DepthEvent | TradeEvent | MarkEvent | LiquidationEvent
Script = Iterator[tuple[int, MarketEvent]]


@dataclass(frozen=True, slots=True)
class StartBook:
    """The book a script starts from."""

    last_update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


_BASE_OPEN_INTEREST = {"BTCUSDT": Decimal("80000"), "ETHUSDT": Decimal("1500000")}


def starting_open_interest(symbol: str) -> Decimal:
    """Open interest a simulated market starts with (recordings do not carry it)."""
    return _BASE_OPEN_INTEREST.get(symbol, Decimal(1_000_000))


class MarketSource(Protocol):
    """Where the simulated market comes from: what the engine needs of a replay or a synthetic market."""

    @property
    def symbols(self) -> Sequence[str]:
        """The symbols traded, sorted."""
        ...

    @property
    def market(self) -> str:
        """`usdm` or `spot`: which protocol the simulator speaks."""
        ...

    def spec(self, symbol: str) -> SymbolSpec:
        """Trading rules of a symbol."""
        ...

    def start_book(self, symbol: str) -> StartBook:
        """The book the script starts from."""
        ...

    def has_marks(self, symbol: str) -> bool:
        """Whether the script carries mark prices (else the engine derives them from the mid)."""
        ...

    def open_interest(self, symbol: str) -> Decimal:
        """Starting open interest."""
        ...

    def script(self, symbol: str, book: OrderBook) -> Script:
        """Endless event script of a symbol, reading the live book."""
        ...


@runtime_checkable
class LiveMarket(Protocol):
    """A source whose market happens elsewhere (the paper venue's mirror of a live venue): the
    engine runs `follow`, which hands it each event and each new snapshot of a book."""

    def follow(
        self, handle: Callable[[MarketEvent], None], reset: Callable[[str, StartBook], None]
    ) -> Coroutine[Any, Any, None]:
        """Follow the market forever."""
        ...
