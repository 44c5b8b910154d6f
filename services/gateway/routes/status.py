"""What the system is doing: `/v1/status` (trading state, degradation, health, components, symbols
with `can_enter` and what blocks an entry, breakers, links, dependencies, venues) and
`/v1/book/{symbol}` (state-builder's order book)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, TypeVar

import msgspec
from fastapi import APIRouter, Path, Query

from libs.settings import Settings
from proto import subjects
from proto.enums import ComponentState, DegradationLevel, TradingState
from proto.kv import DegradationLevelValue, HealthValue, LinkValue, PreflightValue, TradingStateValue, decode_breaker
from proto.messages import HotStateRecord, SymbolsReply
from proto.replies import BookReply, BookRequest, EntryGatesReply, RiskStateReply
from services.gateway import entry_gates
from services.gateway.api_models import ERROR_RESPONSES, BookResponse, StatusResponse
from services.gateway.auth import Principal
from services.gateway.context import Gateway
from services.gateway.dependencies import VIEWER, GatewayDep
from services.gateway.errors import ApiError
from services.gateway.replies import book_of, reader, stored_symbol_status, symbols_of

router = APIRouter()

R = TypeVar("R", bound=msgspec.Struct)
ENTRY_GATES_TIMEOUT_S = 1.5
"""How long `/v1/status` waits for risk's entry gates (risk may first ask the state-builder, 0.5 s)."""


@router.get("/v1/status", response_model=StatusResponse, responses=ERROR_RESPONSES, tags=["status"])
async def status(gateway: GatewayDep, _: Principal = VIEWER) -> dict[str, Any]:
    """Trading state, degradation, health, components, symbols, breakers and links."""
    views = gateway.tracker.view(gateway.clock())
    gateway.restarts.keep_only(set(views))
    components = {name: {**view.as_dict(), **gateway.restarts.view(name)} for name, view in views.items()}
    states, symbols, breakers, links, dependencies, gates = await asyncio.gather(
        asyncio.gather(
            gateway.kv_value(TradingStateValue, subjects.KEY_TRADING_STATE),
            gateway.kv_value(DegradationLevelValue, subjects.KEY_DEGRADATION_LEVEL),
            gateway.kv_value(HealthValue, subjects.KEY_HEALTH),
            gateway.kv_value(PreflightValue, subjects.key_preflight(gateway.ctx.settings.venue)),
        ),
        _symbols(gateway),
        gateway.kv_listing(subjects.KEY_BREAKER_PREFIX, decode_breaker),
        gateway.kv_listing(subjects.KEY_LINK_PREFIX, reader(LinkValue)),
        gateway.dependencies(),
        # Risk may ask the state-builder first, as a decision would (up to its probe timeout).
        quick_query(gateway, subjects.SVC_RISK_ENTRY_GATES, subjects.RISK, EntryGatesReply, ENTRY_GATES_TIMEOUT_S),
    )
    trading, degradation, health, preflight = states
    settings = gateway.ctx.settings
    position = {
        venue: entry_gates.position_blockers(venue, component, views.get(component), preflight)
        for venue in settings.venues
        for component in (subjects.position_component(venue, settings.venue),)
    }
    entries = entry_gates.can_enter(gates, sorted(symbols), position, settings.venue)
    for symbol, entry in entries.items():
        symbols[symbol] = {**entry, **symbols[symbol]}
    trading_state = trading.state.value if trading is not None else await _trading_state_from_risk(gateway)
    return {
        "venues": venue_status(gateway.ctx.settings, components, {key: link.value for key, link in links.items()}),
        "trading_state": trading_state,
        "degradation_level": degradation.level.value if degradation is not None else DegradationLevel.NORMAL.value,
        "health": health.health.value if health is not None else "UNKNOWN",
        "components": components,
        "symbols": symbols,
        "breakers": {key: breaker.shown for key, breaker in breakers.items()},
        "links": {key: link.shown for key, link in links.items()},
        "dependencies": dependencies,
        # The main venue's latest preflight (every check: name, ok, message); null before the first.
        "preflight": msgspec.to_builtins(preflight) if preflight is not None else None,
        "mode": "PAPER" if gateway.ctx.settings.paper else "LIVE",
        "paper": gateway.ctx.settings.paper,
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
    reply = await gateway.request(
        subjects.SVC_STATE_BUILDER_BOOK,
        BookRequest(symbol=symbol, depth=depth),
        BookReply,
        gateway.config.request_timeout_s,
        subjects.STATE_BUILDER,
    )
    return book_of(reply, symbol)


async def _trading_state_from_risk(gateway: Gateway) -> str:
    """Risk's trading state when the KV record cannot be read; HALTED when risk cannot be asked
    either (or answers something unreadable): with the bus or risk gone nothing is approved, so
    that is what trading is (FM-C6)."""
    reply = await quick_query(gateway, subjects.SVC_RISK_STATE, subjects.RISK, RiskStateReply)
    return reply.trading_state.value if reply is not None else TradingState.HALTED.value


async def _symbols(gateway: Gateway) -> dict[str, Any]:
    """Every symbol's hot state: state-builder's answer, else the KV records (without an age)."""
    answered = symbols_of(
        await quick_query(gateway, subjects.SVC_STATE_BUILDER_SYMBOLS, subjects.STATE_BUILDER, SymbolsReply)
    )
    if answered is not None:
        return answered
    return {
        symbol: stored_symbol_status(await gateway.kv_value(HotStateRecord, subjects.key_hot_state(symbol)))
        for symbol in gateway.ctx.settings.symbols
    }


async def quick_query(
    gateway: Gateway, subject: str, component: str, kind: type[R], timeout_s: float | None = None
) -> R | None:
    """A `svc.*` query of `component` within the status's short timeout: the reply, or None when the
    component does not answer, refuses or answers something unreadable (the status falls back)."""
    try:
        reply = await gateway.request(subject, None, kind, timeout_s or gateway.config.symbols_timeout_s, component)
    except ApiError:
        return None
    return reply if isinstance(reply, kind) else None


def venue_status(settings: Settings, components: dict[str, Any], links: dict[str, LinkValue]) -> dict[str, Any]:
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
            "order_link": link.state.value if link is not None else None,
            "order_link_reason": (link.reason or None) if link is not None else None,
            "position_component": component,
            "position_state": (components.get(component) or {}).get("state", ComponentState.DOWN.value),
            "mode": "PAPER" if settings.paper else "LIVE",
        }
    if settings.paper_venue:
        # The paper order link beside the live venues: only paper-mode strategies' orders go there.
        component = subjects.position_component(settings.paper_venue, settings.venue)
        link = links.get(f"{settings.paper_venue}.{subjects.ORDER_LINK}")
        venues[settings.paper_venue] = {
            "role": "paper",
            "order_link": link.state.value if link is not None else None,
            "order_link_reason": (link.reason or None) if link is not None else None,
            "position_component": component,
            "position_state": (components.get(component) or {}).get("state", ComponentState.DOWN.value),
            "mode": "PAPER",
        }
    return venues
