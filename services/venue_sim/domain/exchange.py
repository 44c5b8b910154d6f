"""The simulated venue's order book of record (pure, clock injected): order entry against the
account and the true book, the order lifecycle, fills into positions and balances, the
dead-man's switch.

Parameter checks live in `orders` and `rules`, the fill model in `matching`, the position
arithmetic in `accounts`, Binance's JSON in `views` and `user_data`. Each rejection is a
`BinanceError` carrying Binance's HTTP status, code and message. User-data events
(`ORDER_TRADE_UPDATE`, `ACCOUNT_UPDATE`) are collected in `outbox` for the handlers to deliver.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import ROUND_DOWN, Decimal
from typing import Any

from libs.clock import Clock
from services.venue_sim.domain import matching
from services.venue_sim.domain.accounts import Account, Fill, Position
from services.venue_sim.domain.algo_orders import AlgoBook, AlgoOrder, algo_update, algo_view
from services.venue_sim.domain.book import OrderBook
from services.venue_sim.domain.brackets import max_notional
from services.venue_sim.domain.orders import (
    TRIGGERED_TYPES,
    Order,
    check_percent_price,
    check_position_side,
    order_view,
    parse_order_request,
    triggers,
)
from services.venue_sim.domain.rules import BinanceError, SymbolSpec, fmt, illegal, mandatory
from services.venue_sim.domain.user_data import account_update, order_trade_update

ZERO = Decimal(0)


class Exchange:
    """Order entry, matching against the true book, order lifecycle, positions and balances."""

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
        self.dual_side_position = False
        """The account's position mode (hedge when true: one-way orders are -4061), set by the
        position-mode endpoints (`routes.rest_account_modes`)."""
        self.orders: dict[int, Order] = {}
        self.fills: list[Fill] = []
        self.outbox: list[dict[str, Any]] = []
        self._client_ids: dict[tuple[str, str], int] = {}
        self._next_order_id = first_order_id
        self._next_trade_id = 100_000_000
        self._countdowns: dict[str, int] = {}  # symbol -> deadline ns
        self.leverage: dict[str, int] = {}  # symbol -> initial leverage set by POST /fapi/v1/leverage
        self.algo = AlgoBook()
        self.hold_trigger: Callable[[AlgoOrder], bool] = lambda order: False
        """Asked for each triggered conditional order: True keeps it in TRIGGERING, never forwarded to
        the matching engine (the `stop_stuck_triggering` fault, wired by `main.build_simulator`)."""

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

    def leverage_of(self, symbol: str) -> int:
        """The symbol's initial leverage (20x until changed)."""
        return self.leverage.get(symbol, self.LEVERAGE)

    def set_leverage(self, symbol: str, leverage: int) -> int:
        """POST /fapi/v1/leverage; returns the position notional the leverage allows.

        Raises:
            BinanceError: -2027 when the open position is larger than the new leverage allows.
        """
        allowed = max_notional(leverage)
        if abs(self.position(symbol).quantity) * self.mark_price(symbol) > allowed:
            raise BinanceError(400, -2027, "Exceeded the maximum allowable position at current leverage.")
        self.leverage[symbol] = leverage
        return allowed

    def position(self, symbol: str) -> Position:
        """The (possibly flat) position of a symbol."""
        return self.account.position(symbol)

    def unrealized_pnl(self, symbol: str) -> Decimal:
        """Unrealized PnL of the position at the mark price."""
        position = self.account.positions.get(symbol)
        if position is None or position.quantity == 0:
            return ZERO
        return position.unrealized_pnl(self.mark_price(symbol))

    def total_unrealized(self) -> Decimal:
        """Sum of unrealized PnL over symbols."""
        return sum((self.unrealized_pnl(s) for s in self.account.positions), ZERO)

    def position_margin(self) -> Decimal:
        """Initial margin of all positions."""
        return sum(
            (
                abs(p.quantity) * self.mark_price(p.symbol) / self.leverage_of(p.symbol)
                for p in self.account.positions.values()
            ),
            ZERO,
        )

    def open_order_margin(self) -> Decimal:
        """Initial margin reserved by open orders."""
        total = ZERO
        for order in self.orders.values():
            if order.is_open and not order.reduce_only:
                price = order.price or order.stop_price or self.mark_price(order.symbol)
                total += order.remaining * price / self.leverage_of(order.symbol)
        return total

    def available_balance(self) -> Decimal:
        """Margin balance minus position and open-order margin."""
        return self.account.wallet_balance + self.total_unrealized() - self.position_margin() - self.open_order_margin()

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
        request = parse_order_request(params, spec, dual_side_position=self.dual_side_position)
        check_percent_price(request, spec, self.mark_price(spec.symbol))
        symbol, side, quantity = request.symbol, request.side, request.quantity
        price, stop_price, reduce_only = request.price, request.stop_price, request.reduce_only

        if request.client_order_id and self._open_with_client_id(symbol, request.client_order_id):
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

        if request.type in TRIGGERED_TYPES:
            assert stop_price is not None
            mark = self.mark_price(symbol)
            if mark and triggers(request.type, side, stop_price, mark):
                raise BinanceError(400, -2021, "Order would immediately trigger.")
            reference = stop_price
        elif request.type == "LIMIT":
            assert price is not None
            reference = price
            if request.time_in_force == "GTX" and matching.crosses(side, price, best_bid, best_ask):
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
        if not reduce_only and increases and notional / self.leverage_of(symbol) > self.available_balance():
            raise BinanceError(400, -2019, "Margin is insufficient.")

        now = self.now_ms()
        order_id = self._next_order_id
        self._next_order_id += 1
        order = Order(
            order_id=order_id,
            client_order_id=request.client_order_id or f"sim-{order_id}",
            symbol=symbol,
            side=side,
            type=request.type,
            time_in_force=request.time_in_force,
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
            if not matching.covers(order, self._opposite_levels(order), limit):
                self._finish(order, "EXPIRED")
                return
        self._take(order, limit)
        if order.remaining > 0 and order.is_open:
            if order.type == "MARKET" or order.time_in_force in ("IOC", "FOK"):
                self._finish(order, "EXPIRED")

    def _opposite_levels(self, order: Order) -> list[tuple[Decimal, Decimal]]:
        return self.books[order.symbol].levels(side_is_bid=order.side == "SELL")

    def _fillable(self, order: Order) -> Decimal:
        return matching.fillable(order, self.position(order.symbol).quantity)

    def _take(self, order: Order, limit: Decimal | None) -> None:
        """Taker fills: walk the opposite side level by level, one fill per level."""
        quantity = self._fillable(order)
        if quantity <= 0:
            return
        for price, take in matching.taker_fills(order, self._opposite_levels(order), limit, quantity):
            self._fill(order, price, take, maker=False)

    def _fill(self, order: Order, price: Decimal, quantity: Decimal, *, maker: bool) -> Fill:
        now = self.now_ms()
        realized = self.position(order.symbol).apply_fill(quantity * order.sign, price, now)
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

    def all_orders(
        self, symbol: str, from_order_id: int | None, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[Order]:
        """GET /fapi/v1/allOrders: a symbol's orders, open and finished, oldest first.

        From `from_order_id` on: the first `limit`; else the newest `limit` in the time window.
        """
        rows = [
            o
            for o in self.orders.values()
            if o.symbol == symbol
            and (from_order_id is None or o.order_id >= from_order_id)
            and (start_ms is None or o.time_ms >= start_ms)
            and (end_ms is None or o.time_ms <= end_ms)
        ]
        return rows[:limit] if from_order_id is not None else rows[-limit:]

    # ----------------------------------------------------------------- market events
    def on_book_update(self, symbol: str) -> None:
        """Fill resting LIMIT orders at their limit price once the opposite best crosses them."""
        book = self.books[symbol]
        best_bid, best_ask = book.best_bid(), book.best_ask()
        for order in list(self.orders.values()):
            if order.symbol != symbol or not order.is_open or order.type != "LIMIT" or order.deferred:
                continue
            if not matching.crosses(order.side, order.price, best_bid, best_ask):
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

    # ----------------------------------------------------------------- conditional orders (Algo Service)
    def place_algo(self, params: Mapping[str, str], last_price: Decimal | None) -> AlgoOrder:
        """POST /fapi/v1/algoOrder: accept a conditional order (it waits outside the book).

        Raises:
            BinanceError: the order is rejected, with Binance's code.
        """
        spec = self.spec(params.get("symbol"))
        check_position_side(params, self.dual_side_position)
        order = self.algo.place(params, spec, (last_price, self.mark_price(spec.symbol)), self.now_ms())
        self._algo_event(order)
        return order

    def cancel_algo(self, params: Mapping[str, str]) -> AlgoOrder:
        """DELETE /fapi/v1/algoOrder.

        Raises:
            BinanceError: -2011 when the order is unknown or no longer open.
        """
        order = self.algo.find(params)
        if order is None or order.status != "NEW":
            raise BinanceError(400, -2011, "Unknown order sent.")
        self.algo.cancel(order, self.now_ms())
        self._algo_event(order)
        return order

    def check_algo_orders(self, last_prices: Mapping[str, Decimal | None]) -> None:
        """Trigger the conditional orders the last or mark price crossed: each places a MARKET order."""
        for symbol in {o.symbol for o in self.algo.open_orders(None)}:
            for order in self.algo.due(symbol, last_prices.get(symbol), self.mark_price(symbol)):
                now = self.now_ms()
                order.trigger_ms = order.update_ms = now
                quantity = abs(self.position(symbol).quantity) if order.close_position else order.quantity
                market = {"symbol": symbol, "side": order.side, "type": "MARKET", "quantity": fmt(quantity)}
                if order.reduce_only:
                    market["reduceOnly"] = "true"
                order.status = "TRIGGERING"  # forwarded to the matching engine
                self._algo_event(order)
                if self.hold_trigger(order):
                    continue  # stuck: no MARKET order, no further event (and no longer open to cancel)
                try:
                    placed, _ = self.place_order(market)
                except BinanceError as error:
                    order.status, order.reject_reason = "REJECTED", error.msg
                    self._algo_event(order)
                    continue
                order.actual_order_id = placed.order_id
                order.status = "TRIGGERED"
                self._algo_event(order)
                if not placed.is_open:
                    order.status = "FINISHED"
                    self._algo_event(order)

    def algo_view(self, order: AlgoOrder) -> dict[str, Any]:
        """The conditional order as Binance's REST answers show it."""
        return algo_view(order, self.specs[order.symbol])

    def _algo_event(self, order: AlgoOrder) -> None:
        self.outbox.append(algo_update(order, self.specs[order.symbol], self.now_ms()))

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

    # ----------------------------------------------------------------- Binance JSON
    def order_view(self, order: Order) -> dict[str, Any]:
        """The order as Binance's REST answers show it."""
        return order_view(order, self.specs[order.symbol])

    def _order_event(self, order: Order, execution_type: str, fill: Fill | None = None) -> None:
        self.outbox.append(order_trade_update(order, self.specs[order.symbol], execution_type, fill, self.now_ms()))

    def _account_event(self, symbol: str) -> None:
        now = self.now_ms()
        position = self.position(symbol)
        self.outbox.append(account_update(position, self.account.wallet_balance, self.unrealized_pnl(symbol), now))
