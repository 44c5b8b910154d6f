"""`bulwark up --venue binance` writes trading HALTED before any service starts, on a real nats-server:
the value risk reads at its start."""

from __future__ import annotations

from entrypoints.admin_bus import admin_bus, hold_halted
from entrypoints.venue_profiles import MAINNET_HALT_REASON
from proto import subjects
from proto.enums import TradingState
from services.risk.trading_state import load_trading_state


async def test_hold_halted_when_written_then_risk_starts_halted_with_the_reason(nats_url: str) -> None:
    async with admin_bus(nats_url) as bus:
        await bus.ensure_streams()
        await hold_halted(bus, MAINNET_HALT_REASON)
        entry = await bus.kv_get(subjects.KEY_TRADING_STATE)
        state = load_trading_state(entry[0] if entry else None)
    assert state.state == TradingState.HALTED
    assert state.reason == MAINNET_HALT_REASON and state.operator == "launcher"
