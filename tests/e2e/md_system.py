"""Helpers of the market-data fault e2e tests (tests/e2e/test_md_faults_system.py).

Everything here talks to a running `bulwark up` (entrypoints/harness/system.py) from the outside only:
faults go to the simulator's `/_sim/faults`, and every observation comes from the gateway's REST
API (`/v1/status`, `/v1/book/{symbol}`, `/v1/events`, `/v1/alerts`, `/v1/orders`), checked
against the simulator's own book (`/_sim/book/{symbol}?update_id=`) as the independent reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from entrypoints.harness.system import RunningSystem
from tests.e2e.system_api import SystemApi, connect
from tests.support.polling import eventually

SYMBOL = "BTCUSDT"
VENUE = "binance-usdm"
MARKET_WS = f"{VENUE}.market-ws"
MARKET_REST = f"{VENUE}.market-rest"
HOT = "HotStateStatusChanged"
LINK = "LinkStateChanged"
DEPTH = 20
ENTRY_QTY = {"BTCUSDT": "0.002", "ETHUSDT": "0.05"}  # above the venue's minimum notional, far under the limits

log = logging.getLogger("tests.e2e.md_system")


def levels(raw: list[list[str]]) -> list[tuple[Decimal, Decimal]]:
    """Book levels as decimals, so "0.010" and "0.01" compare equal."""
    return [(Decimal(price), Decimal(qty)) for price, qty in raw]


@dataclass
class Fault:
    """One injected fault and when it was injected (wall clock, the events' clock)."""

    id: str
    spec: dict[str, Any]
    start_ns: int


@dataclass
class BookAudit:
    """What the book watcher saw: statuses served and the comparisons of VALID books."""

    polled: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    compared: int = 0
    outside_history: int = 0
    errors: int = 0
    mismatches: list[str] = field(default_factory=list)


class Api(SystemApi):
    """The gateway and the simulator of one running system, as the market-data tests observe them."""

    # ------------------------------------------------------------------ simulator

    async def inject(self, **spec: Any) -> Fault:
        start = time.time_ns()
        return Fault(await self.post_fault(spec), spec, start)

    async def lift(self, fault: Fault) -> int:
        """Delete a fault; returns when (ns) the venue was healthy again."""
        response = await self.venue.delete(f"/_sim/faults/{fault.id}")
        assert response.status_code in (200, 404), response.text
        return time.time_ns()

    async def fault_view(self, fault: Fault) -> dict[str, Any]:
        response = await self.venue.get("/_sim/faults")
        response.raise_for_status()
        return next((f for f in response.json()["faults"] if f["id"] == fault.id), {})

    async def venue_book(self, symbol: str, update_id: int) -> dict[str, Any] | None:
        """The simulator's book right after `update_id`; None when it is older than its history."""
        response = await self.venue.get(
            f"/_sim/book/{symbol}", params={"depth": DEPTH, "update_id": update_id}, timeout=10.0
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    # ------------------------------------------------------------------ gateway reads

    async def hot_state(self, symbol: str = SYMBOL) -> str | None:
        return (await self.status())["symbols"].get(symbol, {}).get("hot_state")

    async def link_state(self, link: str = MARKET_WS, status: dict[str, Any] | None = None) -> str | None:
        """A link's state from `/v1/status`; from its newest `LinkStateChanged` when the status has no
        links (the gateway answers `links: {}` when its KV key listing fails, see the report)."""
        links = (status or await self.status())["links"]
        if links:
            return (links.get(link) or {}).get("state")
        name = link.split(".", 1)[1]
        response = await self.gateway.get("/v1/events", params={"type": LINK, "limit": 50})
        response.raise_for_status()
        newest = [e for e in response.json()["events"] if e["payload"].get("link") == name]
        return str(newest[0]["payload"]["current"]) if newest else None

    async def book(self, symbol: str = SYMBOL) -> dict[str, Any]:
        response = await self.gateway.get(f"/v1/book/{symbol}", params={"depth": DEPTH})
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def hot_events(self, since_ns: int, symbol: str = SYMBOL) -> list[dict[str, Any]]:
        return await self.events(HOT, since_ns, symbol=symbol)

    async def link_events(self, since_ns: int, link: str = "market-ws") -> list[dict[str, Any]]:
        return [e for e in await self.events(LINK, since_ns) if e["payload"].get("link") == link]

    async def wait_hot(
        self, since_ns: int, states: tuple[str, ...], symbol: str = SYMBOL, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        """The first audited hot-state transition of `symbol` into one of `states` at/after `since_ns`."""

        async def found() -> dict[str, Any] | None:
            hits = [e for e in await self.hot_events(since_ns, symbol) if e["payload"]["current"] in states]
            return hits[0] if hits else None

        async def failure() -> str:
            seen = [(e["payload"]["current"], e["payload"]["reason"]) for e in await self.hot_events(since_ns, symbol)]
            return f"{symbol}: no transition into {states} within {timeout_s}s; saw {seen}"

        event: dict[str, Any] = await eventually(found, timeout_s, failure)
        return event

    async def wait_link(
        self, since_ns: int, states: tuple[str, ...], link: str = "market-ws", timeout_s: float = 30.0
    ) -> dict[str, Any]:
        async def found() -> dict[str, Any] | None:
            hits = [e for e in await self.link_events(since_ns, link) if e["payload"]["current"] in states]
            return hits[0] if hits else None

        async def failure() -> str:
            seen = [(e["payload"]["current"], e["payload"]["reason"]) for e in await self.link_events(since_ns, link)]
            return f"link {link}: no transition into {states} within {timeout_s}s; saw {seen}"

        event: dict[str, Any] = await eventually(found, timeout_s, failure)
        return event

    # ------------------------------------------------------------------ conditions

    async def wait_symbol(self, states: tuple[str, ...], symbol: str = SYMBOL, timeout_s: float = 30.0) -> str:
        async def reached() -> str | None:
            state = await self.hot_state(symbol)
            return state if state in states else None

        async def failure() -> str:
            return f"{symbol} not in {states} within {timeout_s}s: {await self.status()}"

        state: str = await eventually(reached, timeout_s, failure)
        return state

    async def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """Both symbols VALID, the market stream CONNECTED, trading ACTIVE, no EMERGENCY_MODE."""

        async def healthy() -> bool:
            status = await self.status()
            return (
                all(s.get("hot_state") == "VALID" for s in status["symbols"].values())
                and await self.link_state(MARKET_WS, status) == "CONNECTED"
                and status["trading_state"] == "ACTIVE"
                and status["degradation_level"] not in ("EMERGENCY_MODE", "HARD_SHUTDOWN")
            )

        async def failure() -> str:
            status = await self.status()
            status.pop("breakers", None), status.pop("components", None)
            return f"system not healthy within {timeout_s}s: {status}"

        await eventually(healthy, timeout_s, failure)

    # ------------------------------------------------------------------ orders

    async def entry(self, symbol: str = SYMBOL) -> dict[str, Any]:
        """Submit an operator MARKET order that adds exposure (never a reducing one) and return the decision."""
        response = await self.gateway.get("/v1/positions")
        response.raise_for_status()
        position = sum(
            (Decimal(str(p.get("quantity", "0"))) for p in response.json()["positions"] if p.get("symbol") == symbol),
            Decimal(0),
        )
        side = "SELL" if position < 0 else "BUY"
        body = {"symbol": symbol, "side": side, "type": "MARKET", "quantity": ENTRY_QTY[symbol]}
        return await self.decided(await self.post_order(body, f"e2e-md-{uuid.uuid4()}"))

    async def assert_entry_denied(
        self, symbol: str = SYMBOL, reasons: tuple[str, ...] = ("not VALID",)
    ) -> dict[str, Any]:
        """While `symbol` is not VALID (checked before and after), a new entry is DENIED, for one of
        `reasons` (the hot-state check by default; a fault may also raise the degradation level)."""
        before = await self.hot_state(symbol)
        assert before != "VALID", f"{symbol} is VALID: nothing to deny"
        await asyncio.sleep(0.3)  # risk learns hot-state changes from the event stream: let it catch up
        answer = await self.entry(symbol)
        after = await self.hot_state(symbol)
        assert after != "VALID", f"{symbol} turned VALID during the order: the check proves nothing"
        assert answer["status"] == "DENIED", f"entry not denied while {symbol} was {before}/{after}: {answer}"
        assert any(reason in (answer.get("reason") or "") for reason in reasons), (reasons, answer)
        return answer


def api_for(system: RunningSystem) -> AbstractAsyncContextManager[Api]:
    return connect(system, Api)


@asynccontextmanager
async def watch_books(api: Api, symbol: str = SYMBOL, interval_s: float = 0.15) -> AsyncIterator[BookAudit]:
    """Poll the gateway's book while the body runs; every VALID book is compared with the simulator's
    book at its update id, level by level (mismatches are collected, the caller asserts none)."""
    audit = BookAudit()
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            try:
                served = await api.book(symbol)
                audit.polled += 1
                audit.statuses[served["status"]] += 1
                if served["status"] == "VALID":
                    truth = await api.venue_book(symbol, int(served["last_update_id"]))
                    if truth is None:
                        audit.outside_history += 1
                    else:
                        audit.compared += 1
                        for side in ("bids", "asks"):
                            if levels(served[side]) != levels(truth[side]):
                                audit.mismatches.append(
                                    f"{side} at update {served['last_update_id']}: served {served[side][:3]}... "
                                    f"venue {truth[side][:3]}..."
                                )
            except httpx.HTTPError:
                audit.errors += 1  # a slow answer under load: the next poll tries again
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    task = asyncio.create_task(poll(), name=f"book-watch-{symbol}")
    try:
        yield audit
    finally:
        stop.set()
        await task


def assert_books_exact(audit: BookAudit, minimum: int = 3) -> None:
    """No VALID book differed from the venue's, and enough of them were compared to mean something."""
    assert not audit.mismatches, audit.mismatches[:5]
    assert audit.compared >= minimum, f"only {audit.compared} VALID books compared: {audit}"


async def more_valid_books(audit: BookAudit, count: int = 3, timeout_s: float = 30.0) -> None:
    """Keep the watcher running until `count` more VALID books were compared (after recovery)."""
    target = audit.compared + count

    async def enough() -> bool:
        return audit.compared >= target

    await eventually(enough, timeout_s)


def ms(later_ns: int | None, earlier_ns: int | None) -> float | None:
    if later_ns is None or earlier_ns is None:
        return None
    return round((later_ns - earlier_ns) / 1e6, 1)
