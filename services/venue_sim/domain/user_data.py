"""User-data stream events of the simulated venue (`ORDER_TRADE_UPDATE`, `ACCOUNT_UPDATE`), built
as Binance USD-M sends them; the exchange collects them in its outbox for the handlers to deliver."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from services.venue_sim.domain.accounts import Fill, Position
from services.venue_sim.domain.orders import TRIGGERED_TYPES, Order
from services.venue_sim.domain.rules import SymbolSpec, fmt

ZERO = Decimal(0)


def order_trade_update(
    order: Order, spec: SymbolSpec, execution_type: str, fill: Fill | None, now: int
) -> dict[str, Any]:
    """The `ORDER_TRADE_UPDATE` event of one order change (`now` in ms)."""
    return {
        "e": "ORDER_TRADE_UPDATE",
        "E": now,
        "T": now,
        "o": {
            "s": order.symbol,
            "c": order.client_order_id,
            "S": order.side,
            "o": "MARKET" if order.type in TRIGGERED_TYPES and fill else order.type,
            "f": order.time_in_force,
            "q": fmt(order.quantity, spec.quantity_precision),
            "p": fmt(order.price, spec.price_precision),
            "ap": fmt(order.avg_price, spec.price_precision + 2),
            "sp": fmt(order.stop_price, spec.price_precision),
            "x": execution_type,
            "X": order.status,
            "i": order.order_id,
            "l": fmt(fill.quantity if fill else ZERO, spec.quantity_precision),
            "z": fmt(order.executed_qty, spec.quantity_precision),
            "L": fmt(fill.price if fill else ZERO, spec.price_precision),
            "N": "USDT",
            "n": fmt(fill.commission if fill else ZERO, 8),
            "T": order.update_time_ms,
            "t": fill.trade_id if fill else 0,
            "b": "0",
            "a": "0",
            "m": fill.maker if fill else False,
            "R": order.reduce_only,
            "wt": "MARK_PRICE" if order.type in TRIGGERED_TYPES else "CONTRACT_PRICE",
            "ot": order.type,
            "ps": "BOTH",
            "cp": False,
            "rp": fmt(fill.realized_pnl if fill else ZERO, 8),
            "pP": False,
            "si": 0,
            "ss": 0,
            "V": "NONE",
            "pm": "NONE",
            "gtd": 0,
        },
    }


def account_update(position: Position, wallet: Decimal, unrealized: Decimal, now: int) -> dict[str, Any]:
    """The `ACCOUNT_UPDATE` event after a fill moved `position` (`now` in ms)."""
    symbol = position.symbol
    return {
        "e": "ACCOUNT_UPDATE",
        "E": now,
        "T": now,
        "a": {
            "m": "ORDER",
            "B": [{"a": "USDT", "wb": fmt(wallet, 8), "cw": fmt(wallet, 8), "bc": "0"}],
            "P": [
                {
                    "s": symbol,
                    "pa": fmt(position.quantity),
                    "ep": fmt(position.entry_price, 8),
                    "bep": fmt(position.entry_price, 8),
                    "cr": fmt(position.realized_pnl, 8),
                    "up": fmt(unrealized, 8),
                    "mt": "cross",
                    "iw": "0",
                    "ps": "BOTH",
                }
            ],
        },
    }
