"""Binance JSON views of the simulated venue's state: REST answers for orders, positions, balances,
the account and user trades, and the simulator's own `GET /_sim/state` record."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from services.venue_sim.domain.brackets import max_notional
from services.venue_sim.domain.rules import BinanceError, fmt

if TYPE_CHECKING:
    from services.venue_sim.domain.exchange import Exchange

ZERO = Decimal(0)


def position_views(exchange: Exchange, symbol: str | None = None) -> list[dict[str, Any]]:
    """GET /fapi/v2/positionRisk rows (every symbol, flat ones included)."""
    rows = []
    for name in sorted(exchange.specs):
        if symbol is not None and name != symbol:
            continue
        position = exchange.position(name)
        mark = exchange.mark_price(name)
        rows.append(
            {
                "symbol": name,
                "positionAmt": fmt(position.quantity),
                "entryPrice": fmt(position.entry_price, 8),
                "breakEvenPrice": fmt(position.entry_price, 8),
                "markPrice": fmt(mark, 8),
                "unRealizedProfit": fmt(exchange.unrealized_pnl(name), 8),
                "liquidationPrice": "0",
                "leverage": str(exchange.leverage_of(name)),
                "maxNotionalValue": str(max_notional(exchange.leverage_of(name))),
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


def balance_views(exchange: Exchange) -> list[dict[str, Any]]:
    """GET /fapi/v2/balance rows."""
    wallet = exchange.account.wallet_balance
    available = exchange.available_balance()
    return [
        {
            "accountAlias": "SimAcct",
            "asset": "USDT",
            "balance": fmt(wallet, 8),
            "crossWalletBalance": fmt(wallet, 8),
            "crossUnPnl": fmt(exchange.total_unrealized(), 8),
            "availableBalance": fmt(available, 8),
            "maxWithdrawAmount": fmt(max(available, ZERO), 8),
            "marginAvailable": True,
            "updateTime": exchange.now_ms(),
        }
    ]


def account_view(exchange: Exchange) -> dict[str, Any]:
    """GET /fapi/v2/account."""
    wallet = exchange.account.wallet_balance
    unrealized = exchange.total_unrealized()
    position_margin = exchange.position_margin()
    order_margin = exchange.open_order_margin()
    available = exchange.available_balance()
    positions = [
        {
            "symbol": row["symbol"],
            "initialMargin": fmt(abs(Decimal(row["notional"])) / int(row["leverage"]), 8),
            "maintMargin": "0",
            "unrealizedProfit": row["unRealizedProfit"],
            "positionInitialMargin": fmt(abs(Decimal(row["notional"])) / int(row["leverage"]), 8),
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
        for row in position_views(exchange)
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
                "updateTime": exchange.now_ms(),
            }
        ],
        "positions": positions,
    }


def user_trade_views(exchange: Exchange, params: Mapping[str, str]) -> list[dict[str, Any]]:
    """GET /fapi/v1/userTrades (symbol required; orderId, fromId, startTime, endTime, limit)."""
    spec = exchange.spec(params.get("symbol"))
    try:
        limit = min(int(params.get("limit") or 500), 1000)
        order_id = int(params["orderId"]) if params.get("orderId") else None
        from_id = int(params["fromId"]) if params.get("fromId") else None
        start = int(params["startTime"]) if params.get("startTime") else None
        end = int(params["endTime"]) if params.get("endTime") else None
    except ValueError as exc:
        raise BinanceError(400, -1100, "Illegal characters found in a parameter.") from exc
    rows = []
    for fill in exchange.fills:
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


def state_view(exchange: Exchange) -> dict[str, Any]:
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
            for o in exchange.orders.values()
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
            for f in exchange.fills
        ],
        "positions": [
            {
                "symbol": p.symbol,
                "quantity": fmt(p.quantity),
                "entry_price": fmt(p.entry_price),
                "realized_pnl": fmt(p.realized_pnl),
                "unrealized_pnl": fmt(exchange.unrealized_pnl(p.symbol)),
            }
            for p in exchange.account.positions.values()
        ],
        "balance": fmt(exchange.account.wallet_balance),
        "algo_orders": [
            {
                "algo_id": o.algo_id,
                "client_algo_id": o.client_algo_id,
                "symbol": o.symbol,
                "side": o.side,
                "type": o.type,
                "status": o.status,
                "quantity": fmt(o.quantity),
                "trigger_price": fmt(o.trigger_price),
                "working_type": o.working_type,
                "reduce_only": o.reduce_only,
                "actual_order_id": o.actual_order_id,
                "update_time": o.update_ms,
            }
            for o in exchange.algo.orders.values()
        ],
    }
