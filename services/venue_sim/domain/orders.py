"""Orders as the simulated venue knows them, the checks a new order's parameters pass before the
venue's state is looked at (Binance USD-M's codes and order of checks), and an order's REST view."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from services.venue_sim.domain.rules import (
    BinanceError,
    SymbolSpec,
    check_increment,
    decimal_param,
    fmt,
    illegal,
    mandatory,
    not_required,
)

ZERO = Decimal(0)
CLIENT_ORDER_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
OPEN_STATUSES = frozenset({"NEW", "PARTIALLY_FILLED"})
TRIGGERED_TYPES = frozenset({"STOP_MARKET", "TAKE_PROFIT_MARKET"})
"""Conditional market orders, triggered by the mark price (workingType MARK_PRICE)."""


def triggers(order_type: str, side: str, stop_price: Decimal, mark: Decimal) -> bool:
    """Does `mark` trigger a conditional order? Binance USD-M rules.

    STOP_MARKET: BUY at mark >= stop, SELL at mark <= stop (the price moved against the position);
    TAKE_PROFIT_MARKET the opposite: BUY at mark <= stop, SELL at mark >= stop.
    """
    rising = side == "BUY" if order_type == "STOP_MARKET" else side == "SELL"
    return mark >= stop_price if rising else mark <= stop_price


@dataclass
class Order:
    """One order as the venue knows it."""

    order_id: int
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    quantity: Decimal
    price: Decimal
    stop_price: Decimal
    reduce_only: bool
    time_ms: int
    status: str = "NEW"
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    update_time_ms: int = 0
    deferred: bool = False
    fill_cap: Decimal | None = None

    @property
    def remaining(self) -> Decimal:
        """Quantity still to fill."""
        return self.quantity - self.executed_qty

    @property
    def avg_price(self) -> Decimal:
        """Average fill price (0 when nothing filled)."""
        return self.cum_quote / self.executed_qty if self.executed_qty else ZERO

    @property
    def is_open(self) -> bool:
        """Still working at the venue."""
        return self.status in OPEN_STATUSES

    @property
    def sign(self) -> int:
        """+1 for BUY, -1 for SELL."""
        return 1 if self.side == "BUY" else -1


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A new order's parameters once they passed every check that needs no venue state."""

    symbol: str
    side: str
    type: str
    time_in_force: str
    quantity: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    reduce_only: bool
    client_order_id: str


def check_position_side(params: Mapping[str, str], dual_side_position: bool) -> None:
    """An order's `positionSide` against the account's position mode, as Binance checks it.

    One-way mode takes BOTH (the default); hedge mode (`dualSidePosition=true`) wants LONG or
    SHORT, so a one-way order there is -4061. Hedge-mode positions themselves are not simulated:
    a LONG/SHORT order is refused with -4084 rather than filled as if one-way.

    Raises:
        BinanceError: -4060 for an unknown side, -4061 for a side the mode does not take, -4084
            for a hedge-mode order.
    """
    position_side = params.get("positionSide") or "BOTH"
    if position_side not in ("BOTH", "LONG", "SHORT"):
        raise BinanceError(400, -4060, "Invalid position side.")
    if (position_side != "BOTH") != dual_side_position:
        raise BinanceError(400, -4061, "Order's position side does not match user's setting.")
    if dual_side_position:
        raise BinanceError(
            400, -4084, "Method is not allowed currently. Upcoming soon. (hedge-mode positions are not simulated)"
        )


def check_percent_price(request: OrderRequest, spec: SymbolSpec, mark: Decimal) -> None:
    """PERCENT_PRICE of a LIMIT order: its price within [mark x multiplierDown, mark x multiplierUp].

    A mark of 0 (not known yet) checks nothing.

    Raises:
        BinanceError: -4016 above the cap, -4024 below the floor (Binance's codes and wording).
    """
    if request.type != "LIMIT" or request.price is None or mark <= 0:
        return
    cap = mark * spec.multiplier_up
    if request.price > cap:
        raise BinanceError(400, -4016, f"Limit price can't be higher than {fmt(cap, spec.price_precision)}.")
    floor = mark * spec.multiplier_down
    if request.price < floor:
        raise BinanceError(400, -4024, f"Limit price can't be lower than {fmt(floor, spec.price_precision)}.")


def parse_order_request(
    params: Mapping[str, str], spec: SymbolSpec, *, dual_side_position: bool = False
) -> OrderRequest:
    """Check a new order's parameters against Binance's rules and the symbol's filters.

    Args:
        params: request parameters as strings (Binance names).
        spec: the rules of the order's symbol.
        dual_side_position: the account is in hedge mode.

    Returns:
        The typed request.

    Raises:
        BinanceError: the first rule the parameters break, with Binance's code.
    """
    side = params.get("side")
    if not side:
        raise mandatory("side")
    if side not in ("BUY", "SELL"):
        raise BinanceError(400, -1117, "Invalid side.")
    order_type = params.get("type")
    if not order_type:
        raise mandatory("type")
    if order_type not in ("MARKET", "LIMIT", *sorted(TRIGGERED_TYPES)):
        raise BinanceError(400, -1116, "Invalid orderType.")
    check_position_side(params, dual_side_position)
    if params.get("closePosition", "false") not in ("false", ""):
        raise BinanceError(400, -1106, "Parameter 'closePosition' sent when not required.")
    quantity = decimal_param(params, "quantity")
    if quantity is None:
        raise mandatory("quantity")
    price = decimal_param(params, "price")
    stop_price = decimal_param(params, "stopPrice")
    time_in_force = params.get("timeInForce") or ""
    if order_type == "LIMIT":
        if not time_in_force:
            raise mandatory("timeInForce")
        if time_in_force not in ("GTC", "IOC", "FOK", "GTX"):
            raise BinanceError(400, -1115, "Invalid timeInForce.")
        if price is None:
            raise mandatory("price")
        if stop_price is not None:
            raise not_required("stopPrice")
    else:
        if price is not None:
            raise not_required("price")
        if time_in_force and order_type == "MARKET":
            raise not_required("timeInForce")
        if order_type in TRIGGERED_TYPES and stop_price is None:
            raise mandatory("stopPrice")
        if order_type == "MARKET" and stop_price is not None:
            raise not_required("stopPrice")
        time_in_force = time_in_force or "GTC"
    reduce_raw = params.get("reduceOnly", "false")
    if reduce_raw not in ("true", "false", "True", "False", "TRUE", "FALSE"):
        raise BinanceError(400, -1130, "Data sent for parameter 'reduceOnly' is not valid.")
    response_type = params.get("newOrderRespType", "ACK")
    if response_type not in ("ACK", "RESULT"):
        raise BinanceError(400, -1130, "Data sent for parameter 'newOrderRespType' is not valid.")
    client_order_id = params.get("newClientOrderId") or ""
    if client_order_id and not CLIENT_ORDER_ID.match(client_order_id):
        raise illegal("newClientOrderId", "^[\\.A-Z\\:/a-z0-9_-]{1,36}$")

    if quantity <= 0:
        raise BinanceError(400, -4003, "Quantity less than or equal to zero.")
    check_increment(quantity, spec.step_size, spec.quantity_precision, -4023, "Quantity not increased by step size.")
    if quantity < spec.min_qty:
        raise BinanceError(400, -4004, "Quantity less than min quantity.")
    if quantity > spec.max_qty:
        raise BinanceError(400, -4005, "Quantity greater than max quantity.")
    for name, value in (("price", price), ("stopPrice", stop_price)):
        if value is None:
            continue
        if value <= 0:
            raise BinanceError(400, -4001 if name == "price" else -4006, f"{name} less than or equal to 0.")
        check_increment(value, spec.tick_size, spec.price_precision, -4014, "Price not increased by tick size.")
    return OrderRequest(
        symbol=spec.symbol,
        side=side,
        type=order_type,
        time_in_force=time_in_force,
        quantity=quantity,
        price=price,
        stop_price=stop_price,
        reduce_only=reduce_raw.lower() == "true",
        client_order_id=client_order_id,
    )


def order_view(order: Order, spec: SymbolSpec) -> dict[str, Any]:
    """The order as Binance's REST answers show it."""
    return {
        "orderId": order.order_id,
        "symbol": order.symbol,
        "status": order.status,
        "clientOrderId": order.client_order_id,
        "price": fmt(order.price, spec.price_precision),
        "avgPrice": fmt(order.avg_price, spec.price_precision + 2),
        "origQty": fmt(order.quantity, spec.quantity_precision),
        "executedQty": fmt(order.executed_qty, spec.quantity_precision),
        "cumQty": fmt(order.executed_qty, spec.quantity_precision),
        "cumQuote": fmt(order.cum_quote, spec.price_precision + spec.quantity_precision),
        "timeInForce": order.time_in_force,
        "type": order.type,
        "reduceOnly": order.reduce_only,
        "closePosition": False,
        "side": order.side,
        "positionSide": "BOTH",
        "stopPrice": fmt(order.stop_price, spec.price_precision),
        "workingType": "MARK_PRICE" if order.type in TRIGGERED_TYPES else "CONTRACT_PRICE",
        "priceProtect": False,
        "origType": order.type,
        "priceMatch": "NONE",
        "selfTradePreventionMode": "NONE",
        "goodTillDate": 0,
        "time": order.time_ms,
        "updateTime": order.update_time_ms,
    }
