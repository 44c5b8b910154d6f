"""Pure logic of the venue simulator: book, symbol rules, orders, fill model, account, fault
scheduling, the market clock."""

from services.venue_sim.domain.book import BookHistoryError, BookState, OrderBook
from services.venue_sim.domain.clock import MarketClock
from services.venue_sim.domain.exchange import Exchange
from services.venue_sim.domain.faults import Fault, FaultError, FaultScheduler
from services.venue_sim.domain.frames import Frame
from services.venue_sim.domain.orders import Order
from services.venue_sim.domain.rules import BinanceError, SymbolSpec, fmt, spec_for

__all__ = [
    "BinanceError",
    "BookHistoryError",
    "BookState",
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
