"""Notional and leverage brackets and commission rates of the simulated account
(`GET /fapi/v1/leverageBracket`, `GET /fapi/v1/commissionRate`, `POST /fapi/v1/leverage`).

One bracket table serves every symbol: Binance's BTCUSDT tiers (notional cap, the highest initial
leverage allowed up to it, maintenance margin ratio), with the maintenance amount `cum` derived the
way Binance defines it, so a client's margin arithmetic gives the same numbers here as there.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from services.venue_sim.domain.rules import BinanceError

TIERS: tuple[tuple[int, int, str], ...] = (
    (50_000, 125, "0.004"),
    (600_000, 100, "0.005"),
    (3_000_000, 75, "0.0065"),
    (12_000_000, 50, "0.01"),
    (70_000_000, 25, "0.02"),
    (100_000_000, 20, "0.025"),
    (230_000_000, 10, "0.05"),
    (480_000_000, 5, "0.1"),
    (600_000_000, 4, "0.125"),
    (800_000_000, 3, "0.15"),
    (1_200_000_000, 2, "0.25"),
    (1_800_000_000, 1, "0.5"),
)
"""(notional cap, initial leverage, maintenance margin ratio), lowest tier first."""
MAX_LEVERAGE = TIERS[0][1]


@dataclass(frozen=True, slots=True)
class Bracket:
    """One tier of the notional and leverage table."""

    number: int
    initial_leverage: int
    notional_floor: int
    notional_cap: int
    maint_margin_ratio: Decimal
    cum: Decimal

    def view(self) -> dict[str, Any]:
        """The tier as Binance's answer shows it (numbers, not strings)."""
        return {
            "bracket": self.number,
            "initialLeverage": self.initial_leverage,
            "notionalCap": self.notional_cap,
            "notionalFloor": self.notional_floor,
            "maintMarginRatio": float(self.maint_margin_ratio),
            "cum": float(self.cum),
        }


def _brackets() -> tuple[Bracket, ...]:
    rows: list[Bracket] = []
    floor, cum, previous_ratio = 0, Decimal(0), Decimal(0)
    for number, (cap, leverage, ratio_text) in enumerate(TIERS, start=1):
        ratio = Decimal(ratio_text)
        # Binance: cum_n = cum_(n-1) + floor_n * (mmr_n - mmr_(n-1)), continuous maintenance margin.
        cum += floor * (ratio - previous_ratio)
        rows.append(Bracket(number, leverage, floor, cap, ratio, cum))
        floor, previous_ratio = cap, ratio
    return tuple(rows)


BRACKETS = _brackets()


def symbol_brackets(symbol: str) -> dict[str, Any]:
    """One symbol's entry of `GET /fapi/v1/leverageBracket`."""
    return {"symbol": symbol, "notionalCoef": 1.0, "brackets": [b.view() for b in BRACKETS]}


def max_notional(leverage: int) -> int:
    """The largest position notional allowed at a leverage (the cap of the last tier that allows it)."""
    return max(b.notional_cap for b in BRACKETS if b.initial_leverage >= leverage)


def parse_leverage(raw: str | None) -> int:
    """The `leverage` parameter of `POST /fapi/v1/leverage`.

    Raises:
        BinanceError: -1102 when missing, -1100 when not an integer, -4028 when out of 1..125.
    """
    if not raw:
        raise BinanceError(400, -1102, "Mandatory parameter 'leverage' was not sent, was empty/null, or malformed.")
    if not raw.isdigit():
        raise BinanceError(400, -1100, "Illegal characters found in parameter 'leverage'; legal range is '^[0-9]+$'.")
    leverage = int(raw)
    if not 1 <= leverage <= MAX_LEVERAGE:
        raise BinanceError(400, -4028, f"Leverage {leverage} is not valid")
    return leverage


def commission_rates(symbol: str, maker: Decimal, taker: Decimal) -> dict[str, Any]:
    """`GET /fapi/v1/commissionRate`."""
    return {
        "symbol": symbol,
        "makerCommissionRate": format(maker, "f"),
        "takerCommissionRate": format(taker, "f"),
        "rpiCommissionRate": "0",
    }
