"""Symbol rules of the simulated venue (exchangeInfo filters), Binance's error answers and the
checks of request parameters against both.

The rule tables are the simulator's own: well-known symbols get Binance's real filters, any other
symbol gets filters inferred from its recording.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any

from libs.recordings import SPOT, USDM

DECIMAL_PARAM = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")


class BinanceError(Exception):
    """A Binance-shaped error answer: HTTP status plus `{"code", "msg"}`."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(f"{code} {msg}")
        self.status = status
        self.code = code
        self.msg = msg

    def body(self) -> dict[str, Any]:
        """The JSON body Binance sends."""
        return {"code": self.code, "msg": self.msg}


def mandatory(name: str) -> BinanceError:
    """-1102 for a missing parameter."""
    return BinanceError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def not_required(name: str) -> BinanceError:
    """-1106 for a parameter that must not be sent."""
    return BinanceError(400, -1106, f"Parameter '{name}' sent when not required.")


def illegal(name: str, legal: str) -> BinanceError:
    """-1100 for a parameter with illegal characters."""
    return BinanceError(400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '{legal}'.")


def fmt(value: Decimal, places: int | None = None) -> str:
    """Decimal as a plain (never exponent) string, optionally with fixed decimal places."""
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_DOWN)
    text = format(value, "f")
    return "0" if places is None and text in ("-0", "") else text


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """Trading rules of one symbol (exchangeInfo filters)."""

    symbol: str
    base_asset: str
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal
    quote_asset: str = "USDT"
    multiplier_up: Decimal = Decimal("1.05")
    """PERCENT_PRICE: a LIMIT price may be at most the mark price times this."""
    multiplier_down: Decimal = Decimal("0.95")
    """PERCENT_PRICE: a LIMIT price may be at least the mark price times this."""

    @property
    def price_precision(self) -> int:
        """Decimal places of the tick size."""
        return max(0, -self.tick_size.normalize().as_tuple().exponent)  # type: ignore[operator]

    @property
    def quantity_precision(self) -> int:
        """Decimal places of the step size."""
        return max(0, -self.step_size.normalize().as_tuple().exponent)  # type: ignore[operator]


_KNOWN_RULES: dict[str, tuple[str, str, str]] = {
    # symbol: (tick size, step size, min notional) as on Binance USD-M
    "BTCUSDT": ("0.10", "0.001", "100"),
    "ETHUSDT": ("0.01", "0.001", "20"),
    "BNBUSDT": ("0.010", "0.01", "5"),
    "SOLUSDT": ("0.0100", "1", "5"),
    "XRPUSDT": ("0.0001", "0.1", "5"),
}
_KNOWN_SPOT_RULES: dict[str, tuple[str, str, str]] = {
    # symbol: (tick size, step size, min notional) as on Binance spot
    "BTCUSDT": ("0.01", "0.00001", "5"),
    "ETHUSDT": ("0.01", "0.0001", "5"),
    "BNBUSDT": ("0.01", "0.001", "5"),
}


def _finest_step(samples: Sequence[Decimal], fallback: str) -> str:
    """The finest decimal step the samples use (trailing zeros of recorded strings do not count)."""
    places = max((max(0, -int(value.normalize().as_tuple().exponent)) for value in samples), default=None)
    return fallback if places is None else str(Decimal(1).scaleb(-places))


def spec_for(
    symbol: str, prices: Sequence[Decimal] = (), quantities: Sequence[Decimal] = (), *, market: str = USDM
) -> SymbolSpec:
    """Rules for a symbol: Binance's own (USD-M or spot) for well-known ones, else inferred from
    the finest step of recorded prices and quantities."""
    base = symbol[:-4] if symbol.endswith("USDT") else symbol[:-3]
    known = _KNOWN_SPOT_RULES if market == SPOT else _KNOWN_RULES
    if symbol in known:
        tick, step, notional = known[symbol]
    else:
        tick = _finest_step(prices, "0.01")
        step = _finest_step(quantities, "0.001")
        notional = "5"
    step_size = Decimal(step)
    return SymbolSpec(
        symbol=symbol,
        base_asset=base,
        tick_size=Decimal(tick),
        step_size=step_size,
        min_qty=step_size,
        max_qty=Decimal(1000) if symbol == "BTCUSDT" else Decimal(1_000_000),
        min_notional=Decimal(notional),
    )


def decimal_param(params: Mapping[str, str], name: str) -> Decimal | None:
    """A decimal request parameter (None when absent or empty).

    Raises:
        BinanceError: -1100 when it is not a plain decimal number.
    """
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not DECIMAL_PARAM.match(raw):
        raise illegal(name, "^([0-9]{1,20})(\\.[0-9]{1,20})?$")
    try:
        return Decimal(raw)
    except InvalidOperation as exc:
        raise illegal(name, "^([0-9]{1,20})(\\.[0-9]{1,20})?$") from exc


def check_increment(value: Decimal, increment: Decimal, precision: int, code: int, msg: str) -> None:
    """A price or quantity must respect the symbol's precision and be a multiple of its increment.

    Raises:
        BinanceError: -1111 when too precise, else `code` / `msg` when off the increment.
    """
    exponent = value.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > precision:
        raise BinanceError(400, -1111, "Precision is over the maximum defined for this asset.")
    if value % increment != 0:
        raise BinanceError(400, code, msg)
