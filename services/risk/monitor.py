"""risk's periodic checks: the state-builder's hot state and the degradation level re-read, CB-2's
book depth and pause expiry, CB-4's resources (CPU, memory, decision latency).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import msgspec

from proto import subjects
from proto.replies import BookRequest

from . import adapters, breaker_effects, dependencies
from .breaker_rules import ResourceSample
from .core import RiskCore

BOOK_DEPTH_LEVELS = 20


async def monitor_once(risk: RiskCore) -> None:
    """One pass of the periodic checks: hot state, degradation, CB-2 expiry and book depth, CB-4 resources.

    The hot state is re-read from the state-builder every pass: the events keep it current,
    and this bounds how long a lost or late one (a reply or read that raced with an event,
    a re-published event arriving after a newer one) can leave risk with a wrong view.
    """
    await dependencies.probe_state_builder(risk)
    await dependencies.refresh_degradation(risk)
    if risk.breakers is None:
        return
    market = risk.breakers.abnormal_market
    for symbol in sorted(risk.limits.symbols):
        sample = await _book_sample(risk, symbol)
        if sample is None:
            continue
        depth, mid = sample
        for change in (
            market.on_depth(symbol, depth, risk.clock()),
            market.on_price(symbol, mid, risk.clock()) if mid is not None else None,
        ):
            if change is not None:
                await breaker_effects.apply_breaker_change(risk, change)
    for change in market.tick(risk.clock(), risk.hot_state):
        await breaker_effects.apply_breaker_change(risk, change)
    resource_sample = ResourceSample(
        cpu_fraction=risk.resources.cpu_fraction() if risk.resources else None,
        memory_fraction=risk.resources.memory_fraction() if risk.resources else None,
        p99_latency_ms=risk.latency.p99(),
    )
    change = risk.breakers.resource.on_sample(resource_sample, risk.clock())
    if change is not None:
        await breaker_effects.apply_breaker_change(risk, change)


async def _book_sample(risk: RiskCore, symbol: str) -> tuple[Decimal, Decimal | None] | None:
    request = msgspec.json.encode(BookRequest(symbol=symbol, depth=BOOK_DEPTH_LEVELS))
    try:
        raw = await risk.bus.request(subjects.SVC_STATE_BUILDER_BOOK, request, timeout_s=0.5)
    except Exception as exc:  # noqa: BLE001 - timeout or no responders: no sample this round
        risk.log.debug("book_sample_unavailable", symbol=symbol, error=f"{type(exc).__name__}: {exc}")
        return None
    dependencies.heard_state_builder(risk)
    return adapters.book_depth(raw)


async def monitor(risk: RiskCore, interval_s: float) -> None:
    """Run `monitor_once` forever; a failed pass is logged and retried next period."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await monitor_once(risk)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the monitor must survive a bus hiccup; logged, retried
            risk.log.exception("monitor_failed", exc, action_taken="retry next period")
