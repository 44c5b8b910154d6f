"""HARD_SHUTDOWN across a restart, on a real nats-server: `bulwark up` keeps a persisted
HARD_SHUTDOWN (and says so), and `--leave-hard-shutdown REASON` is the one way out: level NORMAL,
trading held HALTED, the decision on the CONTROL stream for the audit log."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from entrypoints.shutdown_gate import hard_shutdown_on_record, leave_hard_shutdown
from libs.bus import Bus
from proto import subjects
from proto.codec import decode
from proto.enums import DegradationLevel, TradingState
from proto.kv import DegradationLevelValue, TradingStateValue, decode_value, encode_value
from proto.messages import DegradationLevelChanged, OperatorActionTaken


@pytest_asyncio.fixture(name="bus")
async def bus_fixture(nats_url: str) -> AsyncIterator[Bus]:
    bus = Bus("test")
    await bus.connect(nats_url)
    await bus.ensure_streams()
    try:
        yield bus
    finally:
        await bus.close()


async def _kv(bus: Bus, kind: type, key: str) -> object:
    found = await bus.kv_get(key)
    assert found is not None, key
    return decode_value(kind, found[0])


async def test_restart_when_hard_shutdown_on_record_then_kept_until_left_with_a_reason_and_audited(bus: Bus) -> None:
    stop = DegradationLevelValue(
        level=DegradationLevel.HARD_SHUTDOWN, reason="operator emergency stop (by alice)", ts_ns=123
    )
    await bus.kv_put(subjects.KEY_DEGRADATION_LEVEL, encode_value(stop))

    # A plain restart keeps it.
    assert await hard_shutdown_on_record(bus) == stop
    assert await _kv(bus, DegradationLevelValue, subjects.KEY_DEGRADATION_LEVEL) == stop
    with pytest.raises(ValueError, match="needs a reason"):
        await leave_hard_shutdown(bus, "  ")
    assert await _kv(bus, DegradationLevelValue, subjects.KEY_DEGRADATION_LEVEL) == stop

    # The manual restart out of it: NORMAL, trading HALTED, both decisions published.
    left = await leave_hard_shutdown(bus, "bad fill feed fixed, books checked", operator="bob")
    assert left == stop
    level = await _kv(bus, DegradationLevelValue, subjects.KEY_DEGRADATION_LEVEL)
    assert isinstance(level, DegradationLevelValue)
    assert (level.level, level.previous) == (DegradationLevel.NORMAL, DegradationLevel.HARD_SHUTDOWN)
    trading = await _kv(bus, TradingStateValue, subjects.KEY_TRADING_STATE)
    assert isinstance(trading, TradingStateValue)
    assert trading.state == TradingState.HALTED and "bad fill feed fixed" in trading.reason
    changed = decode((await bus.js.get_last_msg(subjects.STREAM_CONTROL.name, subjects.EVT_DEGRADATION)).data)
    assert isinstance(changed, DegradationLevelChanged)
    assert (changed.previous, changed.current) == (DegradationLevel.HARD_SHUTDOWN, DegradationLevel.NORMAL)
    action = decode(
        (await bus.js.get_last_msg(subjects.STREAM_CONTROL.name, subjects.evt_operator("leave_hard_shutdown"))).data
    )
    assert isinstance(action, OperatorActionTaken)
    assert (action.operator, action.action, action.reason) == (
        "bob",
        "leave_hard_shutdown",
        "bad fill feed fixed, books checked",
    )
    assert action.details["hard_shutdown_reason"] == stop.reason

    # Nothing on record any more: a second leave changes nothing, a restart keeps nothing.
    assert await hard_shutdown_on_record(bus) is None
    assert await leave_hard_shutdown(bus, "again", operator="bob") is None
