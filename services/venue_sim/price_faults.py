"""The faults that move prices: `price_spike` (a bad print on the streams only, REST keeps the
true price) and `price_shift` (a real move of a synthetic market, handed to its source tick by
tick over the fault's `over_s`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from libs.clock import Clock
from services.venue_sim.adapters.synthetic import SyntheticSource
from services.venue_sim.domain import FaultScheduler
from services.venue_sim.domain.faults import Fault
from services.venue_sim.domain.market_events import MarketSource, TradeEvent
from services.venue_sim.domain.price_shift import PriceShift, shift_progress, shift_ticks
from services.venue_sim.market import MarketFeed


class PriceFaults:
    """Applies the price-moving faults to the market feed and its source."""

    def __init__(self, feed: MarketFeed, source: MarketSource, faults: FaultScheduler, clock: Clock, log: Any) -> None:
        self.feed = feed
        self.source = source
        self.faults = faults
        self.clock = clock
        self.log = log
        self.books = feed.books
        self.specs = feed.exchange.specs
        self._shifts: dict[str, PriceShift] = {}

    @property
    def can_move_prices(self) -> bool:
        """Whether the `price_shift` fault works here: only a synthetic market can be moved (a
        replay's recorded diffs, trades and marks carry absolute prices)."""
        return isinstance(self.source, SyntheticSource)

    def apply_price_spike(self) -> None:
        """Fire a due `price_spike` fault, if any."""
        spike = self.faults.take("price_spike") if self.faults.faults else None
        if spike is not None:
            self.price_spike(spike)

    def price_spike(self, fault: Fault) -> None:
        """Print a spiked trade and mark price on the streams (the market itself does not move)."""
        symbols = [fault.symbol] if fault.symbol in self.books else list(self.books)
        direction = fault.params["direction"]
        if direction == "random":
            direction = fault.rng.choice(("up", "down"))
        factor = Decimal(1) + Decimal(str(fault.params["pct"])) / 100 * (1 if direction == "up" else -1)
        for symbol in symbols:
            spiked = self.feed.mark_of(symbol) * factor
            spiked = spiked.quantize(self.specs[symbol].tick_size)
            self.log.warning("fault_price_spike", symbol=symbol, price=str(spiked), fault=fault.id)
            # Spot clients read `@trade`, whose ids must move on for the spike to be a new trade.
            market = self.feed.markets[symbol]
            trade_id = market.last_trade_id + 1 if self.feed.spot else 0
            last_price = market.last_price
            self.feed.on_trade(TradeEvent(symbol, trade_id, spiked, self.specs[symbol].step_size, direction == "down"))
            # A bad print on the stream only: REST (`ticker/price`, spot's second source) keeps the true price.
            market.last_price = last_price
            self.feed.publish_mark(symbol, spiked)

    def apply_price_shifts(self) -> None:
        """Advance the active `price_shift` fault: hand the ticks now due to the market source."""
        fault = self.faults.active("price_shift") if self.faults.faults else None
        if fault is None or not isinstance(self.source, SyntheticSource):
            return
        shift = self._shifts.get(fault.id)
        if shift is None:
            direction = fault.params["direction"]
            if direction == "random":
                direction = fault.rng.choice(("up", "down"))
            # A symbol this market does not trade moves nothing (not every symbol, unlike price_spike).
            symbols = [s for s in self.books if fault.symbol is None or s == fault.symbol]
            pct = Decimal(fault.params["pct"])
            totals = {
                symbol: shift_ticks(self.feed.mark_of(symbol), pct, direction == "up", self.specs[symbol].tick_size)
                for symbol in symbols
            }
            shift = self._shifts[fault.id] = PriceShift(totals)
            self.log.warning(
                "fault_price_shift_started", fault=fault.id, direction=direction, pct=str(pct), ticks=totals
            )
        if shift.done:
            return  # handed over already; the fault lives on only while its `duration_s` runs
        for symbol, ticks in shift.due(shift_progress(fault, self.clock())).items():
            self.source.move(symbol, ticks)
        if shift.done:
            fault.used += 1  # one shift per fault: it expires now that the whole move is handed over
            self.log.warning("fault_price_shift_done", fault=fault.id, ticks=shift.applied_ticks)
