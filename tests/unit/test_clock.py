import pytest

from libs.clock import NS_PER_S, ManualClock


def test_advance_when_seconds_milliseconds_and_nanoseconds_then_clock_moves_by_each() -> None:
    clock = ManualClock(5 * NS_PER_S)
    clock.advance(1.5)
    clock.advance_ms(250)
    clock.advance_ns(7)
    assert clock() == 6_750_000_007


def test_set_when_earlier_than_now_then_refused_and_time_unchanged() -> None:
    clock = ManualClock(10)
    with pytest.raises(ValueError, match="does not go back"):
        clock.set(9)
    assert clock() == 10
    clock.set(20)
    assert clock() == 20
