"""Orders, the fill model, positions and the account of the simulated venue (pure, clock injected).

Validation mirrors Binance USD-M: each rejection is a `BinanceError` carrying Binance's HTTP
status, code and message. User-data events (`ORDER_TRADE_UPDATE`, `ACCOUNT_UPDATE`) are
collected in `outbox` for the handlers to deliver.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any

from libs.recordings import SPOT, USDM
from services.venue_sim.domain.book import OrderBook
from services.venue_sim.domain.clock import Clock

ZERO = Decimal(0)
CLIENT_ORDER_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
DECIMAL_PARAM = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
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


class Exchange:
    """Matching against the true book, order lifecycle, positions and balances."""

    LEVERAGE = 20
    TAKER_FEE = Decimal("0.0004")
    MAKER_FEE = Decimal("0.0002")

    def __init__(
        self,
        clock: Clock,
        specs: Mapping[str, SymbolSpec],
        books: Mapping[str, OrderBook],
        initial_balance: Decimal = Decimal(100000),
        first_order_id: int = 4_000_000_000,
    ) -> None:
        self.clock = clock
        self.specs = dict(specs)
        self.books = books
        self.account = Account(initial_balance=initial_balance)
        self.mark_prices: dict[str, Decimal] = {}
        self.orders: dict[int, Order] = {}
        self.fills: list[Fill] = []
        self.outbox: list[dict[str, Any]] = []
        self._client_ids: dict[tuple[str, str], int] = {}
        self._next_order_id = first_order_id
        self._next_trade_id = 100_000_000
        self._countdowns: dict[str, int] = {}  # symbol -> deadline ns

    # ----------------------------------------------------------------- helpers
    def now_ms(self) -> int:
        """Wall clock in ms."""
        return self.clock() // 1_000_000

    def spec(self, symbol: str | None) -> SymbolSpec:
        """Rules of a known symbol.

        Raises:
            BinanceError: -1102 when missing, -1121 when unknown.
        """
        if not symbol:
            raise mandatory("symbol")
        spec = self.specs.get(symbol.upper())
        if spec is None:
            raise BinanceError(400, -1121, "Invalid symbol.")
        return spec

    def mark_price(self, symbol: str) -> Decimal:
        """Mark price, falling back to the book's mid."""
        mark = self.mark_prices.get(symbol)
        if mark is not None:
            return mark
        book = self.books.get(symbol)
        mid = book.mid() if book else None
        return mid if mid is not None else ZERO

    def position(self, symbol: str) -> Position:
        """The (possibly flat) position of a symbol."""
        position = self.account.positions.get(symbol)
        if position is None:
            position = self.account.positions[symbol] = Position(symbol)
        return position

    def unrealized_pnl(self, symbol: str) -> Decimal:
        """Unrealized PnL of the position at the mark price."""
        position = self.account.positions.get(symbol)
        if position is None or position.quantity == 0:
            return ZERO
        return (self.mark_price(symbol) - position.entry_price) * position.quantity

    def total_unrealized(self) -> Decimal:
        """Sum of unrealized PnL over symbols."""
        return sum((self.unrealized_pnl(s) for s in self.account.positions), ZERO)

    def position_margin(self) -> Decimal:
        """Initial margin of all positions."""
        return sum(
            (abs(p.quantity) * self.mark_price(p.symbol) / self.LEVERAGE for p in self.account.positions.values()),
            ZERO,
        )

    def open_order_margin(self) -> Decimal:
        """Initial margin reserved by open orders."""
        total = ZERO
        for order in self.orders.values():
            if order.is_open and not order.reduce_only:
                price = order.price or order.stop_price or self.mark_price(order.symbol)
                total += order.remaining * price / self.LEVERAGE
        return total

    def available_balance(self) -> Decimal:
        """Margin balance minus position and open-order margin."""
        return self.account.wallet_balance + self.total_unrealized() - self.position_margin() - self.open_order_margin()

    # ----------------------------------------------------------------- parsing
    @staticmethod
    def _decimal(params: Mapping[str, str], name: str) -> Decimal | None:
        raw = params.get(name)
        if raw is None or raw == "":
            return None
        if not DECIMAL_PARAM.match(raw):
            raise illegal(name, "^([0-9]{1,20})(\\.[0-9]{1,20})?$")
        try:
            return Decimal(raw)
        except InvalidOperation as exc:
            raise illegal(name, "^([0-9]{1,20})(\\.[0-9]{1,20})?$") from exc

    @staticmethod
    def _check_increment(value: Decimal, increment: Decimal, precision: int, code: int, msg: str) -> None:
        exponent = value.normalize().as_tuple().exponent
        if isinstance(exponent, int) and -exponent > precision:
            raise BinanceError(400, -1111, "Precision is over the maximum defined for this asset.")
        if value % increment != 0:
            raise BinanceError(400, code, msg)

    # ----------------------------------------------------------------- orders
    def place_order(
        self, params: Mapping[str, str], *, fill_ratio: Decimal | None = None, defer_fill: bool = False
    ) -> tuple[Order, dict[str, Any]]:
        """Validate and accept an order, then fill what is marketable.

        Args:
            params: request parameters as strings (Binance names).
            fill_ratio: partial-fill fault: fill at most this share of the quantity now.
            defer_fill: delayed-fill fault: accept now, fill later via `execute_deferred`.

        Returns:
            The order and its state right after acceptance (the ACK view).

        Raises:
            BinanceError: the order is rejected, with Binance's code.
        """
        spec = self.spec(params.get("symbol"))
        symbol = spec.symbol
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
        if params.get("positionSide", "BOTH") != "BOTH":
            raise BinanceError(400, -4061, "Order's position side does not match user's setting.")
        if params.get("closePosition", "false") not in ("false", ""):
            raise BinanceError(400, -1106, "Parameter 'closePosition' sent when not required.")
        quantity = self._decimal(params, "quantity")
        if quantity is None:
            raise mandatory("quantity")
        price = self._decimal(params, "price")
        stop_price = self._decimal(params, "stopPrice")
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
        reduce_only = reduce_raw.lower() == "true"
        response_type = params.get("newOrderRespType", "ACK")
        if response_type not in ("ACK", "RESULT"):
            raise BinanceError(400, -1130, "Data sent for parameter 'newOrderRespType' is not valid.")
        client_order_id = params.get("newClientOrderId") or ""
        if client_order_id and not CLIENT_ORDER_ID.match(client_order_id):
            raise illegal("newClientOrderId", "^[\\.A-Z\\:/a-z0-9_-]{1,36}$")

        if quantity <= 0:
            raise BinanceError(400, -4003, "Quantity less than or equal to zero.")
        self._check_increment(
            quantity, spec.step_size, spec.quantity_precision, -4023, "Quantity not increased by step size."
        )
        if quantity < spec.min_qty:
            raise BinanceError(400, -4004, "Quantity less than min quantity.")
        if quantity > spec.max_qty:
            raise BinanceError(400, -4005, "Quantity greater than max quantity.")
        for name, value in (("price", price), ("stopPrice", stop_price)):
            if value is None:
                continue
            if value <= 0:
                raise BinanceError(400, -4001 if name == "price" else -4006, f"{name} less than or equal to 0.")
            self._check_increment(
                value, spec.tick_size, spec.price_precision, -4014, "Price not increased by tick size."
            )

        if client_order_id and self._open_with_client_id(symbol, client_order_id):
            # Binance: "a unique id among open orders"; a finished order's id may be used again.
            raise BinanceError(400, -4116, "ClientOrderId is duplicated.")

        book = self.books[symbol]
        best_bid, best_ask = book.best_bid(), book.best_ask()
        position = self.position(symbol)
        signed = quantity if side == "BUY" else -quantity
        if reduce_only and (
            position.quantity == 0 or position.quantity * signed > 0 or quantity > abs(position.quantity)
        ):
            raise BinanceError(400, -2022, "ReduceOnly Order is rejected.")

        if order_type in TRIGGERED_TYPES:
            assert stop_price is not None
            mark = self.mark_price(symbol)
            if mark and triggers(order_type, side, stop_price, mark):
                raise BinanceError(400, -2021, "Order would immediately trigger.")
            reference = stop_price
        elif order_type == "LIMIT":
            assert price is not None
            reference = price
            crosses = (side == "BUY" and best_ask is not None and price >= best_ask[0]) or (
                side == "SELL" and best_bid is not None and price <= best_bid[0]
            )
            if time_in_force == "GTX" and crosses:
                raise BinanceError(
                    400,
                    -5022,
                    "Due to the order could not be executed as maker, the Post Only order will be rejected. "
                    "The order will not be recorded in the order history",
                )
        else:
            opposite = best_ask if side == "BUY" else best_bid
            reference = opposite[0] if opposite else self.mark_price(symbol)
        notional = quantity * reference
        if not reduce_only and notional < spec.min_notional:
            raise BinanceError(
                400,
                -4164,
                f"Order's notional must be no smaller than {fmt(spec.min_notional)} (unless you choose reduce only).",
            )
        increases = position.quantity * signed >= 0 or quantity > abs(position.quantity)
        if not reduce_only and increases and notional / self.LEVERAGE > self.available_balance():
            raise BinanceError(400, -2019, "Margin is insufficient.")

        now = self.now_ms()
        order_id = self._next_order_id
        self._next_order_id += 1
        order = Order(
            order_id=order_id,
            client_order_id=client_order_id or f"sim-{order_id}",
            symbol=symbol,
            side=side,
            type=order_type,
            time_in_force=time_in_force,
            quantity=quantity,
            price=price or ZERO,
            stop_price=stop_price or ZERO,
            reduce_only=reduce_only,
            time_ms=now,
            update_time_ms=now,
            deferred=defer_fill,
        )
        if fill_ratio is not None:
            cap = (quantity * fill_ratio / spec.step_size).to_integral_value(rounding=ROUND_DOWN) * spec.step_size
            order.fill_cap = cap
        self.orders[order_id] = order
        self._client_ids[(symbol, order.client_order_id)] = order_id
        self._order_event(order, "NEW")
        ack = self.order_view(order)
        if not defer_fill:
            self._execute_new(order)
            # The partial-fill fault caps the fill at acceptance only; what rests fills normally later.
            order.fill_cap = None
        return order, ack

    def execute_deferred(self, order_id: int) -> None:
        """Run the matching of an order accepted with `defer_fill` (delayed-fill fault)."""
        order = self.orders.get(order_id)
        if order is None or not order.deferred:
            return
        order.deferred = False
        if order.is_open:
            self._execute_new(order)
        order.fill_cap = None

    def _execute_new(self, order: Order) -> None:
        if order.type in TRIGGERED_TYPES:
            return
        limit = order.price if order.type == "LIMIT" else None
        if order.type == "LIMIT" and order.time_in_force == "FOK":
            available = sum(
                (q for p, q in self._opposite_levels(order) if self._within(order, p, limit)),
                ZERO,
            )
            if available < order.quantity:
                self._finish(order, "EXPIRED")
                return
        self._take(order, limit)
        if order.remaining > 0 and order.is_open:
            if order.type == "MARKET" or order.time_in_force in ("IOC", "FOK"):
                self._finish(order, "EXPIRED")

    def _opposite_levels(self, order: Order) -> list[tuple[Decimal, Decimal]]:
        book = self.books[order.symbol]
        return book.levels(side_is_bid=order.side == "SELL")

    @staticmethod
    def _within(order: Order, price: Decimal, limit: Decimal | None) -> bool:
        if limit is None:
            return True
        return price <= limit if order.side == "BUY" else price >= limit

    def _fillable(self, order: Order) -> Decimal:
        remaining = order.remaining
        if order.fill_cap is not None:
            remaining = min(remaining, max(ZERO, order.fill_cap - order.executed_qty))
        if order.reduce_only:
            position = self.position(order.symbol).quantity
            reducible = abs(position) if position * order.sign < 0 else ZERO
            remaining = min(remaining, reducible)
        return remaining

    def _take(self, order: Order, limit: Decimal | None) -> None:
        """Taker fills: walk the opposite side level by level, one fill per level."""
        remaining = self._fillable(order)
        if remaining <= 0:
            return
        for price, qty in self._opposite_levels(order):
            if not self._within(order, price, limit):
                break
            take = min(remaining, qty)
            self._fill(order, price, take, maker=False)
            remaining -= take
            if remaining <= 0:
                break

    def _fill(self, order: Order, price: Decimal, quantity: Decimal, *, maker: bool) -> Fill:
        now = self.now_ms()
        position = self.position(order.symbol)
        signed = quantity * order.sign
        realized = ZERO
        if position.quantity == 0 or position.quantity * signed > 0:
            total = abs(position.quantity) + quantity
            position.entry_price = (abs(position.quantity) * position.entry_price + quantity * price) / total
            position.quantity += signed
        else:
            closed = min(quantity, abs(position.quantity))
            direction = 1 if position.quantity > 0 else -1
            realized = closed * (price - position.entry_price) * direction
            position.quantity += signed
            if position.quantity == 0:
                position.entry_price = ZERO
            elif position.quantity * direction < 0:
                position.entry_price = price
        position.realized_pnl += realized
        position.update_time_ms = now
        commission = price * quantity * (self.MAKER_FEE if maker else self.TAKER_FEE)
        self.account.realized_pnl += realized
        self.account.commissions += commission
        order.executed_qty += quantity
        order.cum_quote += price * quantity
        order.update_time_ms = now
        order.status = "FILLED" if order.remaining == 0 else "PARTIALLY_FILLED"
        fill = Fill(
            trade_id=self._next_trade_id,
            order_id=order.order_id,
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            price=price,
            quantity=quantity,
            commission=commission,
            realized_pnl=realized,
            maker=maker,
            time_ms=now,
        )
        self._next_trade_id += 1
        self.fills.append(fill)
        self._order_event(order, "TRADE", fill)
        self._account_event(order.symbol)
        return fill

    def _finish(self, order: Order, status: str) -> None:
        order.status = status
        order.update_time_ms = self.now_ms()
        self._order_event(order, status)

    def _open_with_client_id(self, symbol: str, client_order_id: str) -> bool:
        known = self._client_ids.get((symbol, client_order_id))
        order = self.orders.get(known) if known is not None else None
        return order is not None and order.is_open

    def find_order(self, symbol: str, order_id: str | None, client_order_id: str | None) -> Order | None:
        """Look an order up by venue id or client id (within a symbol; a reused client id: its newest order)."""
        if order_id:
            try:
                order = self.orders.get(int(order_id))
            except ValueError as exc:
                raise illegal("orderId", "^[0-9]{1,20}$") from exc
            return order if order is not None and order.symbol == symbol else None
        if client_order_id:
            known = self._client_ids.get((symbol, client_order_id))
            return self.orders.get(known) if known is not None else None
        raise BinanceError(400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")

    def query_order(self, params: Mapping[str, str]) -> Order:
        """GET /fapi/v1/order.

        Raises:
            BinanceError: -2013 when the order is unknown.
        """
        spec = self.spec(params.get("symbol"))
        order = self.find_order(spec.symbol, params.get("orderId"), params.get("origClientOrderId"))
        if order is None:
            raise BinanceError(400, -2013, "Order does not exist.")
        return order

    def cancel_order(self, params: Mapping[str, str]) -> Order:
        """DELETE /fapi/v1/order.

        Raises:
            BinanceError: -2011 when the order is unknown or no longer open.
        """
        spec = self.spec(params.get("symbol"))
        order = self.find_order(spec.symbol, params.get("orderId"), params.get("origClientOrderId"))
        if order is None or not order.is_open:
            raise BinanceError(400, -2011, "Unknown order sent.")
        self._finish(order, "CANCELED")
        return order

    def cancel_all(self, symbol: str) -> list[Order]:
        """Cancel every open order of a symbol."""
        cancelled = [o for o in self.orders.values() if o.symbol == symbol and o.is_open]
        for order in cancelled:
            self._finish(order, "CANCELED")
        return cancelled

    def open_orders(self, symbol: str | None) -> list[Order]:
        """Open orders, of one symbol or all."""
        return [o for o in self.orders.values() if o.is_open and (symbol is None or o.symbol == symbol)]

    # ----------------------------------------------------------------- market events
    def on_book_update(self, symbol: str) -> None:
        """Fill resting LIMIT orders at their limit price once the opposite best crosses them."""
        book = self.books[symbol]
        best_bid, best_ask = book.best_bid(), book.best_ask()
        for order in list(self.orders.values()):
            if order.symbol != symbol or not order.is_open or order.type != "LIMIT" or order.deferred:
                continue
            crossed = (order.side == "BUY" and best_ask is not None and best_ask[0] <= order.price) or (
                order.side == "SELL" and best_bid is not None and best_bid[0] >= order.price
            )
            if not crossed:
                continue
            quantity = self._fillable(order)
            if quantity > 0:
                self._fill(order, order.price, quantity, maker=True)
            elif order.reduce_only and self.position(symbol).quantity * order.sign >= 0:
                self._finish(order, "EXPIRED")

    def on_mark_price(self, symbol: str, mark: Decimal) -> None:
        """Record the mark price and trigger the STOP_MARKET and TAKE_PROFIT_MARKET orders it crosses.

        A triggered order fills at market; what cannot fill (a reduce-only order whose position is
        already closed, an empty book) expires, as on Binance.
        """
        self.mark_prices[symbol] = mark
        for order in list(self.orders.values()):
            if order.symbol != symbol or not order.is_open or order.type not in TRIGGERED_TYPES or order.deferred:
                continue
            if triggers(order.type, order.side, order.stop_price, mark):
                self._take(order, None)
                if order.is_open:
                    self._finish(order, "EXPIRED")

    # ----------------------------------------------------------------- dead-man's switch
    def arm_countdown(self, symbol: str, countdown_ms: int) -> None:
        """countdownCancelAll: cancel the symbol's open orders unless re-armed within the time (0 disarms)."""
        if countdown_ms <= 0:
            self._countdowns.pop(symbol, None)
        else:
            self._countdowns[symbol] = self.clock() + countdown_ms * 1_000_000

    def check_countdowns(self) -> list[str]:
        """Fire expired countdowns; returns the symbols whose orders were cancelled."""
        now = self.clock()
        fired = [symbol for symbol, deadline in self._countdowns.items() if deadline <= now]
        for symbol in fired:
            del self._countdowns[symbol]
            self.cancel_all(symbol)
        return fired

    # ----------------------------------------------------------------- views (Binance JSON)
    def order_view(self, order: Order) -> dict[str, Any]:
        """The order as Binance's REST answers show it."""
        spec = self.specs[order.symbol]
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

    def _order_event(self, order: Order, execution_type: str, fill: Fill | None = None) -> None:
        spec = self.specs[order.symbol]
        now = self.now_ms()
        self.outbox.append(
            {
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
        )

    def _account_event(self, symbol: str) -> None:
        now = self.now_ms()
        position = self.position(symbol)
        wallet = self.account.wallet_balance
        self.outbox.append(
            {
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
                            "up": fmt(self.unrealized_pnl(symbol), 8),
                            "mt": "cross",
                            "iw": "0",
                            "ps": "BOTH",
                        }
                    ],
                },
            }
        )

    def position_views(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """GET /fapi/v2/positionRisk rows (every symbol, flat ones included)."""
        rows = []
        for name in sorted(self.specs):
            if symbol is not None and name != symbol:
                continue
            position = self.position(name)
            mark = self.mark_price(name)
            rows.append(
                {
                    "symbol": name,
                    "positionAmt": fmt(position.quantity),
                    "entryPrice": fmt(position.entry_price, 8),
                    "breakEvenPrice": fmt(position.entry_price, 8),
                    "markPrice": fmt(mark, 8),
                    "unRealizedProfit": fmt(self.unrealized_pnl(name), 8),
                    "liquidationPrice": "0",
                    "leverage": str(self.LEVERAGE),
                    "maxNotionalValue": "250000",
                    "marginType": "cross",
                    "isolatedMargin": "0.00000000",
                    "isAutoAddMargin": "false",
                    "positionSide": "BOTH",
                    "notional": fmt(position.quantity * mark, 8),
                    "isolatedWallet": "0",
                    "updateTime": position.update_time_ms,
                }
            )
        return rows

    def balance_views(self) -> list[dict[str, Any]]:
        """GET /fapi/v2/balance rows."""
        wallet = self.account.wallet_balance
        available = self.available_balance()
        return [
            {
                "accountAlias": "SimAcct",
                "asset": "USDT",
                "balance": fmt(wallet, 8),
                "crossWalletBalance": fmt(wallet, 8),
                "crossUnPnl": fmt(self.total_unrealized(), 8),
                "availableBalance": fmt(available, 8),
                "maxWithdrawAmount": fmt(max(available, ZERO), 8),
                "marginAvailable": True,
                "updateTime": self.now_ms(),
            }
        ]

    def account_view(self) -> dict[str, Any]:
        """GET /fapi/v2/account."""
        wallet = self.account.wallet_balance
        unrealized = self.total_unrealized()
        position_margin = self.position_margin()
        order_margin = self.open_order_margin()
        available = self.available_balance()
        positions = [
            {
                "symbol": row["symbol"],
                "initialMargin": fmt(abs(Decimal(row["notional"])) / self.LEVERAGE, 8),
                "maintMargin": "0",
                "unrealizedProfit": row["unRealizedProfit"],
                "positionInitialMargin": fmt(abs(Decimal(row["notional"])) / self.LEVERAGE, 8),
                "openOrderInitialMargin": "0",
                "leverage": row["leverage"],
                "isolated": False,
                "entryPrice": row["entryPrice"],
                "breakEvenPrice": row["breakEvenPrice"],
                "maxNotional": row["maxNotionalValue"],
                "positionSide": "BOTH",
                "positionAmt": row["positionAmt"],
                "notional": row["notional"],
                "isolatedWallet": "0",
                "updateTime": row["updateTime"],
            }
            for row in self.position_views()
        ]
        return {
            "feeTier": 0,
            "canTrade": True,
            "canDeposit": True,
            "canWithdraw": True,
            "updateTime": 0,
            "multiAssetsMargin": False,
            "tradeGroupId": -1,
            "totalInitialMargin": fmt(position_margin + order_margin, 8),
            "totalMaintMargin": "0.00000000",
            "totalWalletBalance": fmt(wallet, 8),
            "totalUnrealizedProfit": fmt(unrealized, 8),
            "totalMarginBalance": fmt(wallet + unrealized, 8),
            "totalPositionInitialMargin": fmt(position_margin, 8),
            "totalOpenOrderInitialMargin": fmt(order_margin, 8),
            "totalCrossWalletBalance": fmt(wallet, 8),
            "totalCrossUnPnl": fmt(unrealized, 8),
            "availableBalance": fmt(available, 8),
            "maxWithdrawAmount": fmt(max(available, ZERO), 8),
            "assets": [
                {
                    "asset": "USDT",
                    "walletBalance": fmt(wallet, 8),
                    "unrealizedProfit": fmt(unrealized, 8),
                    "marginBalance": fmt(wallet + unrealized, 8),
                    "maintMargin": "0.00000000",
                    "initialMargin": fmt(position_margin + order_margin, 8),
                    "positionInitialMargin": fmt(position_margin, 8),
                    "openOrderInitialMargin": fmt(order_margin, 8),
                    "crossWalletBalance": fmt(wallet, 8),
                    "crossUnPnl": fmt(unrealized, 8),
                    "availableBalance": fmt(available, 8),
                    "maxWithdrawAmount": fmt(max(available, ZERO), 8),
                    "marginAvailable": True,
                    "updateTime": self.now_ms(),
                }
            ],
            "positions": positions,
        }

    def user_trade_views(self, params: Mapping[str, str]) -> list[dict[str, Any]]:
        """GET /fapi/v1/userTrades (symbol required; orderId, fromId, startTime, endTime, limit)."""
        spec = self.spec(params.get("symbol"))
        try:
            limit = min(int(params.get("limit") or 500), 1000)
            order_id = int(params["orderId"]) if params.get("orderId") else None
            from_id = int(params["fromId"]) if params.get("fromId") else None
            start = int(params["startTime"]) if params.get("startTime") else None
            end = int(params["endTime"]) if params.get("endTime") else None
        except ValueError as exc:
            raise BinanceError(400, -1100, "Illegal characters found in a parameter.") from exc
        rows = []
        for fill in self.fills:
            if fill.symbol != spec.symbol or (order_id is not None and fill.order_id != order_id):
                continue
            if (from_id is not None and fill.trade_id < from_id) or (start is not None and fill.time_ms < start):
                continue
            if end is not None and fill.time_ms > end:
                continue
            rows.append(
                {
                    "buyer": fill.side == "BUY",
                    "commission": fmt(fill.commission, 8),
                    "commissionAsset": "USDT",
                    "id": fill.trade_id,
                    "maker": fill.maker,
                    "orderId": fill.order_id,
                    "price": fmt(fill.price, spec.price_precision),
                    "qty": fmt(fill.quantity, spec.quantity_precision),
                    "quoteQty": fmt(fill.price * fill.quantity, spec.price_precision + spec.quantity_precision),
                    "realizedPnl": fmt(fill.realized_pnl, 8),
                    "side": fill.side,
                    "positionSide": "BOTH",
                    "symbol": fill.symbol,
                    "time": fill.time_ms,
                }
            )
        return rows[-limit:]

    def state_view(self) -> dict[str, Any]:
        """The simulator's own record for `GET /_sim/state` (without books)."""
        return {
            "orders": [
                {
                    "order_id": o.order_id,
                    "client_order_id": o.client_order_id,
                    "symbol": o.symbol,
                    "side": o.side,
                    "type": o.type,
                    "status": o.status,
                    "quantity": fmt(o.quantity),
                    "executed_qty": fmt(o.executed_qty),
                    "price": fmt(o.price),
                    "stop_price": fmt(o.stop_price),
                    "avg_price": fmt(o.avg_price),
                    "reduce_only": o.reduce_only,
                    "update_time": o.update_time_ms,
                }
                for o in self.orders.values()
            ],
            "fills": [
                {
                    "trade_id": f.trade_id,
                    "order_id": f.order_id,
                    "client_order_id": f.client_order_id,
                    "symbol": f.symbol,
                    "side": f.side,
                    "price": fmt(f.price),
                    "quantity": fmt(f.quantity),
                    "commission": fmt(f.commission),
                    "realized_pnl": fmt(f.realized_pnl),
                    "maker": f.maker,
                    "time": f.time_ms,
                }
                for f in self.fills
            ],
            "positions": [
                {
                    "symbol": p.symbol,
                    "quantity": fmt(p.quantity),
                    "entry_price": fmt(p.entry_price),
                    "realized_pnl": fmt(p.realized_pnl),
                    "unrealized_pnl": fmt(self.unrealized_pnl(p.symbol)),
                }
                for p in self.account.positions.values()
            ],
            "balance": fmt(self.account.wallet_balance),
        }
