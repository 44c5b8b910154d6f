"""Hot-state status machine (SPEC FM-D1) with a fake clock: exact thresholds."""

from __future__ import annotations

from libs.clock import ManualClock
from proto.enums import HotStateStatus
from services.state_builder.domain import HotState

MS = 1_000_000
T0 = 1_000_000 * MS
"""When every test's clock starts."""


def valid_state() -> tuple[HotState, ManualClock]:
    clock = ManualClock(T0)
    hot = HotState("BTCUSDT", clock)
    hot.on_rebuilt(10)
    for update_id in (11, 12, 13):
        clock.advance_ms(100)
        hot.on_update(update_id)
    assert hot.status == HotStateStatus.VALID
    return hot, clock


def test_initial_status_is_invalid() -> None:
    hot = HotState("BTCUSDT", ManualClock(T0))
    assert hot.status == HotStateStatus.INVALID
    assert hot.check() is None


def test_on_update_when_rebuilt_then_valid_exactly_at_third_fresh_update() -> None:
    clock = ManualClock(T0)
    hot = HotState("BTCUSDT", clock)
    assert hot.on_update(5) is None  # not rebuilt from a snapshot yet: ignored
    hot.on_rebuilt(10)
    clock.advance_ms(100)
    assert hot.on_update(11) is None
    clock.advance_ms(100)
    assert hot.on_update(12) is None
    clock.advance_ms(100)
    transition = hot.on_update(13)
    assert transition is not None
    assert (transition.previous, transition.current) == (HotStateStatus.INVALID, HotStateStatus.VALID)
    assert transition.last_update_id == 13


def test_check_when_age_exactly_1000_ms_then_still_valid_and_stale_above() -> None:
    hot, clock = valid_state()
    clock.advance_ms(1000)
    assert hot.check() is None
    clock.now += 1
    transition = hot.check()
    assert transition is not None and transition.current == HotStateStatus.STALE
    assert hot.age_ms() == 1000


def test_on_update_when_stale_then_valid_after_three_consecutive_fresh_updates() -> None:
    hot, clock = valid_state()
    clock.advance_ms(1500)
    hot.check()
    assert hot.status == HotStateStatus.STALE
    assert hot.on_update(14) is None  # first after the silence: starts a new run
    clock.advance_ms(200)
    assert hot.on_update(15) is None
    clock.advance_ms(200)
    transition = hot.on_update(16)
    assert transition is not None and transition.current == HotStateStatus.VALID


def test_on_update_when_run_interrupted_by_slow_update_then_count_restarts() -> None:
    hot, clock = valid_state()
    clock.advance_ms(1500)
    hot.check()
    hot.on_update(14)
    clock.advance_ms(100)
    hot.on_update(15)
    clock.advance_ms(1001)  # not fresh: restarts the run at 1
    assert hot.on_update(16) is None
    clock.advance_ms(100)
    assert hot.on_update(17) is None
    clock.advance_ms(100)
    assert hot.on_update(18) is not None


def test_on_invalid_when_valid_then_invalid_until_snapshot_and_fresh_updates() -> None:
    hot, clock = valid_state()
    transition = hot.on_invalid("sequence gap")
    assert transition is not None and transition.current == HotStateStatus.INVALID
    for update_id in (14, 15, 16):
        clock.advance_ms(100)
        assert hot.on_update(update_id) is None  # the book was not rebuilt
    assert hot.status == HotStateStatus.INVALID
    hot.on_rebuilt(20)
    for update_id in (21, 22):
        clock.advance_ms(100)
        assert hot.on_update(update_id) is None
    clock.advance_ms(100)
    assert hot.on_update(23) is not None
    assert hot.status == HotStateStatus.VALID


def test_check_when_invalid_then_never_stale() -> None:
    clock = ManualClock(T0)
    hot = HotState("BTCUSDT", clock)
    hot.on_rebuilt(1)
    clock.advance_ms(5000)
    assert hot.check() is None
    assert hot.status == HotStateStatus.INVALID


def test_on_link_down_when_valid_then_stale_at_once() -> None:
    hot, _ = valid_state()
    transition = hot.on_link_down("link market-ws DISCONNECTED")
    assert transition is not None and transition.current == HotStateStatus.STALE
    assert hot.on_link_down("again") is None


def test_transitions_when_repeated_condition_then_reported_once() -> None:
    hot, clock = valid_state()
    clock.advance_ms(1200)
    assert hot.check() is not None
    clock.advance_ms(100)
    assert hot.check() is None


def test_stale_since_when_stalled_stream_resyncs_then_not_reset_until_valid_again() -> None:
    # FM-D1 "stale > 10 s": a reconnect's REST snapshot makes `age_ms` young again, but the
    # symbol has had no trustworthy data since its last update while VALID.
    hot, clock = valid_state()
    last_valid_update_ns = clock.now
    assert hot.stale_since_ns is None and hot.stale_ms() is None
    clock.advance_ms(1200)
    stale = hot.check()
    assert stale is not None and stale.stale_since_ns == last_valid_update_ns
    for snapshot_id in (100, 200):  # two reconnects, each with a snapshot and no diff after it
        clock.advance_ms(4500)
        hot.on_invalid("resync")
        hot.on_rebuilt(snapshot_id)
        assert hot.age_ms() == 0
    clock.advance_ms(1000)
    assert hot.status == HotStateStatus.INVALID
    assert hot.stale_since_ns == last_valid_update_ns
    assert hot.stale_ms() == 11_200
    for update_id in (201, 202, 203):
        clock.advance_ms(100)
        hot.on_update(update_id)
    assert hot.status == HotStateStatus.VALID
    assert hot.stale_since_ns is None


def test_stale_since_when_never_valid_then_none() -> None:
    clock = ManualClock(T0)
    hot = HotState("BTCUSDT", clock)
    hot.on_rebuilt(1)
    clock.advance_ms(30_000)
    assert hot.on_invalid("resync") is None  # already INVALID since the start
    assert hot.stale_since_ns is None


def test_stale_due_when_valid_then_just_past_1000_ms_after_last_update_else_none() -> None:
    hot, clock = valid_state()
    due = hot.stale_due_ns()
    assert due == clock.now + 1000 * MS + 1
    clock.now = due - 1
    assert hot.check() is None  # exactly 1000 ms: still VALID
    clock.now = due
    assert hot.check() is not None and hot.status == HotStateStatus.STALE
    assert hot.stale_due_ns() is None  # not VALID: nothing to time
    assert HotState("ETHUSDT", clock).stale_due_ns() is None


async def test_next_tick_when_a_symbol_turns_stale_before_the_interval_then_waits_only_until_then() -> None:
    from libs.logging import get_logger
    from services.state_builder.handlers import MIN_TICK_S, StateBuilder

    async def publish(subject: str, message: object) -> int:
        return 1

    async def kv_put(key: str, value: bytes) -> int:
        return 1

    async def request(subject: str, payload: bytes) -> bytes:
        return b"{}"

    clock = ManualClock(T0)
    builder = StateBuilder(
        symbols=("BTCUSDT",), publish=publish, kv_put=kv_put, request=request, clock=clock, log=get_logger("test")
    )
    assert builder.next_tick_s(0.1) == 0.1  # nothing VALID
    hot = builder.symbols["BTCUSDT"].hot
    hot.on_rebuilt(10)
    for update_id in (11, 12, 13):
        clock.advance_ms(100)
        hot.on_update(update_id)
    assert builder.next_tick_s(0.1) == 0.1  # due in 1000 ms
    clock.advance_ms(970)
    assert abs(builder.next_tick_s(0.1) - 0.030) < 1e-6  # due in 30 ms: the tick comes then
    clock.advance_ms(40)
    assert builder.next_tick_s(0.1) == MIN_TICK_S  # overdue: at once


def test_on_update_when_backlog_of_old_data_handled_late_then_stale_not_valid() -> None:
    # A consumer that fell behind handles updates market-data stored seconds ago: that is old data.
    hot, clock = valid_state()
    clock.advance_ms(500)
    for update_id in range(14, 214):
        clock.advance_ms(10)
        hot.on_update(update_id, data_ns=clock.now - 5_000 * MS)
    transition = hot.check()
    assert transition is not None and transition.current == HotStateStatus.STALE
    assert hot.age_ms() is not None and hot.age_ms() > 1000
    for update_id in range(214, 260):  # still catching up: never VALID on old data
        clock.advance_ms(10)
        assert hot.on_update(update_id, data_ns=clock.now - 2_000 * MS) is None
    for update_id in (260, 261):
        clock.advance_ms(10)
        assert hot.on_update(update_id, data_ns=clock.now - 20 * MS) is None
    clock.advance_ms(10)
    transition = hot.on_update(262, data_ns=clock.now - 20 * MS)  # caught up: 3 fresh updates
    assert transition is not None and transition.current == HotStateStatus.VALID
