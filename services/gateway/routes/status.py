"""What the system is doing: `/v1/status` (trading state, degradation, health, components, symbols,
breakers, links, dependencies, venues) and `/v1/book/{symbol}` (state-builder's order book)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from libs.settings import Settings
from proto import subjects
from proto.enums import ComponentState, TradingState
from services.gateway.api_models import ERROR_RESPONSES, BookResponse, StatusResponse
from services.gateway.auth import Principal
from services.gateway.context import Gateway
from services.gateway.dependencies import VIEWER, GatewayDep
from services.gateway.errors import ApiError
from services.gateway.replies import book_of, symbol_status, symbols_of, text_field, trading_state_of

router = APIRouter()


@router.get("/v1/status", response_model=StatusResponse, responses=ERROR_RESPONSES, tags=["status"])
async def status(gateway: GatewayDep, _: Principal = VIEWER) -> dict[str, Any]:
    """Trading state, degradation, health, components, symbols, breakers and links."""
    components = {name: view.as_dict() for name, view in gateway.tracker.view(gateway.clock()).items()}
    trading, degradation, health, symbols, breakers, links, dependencies = await asyncio.gather(
        gateway.kv_json(subjects.KEY_TRADING_STATE),
        gateway.kv_json(subjects.KEY_DEGRADATION_LEVEL),
        gateway.kv_json(subjects.KEY_HEALTH),
        _symbols(gateway),
        gateway.kv_prefixed("breaker."),
        gateway.kv_prefixed("link."),
        gateway.dependencies(),
    )
    trading_state = text_field(trading, "state")
    if trading_state is None:
        trading_state = await _trading_state_from_risk(gateway)
    return {
        "venues": venue_status(gateway.ctx.settings, components, links),
        "trading_state": trading_state,
        "degradation_level": text_field(degradation, "level") or "NORMAL",
        "health": text_field(health, "health") or "UNKNOWN",
        "components": components,
        "symbols": symbols,
        "breakers": breakers,
        "links": links,
        "dependencies": dependencies,
    }


@router.get("/v1/book/{symbol}", response_model=BookResponse, responses=ERROR_RESPONSES, tags=["market"])
async def book(
    gateway: GatewayDep,
    symbol: Annotated[str, Path(max_length=32)],
    depth: Annotated[int, Query(ge=1, le=1000)] = 20,
    _: Principal = VIEWER,
) -> dict[str, Any]:
    """The order book of a symbol from the state-builder (decimal strings)."""
    settings = gateway.ctx.settings
    symbol = symbol.upper()
    if symbol not in settings.symbols:
        raise ApiError(404, "not_found", f"unknown symbol {symbol}", {"symbols": list(settings.symbols)})
    reply = await gateway.request_json(
        subjects.service_query(subjects.STATE_BUILDER, "book"),
        {"symbol": symbol, "depth": depth},
        gateway.config.request_timeout_s,
        subjects.STATE_BUILDER,
    )
    return book_of(reply, symbol)


async def _trading_state_from_risk(gateway: Gateway) -> str:
    """Risk's trading state when the KV record cannot be read; HALTED when risk cannot be asked
    either: with the bus or risk gone nothing is approved, so that is what trading is (FM-C6)."""
    try:
        reply = await gateway.request_json(
            subjects.service_query(subjects.RISK, "state"), {}, gateway.config.symbols_timeout_s, subjects.RISK
        )
    except ApiError:
        return TradingState.HALTED.value
    return trading_state_of(reply) or TradingState.HALTED.value


async def _symbols(gateway: Gateway) -> dict[str, Any]:
    """Every symbol's hot state: state-builder's answer, else the KV records (without an age)."""
    try:
        reply = await gateway.request_json(
            subjects.service_query(subjects.STATE_BUILDER, "symbols"),
            {},
            gateway.config.symbols_timeout_s,
            subjects.STATE_BUILDER,
        )
    except ApiError:
        reply = None
    answered = symbols_of(reply)
    if answered is not None:
        return answered
    symbols: dict[str, Any] = {}
    for symbol in gateway.ctx.settings.symbols:
        value = await gateway.kv_json(subjects.key_hot_state(symbol))
        entry = symbol_status(value)
        entry["age_ms"] = None
        symbols[symbol] = entry
    return symbols


def venue_status(settings: Settings, components: dict[str, Any], links: dict[str, Any]) -> dict[str, Any]:
    """`/v1/status` `venues`: every venue orders may go to, main first (FM-N6).

    `components` and `links` are the status's own (`<venue>.orders` is the order link a venue's
    position process reports).
    """
    venues: dict[str, Any] = {}
    for venue in settings.venues:
        component = subjects.position_component(venue, settings.venue)
        link = links.get(f"{venue}.{subjects.ORDER_LINK}")
        venues[venue] = {
            "role": "main" if venue == settings.venue else "backup",
            "order_link": text_field(link, "state"),
            "order_link_reason": text_field(link, "reason"),
            "position_component": component,
            "position_state": (components.get(component) or {}).get("state", ComponentState.DOWN.value),
        }
    return venues
