"""A seeded synthetic market: a random walk with drifting regimes, a 60-level book, trades and
liquidation cascades, reproducible from the seed; the only market the `price_shift` fault can move."""

from __future__ import annotations

import random
from collections.abc import Sequence
from decimal import ROUND_DOWN, Decimal

from libs.recordings import USDM
from services.venue_sim.domain.book import OrderBook
from services.venue_sim.domain.market_events import (
    DepthEvent,
    Level,
    LiquidationEvent,
    Script,
    StartBook,
    TradeEvent,
    starting_open_interest,
)
from services.venue_sim.domain.rules import SymbolSpec, spec_for

_BASE_PRICE = {"BTCUSDT": Decimal("60000"), "ETHUSDT": Decimal("3000"), "BNBUSDT": Decimal("550")}


DEFAULT_CASCADE_PROBABILITY = 1 / 900
"""Synthetic markets: chance per 100 ms step that a liquidation cascade starts (about one in 90 s)."""


class SyntheticSource:
    """Seeded random-walk markets with a 60-level book, trades and liquidation cascades.

    Args:
        symbols: symbols to generate.
        seed: makes the market reproducible.
        levels: price levels per side (>= 50).
        cascade_probability: chance per 100 ms step that a liquidation cascade starts.
        regime_probability: chance per 100 ms step that the drift regime is drawn again.
        market: `usdm` or `spot`: which protocol the simulator speaks for this market.
    """

    STEP_NS = 100_000_000

    def __init__(
        self,
        symbols: Sequence[str],
        seed: int,
        levels: int = 60,
        cascade_probability: float = DEFAULT_CASCADE_PROBABILITY,
        regime_probability: float = 1 / 900,
        market: str = USDM,
    ) -> None:
        # Generated ids are consecutive (`U == previous u + 1`), so they chain under both markets' rules.
        self.market = market
        self.symbols = sorted({s.upper() for s in symbols})
        self.seed = seed
        self.levels = max(50, levels)
        self.cascade_probability = cascade_probability
        self.regime_probability = regime_probability
        self._specs = {s: spec_for(s, market=self.market) for s in self.symbols}
        self._starts = {s: self._initial_book(s) for s in self.symbols}
        self._pending_moves: dict[str, int] = {}

    def move(self, symbol: str, ticks: int) -> None:
        """Move the market of `symbol` by `ticks` on its next step (the `price_shift` fault).

        The step regenerates its whole ladder around the moved best bid and trades there, so
        book, trades and the mark derived from the mid all move together, and the walk goes on
        from the new level. The random draws are unchanged: the rest of the run stays seeded.
        """
        self._pending_moves[symbol] = self._pending_moves.get(symbol, 0) + ticks

    def _rng(self, symbol: str, purpose: str) -> random.Random:
        return random.Random(f"{self.seed}:{symbol}:{purpose}")

    def _quantity(self, rng: random.Random, spec: SymbolSpec, scale: Decimal) -> Decimal:
        raw = Decimal(str(round(rng.expovariate(1.0) * float(scale), 6))) + spec.step_size
        return (raw / spec.step_size).to_integral_value(rounding=ROUND_DOWN) * spec.step_size

    def _scale(self, symbol: str) -> Decimal:
        return Decimal(1) if symbol == "BTCUSDT" else Decimal(20) if symbol == "ETHUSDT" else Decimal(200)

    def _ladder(
        self, rng: random.Random, symbol: str, best_bid: Decimal, current: OrderBook | None
    ) -> tuple[list[Level], list[Level]]:
        spec = self._specs[symbol]
        tick = spec.tick_size
        bids: list[Level] = []
        asks: list[Level] = []
        for i in range(self.levels):
            for side, price, existing in (
                (bids, best_bid - tick * i, current.bids if current else {}),
                (asks, best_bid + tick * (i + 1), current.asks if current else {}),
            ):
                kept = existing.get(price)
                if kept is not None and rng.random() < 0.85:
                    side.append((price, kept))
                else:
                    side.append((price, self._quantity(rng, spec, self._scale(symbol))))
        return bids, asks

    def _initial_book(self, symbol: str) -> StartBook:
        spec = self._specs[symbol]
        rng = self._rng(symbol, "start")
        base = _BASE_PRICE.get(symbol, Decimal(100))
        best_bid = (base / spec.tick_size).to_integral_value() * spec.tick_size
        bids, asks = self._ladder(rng, symbol, best_bid, None)
        return StartBook(1_000_000_000, tuple(bids), tuple(asks))

    def spec(self, symbol: str) -> SymbolSpec:
        """Trading rules of a symbol."""
        return self._specs[symbol]

    def start_book(self, symbol: str) -> StartBook:
        """The generated starting book."""
        return self._starts[symbol]

    def has_marks(self, symbol: str) -> bool:
        """Synthetic markets let the engine derive the mark from the mid."""
        return False

    def open_interest(self, symbol: str) -> Decimal:
        """Starting open interest."""
        return starting_open_interest(symbol)

    def script(self, symbol: str, book: OrderBook) -> Script:
        """Endless market in 100 ms steps: a random walk with drifting regimes and liquidation cascades.

        A cascade is 5-15 steps of forced orders on one side (each also printing as a taker trade)
        that displace the price by 0.2 % per step and remove open interest (the engine subtracts
        each forced order's quantity); once exhausted, 20-80 % of the move retraces over 3-8 s.
        Regimes (a drift of about 0.1 %/min up, down or none) change at random, so trends exist.
        Everything depends only on the seed and the symbol.
        """
        rng = self._rng(symbol, "walk")
        spec = self._specs[symbol]
        tick = spec.tick_size
        trade_id = 1_000_000
        cascade_steps = 0
        cascade_direction = -1
        cascade_ticks = 0
        rebound_steps = 0
        rebound_left = 0
        drift = 0
        step = 0
        while True:
            step += 1
            offset = step * self.STEP_NS
            best = book.best_bid()
            best_bid = best[0] if best else self._starts[symbol].bids[0][0]
            if rng.random() < self.regime_probability:
                drift_ticks = max(1, int(best_bid * Decimal("0.000002") / tick))
                drift = rng.choice((-drift_ticks, 0, 0, drift_ticks))
            move = round(rng.gauss(0, 2)) + drift
            if cascade_steps == 0 and rebound_steps == 0 and rng.random() < self.cascade_probability:
                cascade_steps = rng.randint(5, 15)
                cascade_direction = rng.choice((-1, 1))
                cascade_ticks = 0
            if cascade_steps > 0:
                cascade_steps -= 1
                displacement = max(1, int(best_bid * Decimal("0.002") / tick))
                move = cascade_direction * displacement
                cascade_ticks += displacement
                side = "SELL" if cascade_direction < 0 else "BUY"  # longs (SELL) or shorts (BUY) forced out
                for _ in range(rng.randint(1, 3)):
                    quantity = self._quantity(rng, spec, self._scale(symbol) * 2)
                    yield offset, LiquidationEvent(symbol, side, best_bid, quantity)
                    trade_id += 1
                    yield offset, TradeEvent(symbol, trade_id, best_bid, quantity, side == "SELL")
                if cascade_steps == 0:
                    rebound_steps = rng.randint(30, 80)
                    rebound_left = int(cascade_ticks * rng.uniform(0.2, 0.8))
            elif rebound_steps > 0:
                share = rebound_left // rebound_steps
                rebound_left -= share
                rebound_steps -= 1
                move = -cascade_direction * share + round(rng.gauss(0, 1))
            move += self._pending_moves.pop(symbol, 0)
            new_best_bid = max(tick * 10, best_bid + tick * move)
            bids, asks = self._ladder(rng, symbol, new_best_bid, book)
            changes_bids, changes_asks = book.diff_to(bids, asks)
            first = book.last_update_id + 1
            final = first + rng.randint(0, 20)
            yield (
                offset,
                DepthEvent(symbol, first, final, book.last_update_id, tuple(changes_bids), tuple(changes_asks), 1),
            )
            for _ in range(rng.randint(0, 3)):
                buyer_is_maker = rng.random() < 0.5
                price = new_best_bid if buyer_is_maker else new_best_bid + tick
                trade_id += 1
                yield (
                    offset,
                    TradeEvent(
                        symbol, trade_id, price, self._quantity(rng, spec, self._scale(symbol) / 10), buyer_is_maker
                    ),
                )
