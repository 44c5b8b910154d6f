"""A venue's trading rules of its symbols: parsed from Binance's `exchangeInfo`, an order checked
against them (`validate`) and put on their grid (`round_to_grid`), in exact Decimal arithmetic.

The rules are `proto.kv.SymbolRulesValue` (what the position process publishes in KV for the
others). Each violation names the Binance filter it breaks (`PRICE_FILTER`, `LOT_SIZE`,
`MARKET_LOT_SIZE`, `MIN_NOTIONAL`, `PERCENT_PRICE`, `MAX_NUM_ORDERS`), or `STATUS` (the symbol is
not TRADING) and `ORDER_TYPE` (a type the symbol does not take, a price on a MARKET order, a
LIMIT order without one), so an operator reads the venue's own vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Protocol

import msgspec

from libs.decimals import plain
from proto.enums import OrderType, Side
from proto.kv import SymbolRulesValue
from proto.messages import SubmitOrder

TRADING = "TRADING"

PRICE_FILTER = "PRICE_FILTER"
LOT_SIZE = "LOT_SIZE"
MARKET_LOT_SIZE = "MARKET_LOT_SIZE"
MIN_NOTIONAL = "MIN_NOTIONAL"
PERCENT_PRICE = "PERCENT_PRICE"
MAX_NUM_ORDERS = "MAX_NUM_ORDERS"
STATUS = "STATUS"
ORDER_TYPE = "ORDER_TYPE"

RULES_ERROR_CODES = frozenset(
    {
        -1013,  # filter failure (spot; USD-M on some filters)
        -1111,  # precision over the maximum defined for the asset
        -1116,  # invalid order type
        -1121,  # invalid symbol
        -4003,  # quantity less than or equal to zero
        -4004,  # quantity less than min quantity
        -4005,  # quantity greater than max quantity
        -4013,  # price less than min price
        -4014,  # price not increased by tick size
        -4016,  # limit price above the percent-price band
        -4023,  # quantity not increased by step size
        -4024,  # limit price below the percent-price band
        -4164,  # notional below the minimum
    }
)
"""Venue answers that say our copy of the rules may be stale: the rules are fetched again at once."""


class RulesParseError(ValueError):
    """An `exchangeInfo` answer (or one symbol of it) that cannot be read as rules."""


@dataclass(frozen=True)
class Violation:
    """The rule an order breaks (a filter name, `STATUS` or `ORDER_TYPE`) and a sentence saying how."""

    rule: str
    reason: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.reason}"


class OrderTerms(Protocol):
    """What `validate` reads of an order (`SubmitOrder` has it)."""

    @property
    def symbol(self) -> str: ...
    @property
    def side(self) -> Side: ...
    @property
    def order_type(self) -> OrderType: ...
    @property
    def quantity(self) -> Decimal: ...
    @property
    def price(self) -> Decimal | None: ...
    @property
    def stop_price(self) -> Decimal | None: ...
    @property
    def reduce_only(self) -> bool: ...


# --------------------------------------------------------------------------- parsing


def _decimal(raw: Any, where: str) -> Decimal:
    try:
        value = Decimal(str(raw))
    except InvalidOperation as exc:
        raise RulesParseError(f"{where}: {raw!r} is not a decimal") from exc
    if not value.is_finite() or value < 0:
        raise RulesParseError(f"{where}: {raw!r} is not a finite, non-negative decimal")
    return value


def _optional_int(raw: Any, where: str) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except (TypeError, ValueError) as exc:
        raise RulesParseError(f"{where}: {raw!r} is not an integer") from exc


def parse_symbol(entry: Mapping[str, Any], *, venue: str = "", fetched_ns: int = 0) -> SymbolRulesValue:
    """One `symbols[]` entry of `exchangeInfo` as rules.

    Raises:
        RulesParseError: a field or filter that is not what Binance sends.
    """
    symbol = entry.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise RulesParseError(f"symbol entry without a symbol: {str(entry)[:200]}")
    fields: dict[str, Any] = {
        "symbol": symbol,
        "status": str(entry.get("status", TRADING)),
        "price_precision": _optional_int(entry.get("pricePrecision"), f"{symbol} pricePrecision"),
        "quantity_precision": _optional_int(entry.get("quantityPrecision"), f"{symbol} quantityPrecision"),
        "order_types": [str(kind) for kind in entry.get("orderTypes", ())],
        "venue": venue,
        "fetched_ns": fetched_ns,
    }
    filters = entry.get("filters", ())
    if not isinstance(filters, list):
        raise RulesParseError(f"{symbol}: filters is not a list")
    for item in filters:
        if not isinstance(item, Mapping):
            raise RulesParseError(f"{symbol}: a filter is not an object")
        kind = item.get("filterType")
        where = f"{symbol} {kind}"
        match kind:
            case "PRICE_FILTER":
                fields["tick_size"] = _decimal(item.get("tickSize", "0"), where)
                fields["min_price"] = _decimal(item.get("minPrice", "0"), where)
                fields["max_price"] = _decimal(item.get("maxPrice", "0"), where)
            case "LOT_SIZE":
                fields["step_size"] = _decimal(item.get("stepSize", "0"), where)
                fields["min_qty"] = _decimal(item.get("minQty", "0"), where)
                fields["max_qty"] = _decimal(item.get("maxQty", "0"), where)
            case "MARKET_LOT_SIZE":
                fields["market_step_size"] = _decimal(item.get("stepSize", "0"), where)
                fields["market_min_qty"] = _decimal(item.get("minQty", "0"), where)
                fields["market_max_qty"] = _decimal(item.get("maxQty", "0"), where)
            case "MIN_NOTIONAL" | "NOTIONAL":
                # USD-M names it `notional`, spot `minNotional`.
                raw = item.get("notional", item.get("minNotional"))
                if raw is not None:
                    fields["min_notional"] = _decimal(raw, where)
            case "PERCENT_PRICE" | "PERCENT_PRICE_BY_SIDE":
                up = item.get("multiplierUp", item.get("bidMultiplierUp"))
                down = item.get("multiplierDown", item.get("askMultiplierDown"))
                if up is not None and down is not None:
                    fields["multiplier_up"] = _decimal(up, where)
                    fields["multiplier_down"] = _decimal(down, where)
            case "MAX_NUM_ORDERS":
                fields["max_num_orders"] = _optional_int(item.get("limit"), where)
            case _:
                pass  # filters no order check needs (MAX_NUM_ALGO_ORDERS, ...)
    try:
        return msgspec.convert(fields, SymbolRulesValue)
    except msgspec.ValidationError as exc:
        raise RulesParseError(f"{symbol}: {exc}") from exc


def parse_exchange_info(
    info: Any, *, venue: str = "", fetched_ns: int = 0, symbols: frozenset[str] | None = None
) -> dict[str, SymbolRulesValue]:
    """The rules of every symbol of an `exchangeInfo` answer (only `symbols` when given).

    Raises:
        RulesParseError: the answer is not an `exchangeInfo` body, or a wanted symbol cannot be read.
    """
    if not isinstance(info, Mapping) or not isinstance(info.get("symbols"), list):
        raise RulesParseError("exchangeInfo answer without a symbols list")
    rules: dict[str, SymbolRulesValue] = {}
    for entry in info["symbols"]:
        if not isinstance(entry, Mapping):
            raise RulesParseError("exchangeInfo symbols entry is not an object")
        if symbols is not None and entry.get("symbol") not in symbols:
            continue
        parsed = parse_symbol(entry, venue=venue, fetched_ns=fetched_ns)
        rules[parsed.symbol] = parsed
    return rules


# --------------------------------------------------------------------------- arithmetic


def _places(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def on_grid(value: Decimal, increment: Decimal | None) -> bool:
    """Is `value` a whole multiple of `increment` (no increment, or 0: every value is)?"""
    if increment is None or increment == 0:
        return True
    return value % increment == 0


def _to_grid(value: Decimal, increment: Decimal | None, rounding: str) -> Decimal:
    if increment is None or increment == 0:
        return value
    return (value / increment).to_integral_value(rounding=rounding) * increment


def lot(rules: SymbolRulesValue, order_type: OrderType) -> tuple[str, Decimal | None, Decimal | None, Decimal | None]:
    """(filter name, step, min, max) of the quantity rule an order type is held to: LOT_SIZE for
    LIMIT, MARKET_LOT_SIZE (when published) for MARKET and triggered orders."""
    if order_type != OrderType.LIMIT and rules.market_step_size is not None:
        return MARKET_LOT_SIZE, rules.market_step_size, rules.market_min_qty, rules.market_max_qty
    return LOT_SIZE, rules.step_size, rules.min_qty, rules.max_qty


def round_quantity(quantity: Decimal, rules: SymbolRulesValue, order_type: OrderType = OrderType.MARKET) -> Decimal:
    """`quantity` DOWN to the step of its lot rule (never more than asked for)."""
    _, step, _, _ = lot(rules, order_type)
    return _to_grid(quantity, step, ROUND_DOWN)


def round_price(price: Decimal, rules: SymbolRulesValue, side: Side | None = None) -> Decimal:
    """`price` onto the tick grid: passively for a side (a BUY down, a SELL up: never a worse price
    than asked for), to the nearest tick without one (stop and take-profit levels)."""
    match side:
        case Side.BUY:
            rounding = ROUND_FLOOR
        case Side.SELL:
            rounding = ROUND_CEILING
        case _:
            rounding = ROUND_HALF_UP
    return _to_grid(price, rules.tick_size, rounding)


def notional_price(order: OrderTerms, mark_price: Decimal | None) -> Decimal | None:
    """The price the venue values an order at: its limit price, else its trigger, else the mark."""
    if order.price is not None:
        return order.price
    if order.stop_price is not None:
        return order.stop_price
    return mark_price


# --------------------------------------------------------------------------- validation


def _check_price(name: str, value: Decimal, rules: SymbolRulesValue) -> Violation | None:
    if value <= 0:
        return Violation(PRICE_FILTER, f"{name} {value} must be above 0")
    if rules.price_precision is not None and _places(value) > rules.price_precision:
        return Violation(PRICE_FILTER, f"{name} {value} has more than {rules.price_precision} decimals")
    if not on_grid(value, rules.tick_size):
        return Violation(PRICE_FILTER, f"{name} {value} is not a multiple of the tick size {rules.tick_size}")
    if rules.min_price and value < rules.min_price:
        return Violation(PRICE_FILTER, f"{name} {value} below the minimum price {rules.min_price}")
    if rules.max_price and value > rules.max_price:
        return Violation(PRICE_FILTER, f"{name} {value} above the maximum price {rules.max_price}")
    return None


def _check_terms(order: OrderTerms, rules: SymbolRulesValue) -> Violation | None:
    if rules.status != TRADING:
        return Violation(STATUS, f"{order.symbol} is {rules.status} on the venue, not TRADING")
    kind = order.order_type.value
    if rules.order_types and kind not in rules.order_types:
        return Violation(ORDER_TYPE, f"{order.symbol} takes no {kind} orders (only {', '.join(rules.order_types)})")
    if order.order_type == OrderType.LIMIT:
        if order.price is None:
            return Violation(ORDER_TYPE, "a LIMIT order needs a price")
        if order.stop_price is not None:
            return Violation(ORDER_TYPE, "a LIMIT order takes no stop price")
    elif order.price is not None:
        return Violation(ORDER_TYPE, f"a {kind} order takes no price")
    elif order.order_type == OrderType.MARKET and order.stop_price is not None:
        return Violation(ORDER_TYPE, "a MARKET order takes no stop price")
    elif order.order_type != OrderType.MARKET and order.stop_price is None:
        return Violation(ORDER_TYPE, f"a {kind} order needs a stop price")
    return None


def _check_quantity(order: OrderTerms, rules: SymbolRulesValue) -> Violation | None:
    name, step, minimum, maximum = lot(rules, order.order_type)
    quantity = order.quantity
    if quantity <= 0:
        return Violation(name, f"quantity {quantity} must be above 0")
    if rules.quantity_precision is not None and _places(quantity) > rules.quantity_precision:
        return Violation(name, f"quantity {quantity} has more than {rules.quantity_precision} decimals")
    if not on_grid(quantity, step):
        return Violation(name, f"quantity {quantity} is not a multiple of the step size {step}")
    if minimum and quantity < minimum:
        return Violation(name, f"quantity {quantity} below the minimum quantity {minimum}")
    if maximum and quantity > maximum:
        return Violation(name, f"quantity {quantity} above the maximum quantity {maximum}")
    return None


def validate(
    order: OrderTerms,
    rules: SymbolRulesValue,
    mark_price: Decimal | None,
    *,
    open_orders: int | None = None,
) -> Violation | None:
    """The first venue rule `order` breaks, None when it breaks none.

    Checked in the venue's order: status and order type, quantity (precision, step, min, max),
    prices (precision, tick, min, max), the percent-price band around the mark (LIMIT orders),
    minimum notional (not for reduce-only orders), the number of open orders.

    Args:
        order: the order's terms.
        rules: the venue's rules of its symbol.
        mark_price: the symbol's mark price; None when unknown (then the band and a MARKET
            order's notional are not checked: no price to check them at).
        open_orders: open orders of the symbol now (None: unknown, not checked).
    """
    found = _check_terms(order, rules) or _check_quantity(order, rules)
    if found is not None:
        return found
    for name, value in (("price", order.price), ("stop price", order.stop_price)):
        if value is not None and (found := _check_price(name, value, rules)) is not None:
            return found
    if (
        order.order_type == OrderType.LIMIT
        and order.price is not None
        and mark_price is not None
        and mark_price > 0
        and rules.multiplier_up is not None
        and rules.multiplier_down is not None
    ):
        high, low = mark_price * rules.multiplier_up, mark_price * rules.multiplier_down
        if order.price > high:
            return Violation(
                PERCENT_PRICE, f"price {order.price} above {plain(high)} (mark {mark_price} x {rules.multiplier_up})"
            )
        if order.price < low:
            return Violation(
                PERCENT_PRICE, f"price {order.price} below {plain(low)} (mark {mark_price} x {rules.multiplier_down})"
            )
    if rules.min_notional and not order.reduce_only:
        price = notional_price(order, mark_price)
        if price is not None and order.quantity * price < rules.min_notional:
            return Violation(
                MIN_NOTIONAL,
                f"notional {plain(order.quantity * price)} ({order.quantity} x {price}) below the minimum "
                f"{plain(rules.min_notional)} (reduce-only orders are exempt)",
            )
    if open_orders is not None and rules.max_num_orders is not None and open_orders >= rules.max_num_orders:
        return Violation(
            MAX_NUM_ORDERS, f"{open_orders} open orders of {order.symbol}, the venue allows {rules.max_num_orders}"
        )
    return None


def round_to_grid(order: SubmitOrder, rules: SymbolRulesValue) -> SubmitOrder:
    """`order` on the venue's grid: quantity DOWN to its step, the limit price passively to the tick
    (a BUY down, a SELL up), stop and protective levels to the nearest tick. An order already on
    the grid comes back as it is (the same object)."""
    changes: dict[str, Decimal] = {}
    quantity = round_quantity(order.quantity, rules, order.order_type)
    if quantity != order.quantity:
        changes["quantity"] = quantity
    if order.price is not None and (price := round_price(order.price, rules, order.side)) != order.price:
        changes["price"] = price
    for name in ("stop_price", "stop_loss", "take_profit"):
        value: Decimal | None = getattr(order, name)
        if value is not None and (rounded := round_price(value, rules)) != value:
            changes[name] = rounded
    return msgspec.structs.replace(order, **changes) if changes else order


def rounded_or_violation(
    order: SubmitOrder, rules: SymbolRulesValue, mark_price: Decimal | None, *, open_orders: int | None = None
) -> tuple[SubmitOrder, Violation | None]:
    """A strategy order rounded to the grid, and the rule the rounded order still breaks (None: it
    may go). Rounding never makes an order bigger, so a quantity that rounds below the minimum is
    denied rather than raised."""
    rounded = round_to_grid(order, rules)
    return rounded, validate(rounded, rules, mark_price, open_orders=open_orders)
