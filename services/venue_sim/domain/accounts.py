"""The simulated account: one-way positions, fills and the wallet (USDT margined, cross), and the
position arithmetic of a fill (average entry, realized PnL, flips)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution of one of our orders."""

    trade_id: int
    order_id: int
    client_order_id: str
    symbol: str
    side: str
    price: Decimal
    quantity: Decimal
    commission: Decimal
    realized_pnl: Decimal
    maker: bool
    time_ms: int


@dataclass
class Position:
    """One-way (BOTH) position of one symbol."""

    symbol: str
    quantity: Decimal = ZERO
    entry_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    update_time_ms: int = 0

    def apply_fill(self, signed_quantity: Decimal, price: Decimal, time_ms: int) -> Decimal:
        """Move the position by one fill (positive: bought); returns the PnL it realizes.

        Adding to the position averages the entry price; reducing realizes PnL on the closed part;
        a fill past flat flips the position, whose new entry is the fill price.
        """
        quantity = abs(signed_quantity)
        realized = ZERO
        if self.quantity == 0 or self.quantity * signed_quantity > 0:
            total = abs(self.quantity) + quantity
            self.entry_price = (abs(self.quantity) * self.entry_price + quantity * price) / total
            self.quantity += signed_quantity
        else:
            closed = min(quantity, abs(self.quantity))
            direction = 1 if self.quantity > 0 else -1
            realized = closed * (price - self.entry_price) * direction
            self.quantity += signed_quantity
            if self.quantity == 0:
                self.entry_price = ZERO
            elif self.quantity * direction < 0:
                self.entry_price = price
        self.realized_pnl += realized
        self.update_time_ms = time_ms
        return realized

    def unrealized_pnl(self, mark: Decimal) -> Decimal:
        """Unrealized PnL at the mark price (0 when flat)."""
        if self.quantity == 0:
            return ZERO
        return (mark - self.entry_price) * self.quantity


@dataclass
class Account:
    """The single simulated account (USDT margined, cross, one-way)."""

    initial_balance: Decimal = Decimal(100000)
    realized_pnl: Decimal = ZERO
    commissions: Decimal = ZERO
    positions: dict[str, Position] = field(default_factory=dict)

    @property
    def wallet_balance(self) -> Decimal:
        """Deposits plus realized PnL minus fees."""
        return self.initial_balance + self.realized_pnl - self.commissions

    def position(self, symbol: str) -> Position:
        """The (possibly flat) position of a symbol, created on first use."""
        position = self.positions.get(symbol)
        if position is None:
            position = self.positions[symbol] = Position(symbol)
        return position
