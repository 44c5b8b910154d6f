"""Pure logic of the venue simulator: book, fill model and account, fault scheduling, clocks."""

from services.venue_sim.domain.book import BookHistoryError, BookState, OrderBook
from services.venue_sim.domain.clock import Clock, MarketClock
from services.venue_sim.domain.exchange import BinanceError, Exchange, Order, SymbolSpec, fmt, spec_for
from services.venue_sim.domain.faults import Fault, FaultError, FaultScheduler, Frame

__all__ = [
    "BinanceError",
    "BookHistoryError",
    "BookState",
    "Clock",
    "Exchange",
    "Fault",
    "FaultError",
    "FaultScheduler",
    "Frame",
    "MarketClock",
    "Order",
    "OrderBook",
    "SymbolSpec",
    "fmt",
    "spec_for",
]
