"""HARD_SHUTDOWN across a restart: SPEC §5 says only a manual restart leaves it.

The level is persisted (KV `degradation_level`), so a system stopped in HARD_SHUTDOWN comes back in
it: the services start, trading stays HALTED and nothing enters, and `bulwark up` says so. The
operator, once the cause is understood, restarts with `bulwark up --leave-hard-shutdown "why"`:
before any service starts, the level is set back to NORMAL (the watchdog then judges it again from
what it sees), trading is held HALTED with the reason (an operator resumes after checking), and
the decision is published for the audit log (`DegradationLevelChanged` and `OperatorActionTaken`
`leave_hard_shutdown`). Nothing else clears HARD_SHUTDOWN.
"""

from __future__ import annotations

import getpass
import time

from entrypoints.admin_bus import hold_halted
from libs.bus import Bus
from proto import subjects
from proto.enums import DegradationLevel
from proto.kv import DegradationLevelValue, decode_value, encode_value
from proto.messages import DegradationLevelChanged, OperatorActionTaken


async def _level(bus: Bus) -> DegradationLevelValue | None:
    found = await bus.kv_get(subjects.KEY_DEGRADATION_LEVEL)
    if found is None:
        return None
    return decode_value(DegradationLevelValue, found[0])


async def hard_shutdown_on_record(bus: Bus) -> DegradationLevelValue | None:
    """The persisted HARD_SHUTDOWN record, or None when the system is in any other level.

    Args:
        bus: the launcher's admin connection (`entrypoints.admin_bus`).
    """
    record = await _level(bus)
    return record if record is not None and record.level == DegradationLevel.HARD_SHUTDOWN else None


async def leave_hard_shutdown(bus: Bus, reason: str, *, operator: str = "") -> DegradationLevelValue | None:
    """Leave a persisted HARD_SHUTDOWN before the services start (see the module docstring).

    Args:
        bus: the launcher's admin connection (`entrypoints.admin_bus`).
        reason: why the operator restarts out of HARD_SHUTDOWN (required, recorded).
        operator: who decided (default: the OS user running `bulwark up`).

    Returns:
        The HARD_SHUTDOWN record that was left, or None when the system was not in HARD_SHUTDOWN
        (then nothing is written).

    Raises:
        ValueError: an empty reason.
    """
    reason = reason.strip()
    if not reason:
        raise ValueError("--leave-hard-shutdown needs a reason: what caused the shutdown and why it is safe now")
    who = operator or getpass.getuser()
    record = await _level(bus)
    if record is None or record.level != DegradationLevel.HARD_SHUTDOWN:
        return None
    because = f"restarted out of HARD_SHUTDOWN by {who}: {reason}"
    now = time.time_ns()
    await hold_halted(bus, because, operator=who, ts_ns=now)
    level = DegradationLevelValue(
        level=DegradationLevel.NORMAL, reason=because, previous=DegradationLevel.HARD_SHUTDOWN, ts_ns=now
    )
    await bus.kv_put(subjects.KEY_DEGRADATION_LEVEL, encode_value(level))
    changed = DegradationLevelChanged(
        previous=DegradationLevel.HARD_SHUTDOWN, current=DegradationLevel.NORMAL, reason=because
    )
    await bus.publish(subjects.EVT_DEGRADATION, changed)
    action = OperatorActionTaken(
        operator=who,
        role="admin",
        action="leave_hard_shutdown",
        target="system",
        reason=reason,
        details={"hard_shutdown_reason": record.reason, "hard_shutdown_since_ns": record.ts_ns},
    )
    await bus.publish(subjects.evt_operator("leave_hard_shutdown"), action)
    return record
