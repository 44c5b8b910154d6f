"""The launcher's one admin connection to NATS before any service runs, and the one write of
trading HALTED it makes.

`bulwark up` prepares the streams, holds trading HALTED on mainnet (`venue_profiles`) and applies
the HARD_SHUTDOWN gate (`shutdown_gate`) before it starts a service: all of it goes over the one
connection `admin_bus` opens, and every HALTED the launcher writes goes through `hold_halted`
(KV `trading_state`, which risk reads at its start), with the reason the operator will read.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from libs.bus import Bus
from libs.logging import get_logger
from proto import subjects
from proto.enums import TradingState
from proto.kv import TradingStateValue, encode_value

LAUNCHER = "launcher"
"""The launcher's component name on the bus, and the operator of the HALTED it writes on its own."""


@asynccontextmanager
async def admin_bus(nats_url: str, *, user: str = "", password: str = "") -> AsyncIterator[Bus]:
    """One connection as the launcher's admin user, closed on leaving.

    Args:
        nats_url: the system's NATS.
        user: the NATS user (the launcher's admin user when the bus has users).
        password: that user's password.
    """
    bus = Bus(LAUNCHER, get_logger(LAUNCHER))
    await bus.connect(nats_url, initial_connect_timeout_s=30, user=user, password=password)
    try:
        yield bus
    finally:
        await bus.close()


async def hold_halted(
    bus: Bus, reason: str, *, operator: str = LAUNCHER, ts_ns: int | None = None
) -> TradingStateValue:
    """Persist trading HALTED with its reason (KV `trading_state`, read by risk at its start).

    Args:
        bus: the launcher's admin connection.
        reason: why trading is held (shown to the operator as is).
        operator: who decided (the launcher itself unless an operator did).
        ts_ns: when (default: now).

    Returns:
        The value written.
    """
    value = TradingStateValue(
        state=TradingState.HALTED, reason=reason, operator=operator, ts_ns=time.time_ns() if ts_ns is None else ts_ns
    )
    await bus.kv_put(subjects.KEY_TRADING_STATE, encode_value(value))
    return value
