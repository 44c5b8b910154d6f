"""What risk's checks depend on from outside, and what follows when it changes or is lost.

The followed view: hot state per symbol, the market-data and order links (FM-N1, FM-N6), the
state-builder's liveness (FM-C1), the bus connection (FM-C6: lost → new entries HALTED until
reconnected and re-validated) and the watchdog's degradation level (SPEC §5: HARD_SHUTDOWN halts,
EMERGENCY_MODE and HARD_SHUTDOWN flatten). Also the initial reads at start.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from proto import subjects
from proto.enums import AlertSeverity, ConnectionState, DegradationLevel, HotStateStatus, TradingState
from proto.messages import AlertRaised, AlertResolved, LinkStateChanged

from . import adapters, flattening, trading_control
from .core import RiskCore
from .liveness import reply_hot_state
from .routing import OrderLinks
from .state import seed_position, track_position
from .trading_control import RISK_OPERATOR
from .trading_state import TradingTrigger

FLATTEN_LEVELS = frozenset({DegradationLevel.EMERGENCY_MODE, DegradationLevel.HARD_SHUTDOWN})
BUS_LOST_ALERT = "bus-lost.risk"
PROBE_TIMEOUT_S = 0.5
REVALIDATE_RETRY_S = 0.5


def on_order_link(risk: RiskCore, event: LinkStateChanged) -> None:
    """A position process's order link changed (`orders`): routing follows it (FM-N6)."""
    previous = risk.order_links.get(event.venue)
    risk.order_links[event.venue] = event.current
    if previous != event.current:
        risk.since[f"order_link.{event.venue}"] = event.ts_event_ns
        risk.log.info("order_link_changed", venue=event.venue, previous=previous, current=event.current)


def links(risk: RiskCore) -> OrderLinks:
    """The venues orders may go to and the state of each one's order link, for `routing.route_order`."""
    return OrderLinks(main=risk.venue, backup=risk.backup_venue, states=dict(risk.order_links))


def on_market_link(risk: RiskCore, state: ConnectionState | None, reason: str, since_ns: int | None = None) -> None:
    """The venue's market-data stream: entries wait while it is not CONNECTED (FM-N1).

    After a reconnect the stream is SUSPECT for the clean window; the books may already be
    VALID again (a snapshot and 3 fresh updates), but SPEC resumes trading only after the window.
    `since_ns`: when the link took `state` (default: now, when risk hears it; at start, the KV record's time).
    """
    previous = risk.market_link
    risk.market_link = state
    if state != previous:
        risk.since["market_link"] = since_ns or risk.clock()
        risk.log.info("market_link_changed", previous=previous, current=state, reason=reason)


def heard_state_builder(risk: RiskCore) -> None:
    """A sign of life from the state-builder (heartbeat or answer).

    When it comes back after being dead, the hot states risk remembers from before are
    forgotten: a restarted state-builder starts INVALID, and its view is re-read before any entry.
    """
    known_before = risk.state_builder.last_seen_ns is not None
    if risk.state_builder.heard(risk.monotonic()) and known_before:
        for symbol in risk.hot_state:
            risk.hot_state[symbol] = None
        risk.log.warning("state_builder_back", action_taken="hot state re-read before new entries")


async def probe_state_builder(risk: RiskCore) -> bool:
    """Ask the state-builder for every symbol's hot state; False when it does not answer."""
    try:
        raw = await risk.bus.request(subjects.SVC_STATE_BUILDER_SYMBOLS, timeout_s=PROBE_TIMEOUT_S)
        rows = adapters.parse_symbols_reply(raw)
    except Exception as exc:  # noqa: BLE001 - timeout, no responders, bad reply: it counts as dead
        risk.log.debug("state_builder_unavailable", error=f"{type(exc).__name__}: {exc}")
        return False
    heard_state_builder(risk)
    for symbol, row in rows.items():
        risk.hot_state[symbol] = reply_hot_state(row.hot_state, row.age_ms)
        if row.mark_price is not None:
            risk.state.mark_prices.setdefault(symbol, row.mark_price)
    return True


def entries_halted(risk: RiskCore) -> str | None:
    """Why new entries are HALTED by a lost dependency right now (None: they are not)."""
    if risk.bus_lost is not None:
        return risk.bus_lost
    return risk.state_builder.down_reason(risk.monotonic())


def market_link_gate(risk: RiskCore, symbol: str) -> str | None:
    """Why an entry in `symbol` waits for the market-data stream (None: it does not).

    Only said of a VALID symbol: one that is not VALID is denied for that, more precise, reason.
    """
    if risk.hot_state.get(symbol) != HotStateStatus.VALID:
        return None
    return market_link_reason(risk.market_link, risk.since.get("market_link"))


def market_link_reason(state: ConnectionState | None, since_ns: int | None) -> str | None:
    """What the market-data stream's state means for an entry, as it is (None: no wait).

    DISCONNECTED is said as such, with since when: the clean window comes only after a reconnect.
    """
    match state:
        case ConnectionState.SUSPECT:
            return "market data stream SUSPECT: clean window after a reconnect (FM-N1)"
        case ConnectionState.DISCONNECTED:
            since = f" since {utc_text(since_ns)}" if since_ns else ""
            return (
                f"market data stream DISCONNECTED{since}: reconnecting; entries wait for the reconnect and "
                "the clean window after it (FM-N1)"
            )
    return None


def utc_text(ns: int) -> str:
    """A UTC ns timestamp as an operator reads it (`2026-12-07 16:58:03 UTC`)."""
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def on_bus_connection(risk: RiskCore, connected: bool) -> None:
    """`Bus` connection listener: lost → new entries HALTED; back → re-validate, then lift."""
    if not connected:
        if risk.bus_lost is None:
            risk.bus_lost = "bus connection lost: new entries HALTED until reconnected and re-validated"
            risk.since["bus_lost"] = risk.clock()
            risk.log.error("bus_lost", action_taken="new entries HALTED (exits still allowed)")
            alert = AlertRaised(
                key=BUS_LOST_ALERT,
                severity=AlertSeverity.P1,
                component=subjects.RISK,
                title="risk lost the bus: new entries HALTED until reconnected and re-validated",
            )
            _spawn(risk, risk.bus.publish_buffered(subjects.EVT_ALERT_RAISED, alert))
        return
    if risk.bus_lost is not None:
        risk.bus_lost = "bus reconnected: new entries HALTED until state is re-validated"
        if risk.revalidation is not None:
            risk.revalidation.cancel()  # a flapping bus: only the newest re-validation counts
        risk.revalidation = _spawn(risk, revalidate(risk))


def _spawn(risk: RiskCore, coro: Any) -> asyncio.Task[None]:
    task: asyncio.Task[None] = asyncio.create_task(coro)
    risk.bus_tasks.add(task)  # keep a reference until it ends
    task.add_done_callback(risk.bus_tasks.discard)
    return task


async def revalidate(risk: RiskCore) -> None:
    """After a reconnect: re-read hot state, positions and degradation, then lift the bus halt."""
    while risk.bus.connected:
        try:
            for symbol in sorted(risk.limits.symbols):
                risk.hot_state[symbol] = await adapters.read_hot_state(risk.bus, symbol)
                for venue in risk.venues:
                    last = await adapters.read_last_position(risk.bus, venue, symbol)
                    if last is not None:
                        track_position(risk.state, last)
            await refresh_degradation(risk)
            await probe_state_builder(risk)  # its answer, when there is one, is fresher than KV
            await risk.bus.publish(
                subjects.EVT_ALERT_RESOLVED,
                AlertResolved(key=BUS_LOST_ALERT, component=subjects.RISK, reason="reconnected and re-validated"),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a flapping bus: keep the halt, try again
            risk.log.warning("revalidation_failed", error=f"{type(exc).__name__}: {exc}", action_taken="retry")
            await asyncio.sleep(REVALIDATE_RETRY_S)
            continue
        risk.bus_lost = None
        risk.log.warning(
            "bus_revalidated",
            hot_state={k: (v.value if v else None) for k, v in risk.hot_state.items()},
            action_taken="new entries allowed again",
        )
        return


async def load_initial_state(risk: RiskCore) -> None:
    """Hot state from KV; positions from the ORDERS stream unless `recovery.recover` rebuilt them from it.

    After a recovery the positions are the log's up to what risk processed, and the `risk-events`
    consumer delivers the rest with their effects (CB-1/CB-3 counting): jumping to the newest
    position here would make those older events look stale and skip their counting.
    """
    # The followers are subscribed already: an event that arrives while a KV read is under way
    # is newer than what the read returns, so a read only fills what no event has set.
    if risk.market_link is None:
        link = await adapters.read_link(risk.bus, risk.venue, subjects.MARKET_WS_LINK)
        if risk.market_link is None and link is not None:
            on_market_link(risk, link.state, "from KV", link.ts_ns or None)
    for venue in risk.venues:
        if venue not in risk.order_links:
            state = await adapters.read_link_state(risk.bus, venue, subjects.ORDER_LINK)
            risk.order_links.setdefault(venue, state)
    for symbol in sorted(risk.limits.symbols):
        if symbol not in risk.hot_state:
            status = await adapters.read_hot_state(risk.bus, symbol)
            risk.hot_state.setdefault(symbol, status)
        if risk.recovery is not None:
            continue
        for venue in risk.venues:
            last = await adapters.read_last_position(risk.bus, venue, symbol)
            if last is not None:
                seed_position(risk.state, last)
    await refresh_degradation(risk)
    risk.log.info(
        "risk_state_loaded",
        trading_state=risk.trading.state.value,
        degradation=risk.degradation.value if risk.degradation else None,
        hot_state={k: (v.value if v else None) for k, v in risk.hot_state.items()},
        positions={k: str(v) for k, v in risk.state.positions.items()},
    )


async def refresh_degradation(risk: RiskCore) -> None:
    """Re-read KV `degradation_level` and apply its effects when it changed (SPEC §5)."""
    level, ts_ns = await adapters.read_degradation_level(risk.bus)
    previous = risk.degradation
    if level == previous:
        return
    risk.degradation = level
    risk.since["degradation"] = ts_ns or risk.clock()
    risk.log.warning(
        "degradation_level_applied",
        previous=previous.value if previous else None,
        current=level.value if level else "UNKNOWN",
        action_taken="pre-trade checks follow the level",
    )
    if level == DegradationLevel.HARD_SHUTDOWN and risk.trading.state != TradingState.HALTED:
        await trading_control.change_state(risk, TradingTrigger.HALT, RISK_OPERATOR, "degradation level HARD_SHUTDOWN")
    if level in FLATTEN_LEVELS:
        await flattening.flatten(risk, f"{level.value}:{ts_ns}", f"degradation level {level.value}")
